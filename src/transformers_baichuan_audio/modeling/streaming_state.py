"""Causal state of the streaming code2wav decoder: :class:`StreamingCache` (what one chunk of a stream leaves for
the next) and :class:`StreamingStatePool` (its buffers, reused by the later phrases of a turn).

Why a pool: a streamed phrase keeps the keys / values of every attention layer (for the U-Net per Euler step and
for both CFG halves: ~230 MB per second of speech at the released size). On a CPU the pages of a new buffer are
mapped as they are first written, and in the stream's scattered per-chunk writes that page-faulting costs about
2 us per 4 KB page: at real size on the project's 2-core VM a 16 s phrase took ~935 k faults, and phrases of 8, 16
and 32 s streamed in 1.53, 1.31 and 1.49x their one-shot decode time with new buffers against 1.14, 1.10 and 1.14x
with buffers an earlier phrase had touched (``benchmarks/bench_code2wav_streaming.py --state-pool``, issue 18).
"""

from __future__ import annotations

import threading

import torch
from torch import nn


class StreamingStatePool:
    """Buffers of finished streams, handed to the next stream that asks for the same shape, dtype and device.

    One pool serves the streaming decoders of one turn (``BaichuanAudioStreamer`` and the chat engine make one
    per turn), or of every turn when kept (``SpeechChat(state_pool=...)``, ``--keep-stream-state``): a phrase's
    decoder takes its state buffers from it and gives them back at ``finish`` (or ``close``, a phrase cut off), so
    later phrases write to pages already mapped. A buffer is held by one live stream at a time (two rows
    decoded at once get different buffers); the pool is thread-safe. What it keeps is at most the state of the
    turn's longest phrases (their pages stay resident until the pool is dropped or :meth:`clear`-ed).
    """

    def __init__(self):
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(shape, dtype: torch.dtype, device: torch.device) -> tuple:
        return tuple(shape), dtype, torch.device(device)

    def empty(self, shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of ``shape``: a given-back buffer of that shape, dtype and device if any."""
        with self._lock:
            free = self._free.get(self._key(shape, dtype, device))
            if free:
                return free.pop()
        return torch.empty(shape, dtype=dtype, device=device)

    def give_back(self, tensors) -> None:
        """Return buffers no stream reads any more (each must not be used by its giver afterwards)."""
        with self._lock:
            for tensor in tensors:
                self._free.setdefault(self._key(tensor.shape, tensor.dtype, tensor.device), []).append(tensor)

    def clear(self) -> None:
        """Drop every held buffer (their memory goes back to the allocator)."""
        with self._lock:
            self._free.clear()

    @property
    def num_buffers(self) -> int:
        """Buffers held for reuse."""
        with self._lock:
            return sum(len(free) for free in self._free.values())

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers held for reuse (their room; only written pages are resident on a CPU)."""
        with self._lock:
            return sum(t.nbytes for free in self._free.values() for t in free)


class StreamingCache:
    """Causal state carried from one chunk of a stream to the next (the streaming code2wav decoder).

    Per module (and per ``scope``, e.g. the Euler step of the flow-matching sampler): the left context of a causal
    conv (:meth:`left_context`) or the keys / values of every earlier frame of an attention layer
    (:meth:`keys_values`), plus named running values (``past`` / ``new`` by any hashable key). A chunk reads
    ``past`` and writes the values including itself to ``new``; :meth:`committed` is the cache for the next chunk,
    and this one stays usable to recompute the same chunk differently (e.g. as the end of the phrase).

    The caches of one stream (its :meth:`committed` / :meth:`branch` descendants) share the record of the buffers
    they took from ``pool`` (if given), and :meth:`release` gives them all back when the stream is done.
    """

    def __init__(
        self,
        past: dict | None = None,
        reserve: int = 0,
        pool: StreamingStatePool | None = None,
        allocated: list | None = None,
    ):
        self.past: dict = dict(past or {})
        self.new: dict = {}
        self.scope = None
        self.reserve = reserve
        self.pool = pool
        self.allocated: list[torch.Tensor] = [] if allocated is None else allocated

    def committed(self) -> StreamingCache:
        """The cache for the next chunk: this one's past and new state."""
        return StreamingCache({**self.past, **self.new}, self.reserve, self.pool, self.allocated)

    def branch(self) -> StreamingCache:
        """A cache for (re)computing a chunk from this one's past state (its own ``new``)."""
        return StreamingCache(self.past, self.reserve, self.pool, self.allocated)

    def release(self) -> None:
        """The stream is done: give every buffer its caches took back to the pool (none of them may be used
        afterwards) and forget the state."""
        if self.pool is not None:
            self.pool.give_back(self.allocated)
        self.allocated.clear()
        self.past, self.new = {}, {}

    def latest(self, key, default=None):
        """The newest state under ``key``: written by this chunk (``new``: e.g. by an earlier piece of a pass over
        several chunks) or else by the earlier ones (``past``)."""
        return self.new[key] if key in self.new else self.past.get(key, default)

    def _empty(self, shape, like: torch.Tensor) -> torch.Tensor:
        """A new state buffer like ``like``: from the pool (and recorded for :meth:`release`) if there is one."""
        if self.pool is None:
            return like.new_empty(shape)
        tensor = self.pool.empty(shape, like.dtype, like.device)
        self.allocated.append(tensor)
        return tensor

    def left_context(self, module: nn.Module, x: torch.Tensor, width: int) -> torch.Tensor:
        """x (B, C, T) -> (B, C, width + T): the ``width`` frames before the chunk (zeros at the stream start)."""
        key = (self.scope, id(module))
        left = self.latest(key)
        if left is None:
            left = x.new_zeros(x.shape[0], x.shape[1], width)
        full = torch.cat([left, x], dim=-1)
        self.new[key] = full[..., full.shape[-1] - width :]
        return full

    def keys_values(
        self, module: nn.Module, key: torch.Tensor, value: torch.Tensor, left_chunks: int = -1, chunk: int = 0
    ):
        """(B, H, T, D) keys / values of the chunk -> those of every frame so far (earlier ones first), or with
        ``left_chunks`` >= 0 those of the ``left_chunks`` chunks of ``chunk`` frames before it and its own
        (:meth:`windowed`).

        Kept in buffers of room for ``reserve`` frames (the caller's expected length), that double when full (no
        copy of the whole history per chunk); a cache only reads the first ``n`` frames it recorded, so a chunk
        recomputed from an earlier cache may overwrite what follows. Room is not memory on a CPU: the pages of an
        empty tensor are only mapped as frames are written, while growing copies the history into pages that are
        all new at once (on a VM that page-faulting costs seconds for the GB of a long phrase's U-Net state).
        """
        if left_chunks >= 0:
            return self.windowed(module, key, value, left_chunks, chunk)
        name = (self.scope, id(module))
        buffers, n = self.latest(name, (None, 0))
        total = n + key.shape[-2]
        if buffers is None or buffers[0].shape[-2] < total:
            size = (*key.shape[:-2], max(2 * total, 128, self.reserve), key.shape[-1])
            grown = tuple(self._empty(size, key) for _ in range(2))
            if buffers is not None:
                for old, new in zip(buffers, grown, strict=True):
                    new[..., :n, :] = old[..., :n, :]
            buffers = grown
        buffers[0][..., n:total, :] = key
        buffers[1][..., n:total, :] = value
        self.new[name] = (buffers, total)
        return buffers[0][..., :total, :], buffers[1][..., :total, :]

    def windowed(self, module: nn.Module, key: torch.Tensor, value: torch.Tensor, left_chunks: int, chunk: int):
        """:meth:`keys_values` of a bounded context: the keys / values of the ``left_chunks`` chunks of ``chunk``
        frames before this chunk, and this chunk's own (at most ``chunk`` frames, starting on a chunk boundary).

        Kept in a ring of ``left_chunks + 1`` chunk slots allocated once per stream: each chunk overwrites the slot
        of the one that has just left the context, so the state stays the same size at any phrase length and, after
        the first ``left_chunks + 1`` chunks, no chunk writes to memory it has not touched before (first touches
        cost most of a streamed chunk's copies on a CPU). The slots are not in time order once the ring wraps; the
        attention this serves has no positions, so only the order of its sums changes (float roundoff). An earlier
        cache stays valid: a chunk overwrites only the slot that cache no longer sees.
        """
        name = (self.scope, id(module), "ring")
        ring, written = self.latest(name, (None, 0))
        new, room = key.shape[-2], (left_chunks + 1) * chunk
        if new > chunk or written % chunk:
            raise ValueError(f"a bounded-context chunk must be at most {chunk} frames on a chunk boundary")
        if ring is None:
            bsz, heads, _, dim = key.shape
            ring = tuple(self._empty((bsz, heads, room, dim), key) for _ in range(2))
        at = written % room
        ring[0][..., at : at + new, :] = key
        ring[1][..., at : at + new, :] = value
        self.new[name] = (ring, written + new)
        if written + new <= room:  # not wrapped yet: the first frames
            return ring[0][..., : written + new, :], ring[1][..., : written + new, :]
        if new == chunk:
            return ring
        # a short last chunk in a wrapped ring: every slot but the rest of its own
        return tuple(torch.cat([r[..., : at + new, :], r[..., at + chunk :, :]], dim=-2) for r in ring)


__all__ = ["StreamingCache", "StreamingStatePool"]
