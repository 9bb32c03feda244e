"""The streamer of ``generate(..., output_audio=True)``: text deltas and audio (codes + waveform chunks) as they come.

:class:`BaichuanAudioStreamer` is filled by the generation loop (``put_text`` / ``put_audio`` / ``end_segment`` /
``end``) and consumed by iterating over it, typically from another thread (or a Gradio generator)::

    streamer = BaichuanAudioStreamer(tokenizer=tokenizer, code2wav=model.code2wav)
    thread = threading.Thread(target=model.generate, kwargs=dict(input_ids=ids, output_audio=True, streamer=streamer))
    thread.start()
    for event in streamer:
        if event.kind == "text":
            print(event.text, end="")
        elif event.kind == "audio" and event.waveform is not None and event.waveform.numel():
            play(event.waveform)  # 24 kHz
    thread.join()

Waveform chunks come from the code2wav streaming decoder (``code2wav.streaming_decoder()``): the first chunk of a
phrase is produced as soon as its first decoder chunk of code frames exists (25 frames = 2 s of speech for the
released model), not at the end of the phrase. Decoding runs in the consuming thread (while it iterates), or in
the generation thread with ``decode_priority="inline"``.

``decode_priority`` says whether generation goes on while a waveform chunk is decoded:

* ``"overlap"`` (default): the generation loop is never blocked by code2wav; both run concurrently. A consumer
  that falls behind (code2wav slower than generation, e.g. on a CPU) catches up: the frames of a row's phrase
  already queued go into its decoder in one push, one pass over the chunks they complete (larger products; the
  samples come with the first of those events, the later ones carry their codes and an empty waveform).
* ``"first_chunk"``: the generation loop waits (at its next audio frame, so after at most one more frame) while
  the decoder works on each phrase's frames until its first waveform chunk is out, then both run concurrently. On
  a CPU with few cores the two otherwise share (and oversubscribe) the cores exactly when the listener waits for
  the first sound (measured at the 0.5B-class size on 2 cores with ``benchmarks/bench_generation.py --turn``: see
  the README).
* ``"always"``: the generation loop waits (at its next audio frame) while any chunk is decoded.
* ``"inline"``: the generation thread decodes each frame's chunk itself, inside ``put_audio`` / ``end_segment``
  (generation waits for every chunk, as with ``"always"``), and the consumer only receives finished events: all
  tensor work stays on one thread. On a CPU this is the fast choice: a second thread's OpenMP worker team on the
  cores slows every parallel region of both (measured 1.4x on the audio frames: see
  :mod:`transformers_baichuan_audio.cpu_threads`, whose ``release_openmp_workers`` also lets the consuming
  thread's own team go, as the chat engine does before each turn).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import torch
from transformers.generation import BaseStreamer

from .streaming_state import StreamingStatePool


@dataclass
class BaichuanAudioStreamEvent:
    """One streamed item.

    Attributes:
        row: batch row the event belongs to.
        kind: ``"text"`` (``token_ids`` + decoded ``text`` delta), ``"audio"`` (``codes`` (n, num_codebooks) of new
            frames and/or a ``waveform`` chunk (samples,) at 24 kHz) or ``"segment_end"`` (an audio segment ended).
        segment: index of the row's audio segment (audio events).
    """

    row: int
    kind: str
    token_ids: list[int] | None = None
    text: str | None = None
    codes: torch.Tensor | None = None
    waveform: torch.Tensor | None = None
    segment: int | None = None


class BaichuanAudioStreamer(BaseStreamer):
    """Queue-based streamer for the speech generation loop (thread-safe producer/consumer); a transformers
    ``BaseStreamer``: ``put`` / ``end`` also make it a text streamer of the stock text ``generate`` (``put``'s
    first call, the prompt, is skipped as ``TextStreamer(skip_prompt=True)`` does).

    Args:
        tokenizer: decodes text deltas (``event.text``); without it only ``token_ids`` are given.
        code2wav: a ``BaichuanAudioCode2Wav``; when given, audio events carry waveform chunks from its streaming
            decoder (one decoder per row and segment).
        decoder_kwargs: extra arguments of ``code2wav.streaming_decoder`` (e.g. ``generator``). By default the
            decoders share :attr:`state_pool`, one :class:`~.streaming_state.StreamingStatePool` per streamer (a
            turn), so each phrase after the first reuses the state buffers of a finished one; it is cleared when
            the consumer reaches the end. ``state_pool=None`` here turns that off; a pool given here is used instead
            and not cleared (e.g. one kept across turns: every phrase but the process's first then reuses pages, at
            the cost of keeping the longest phrase's state resident; on CUDA the caching allocator already does).
        skip_special_tokens: passed to ``tokenizer.decode``.
        timeout: seconds the consumer waits for the next event before ``queue.Empty`` is raised (None: forever).
        decode_priority: ``"overlap"``, ``"first_chunk"``, ``"always"`` or ``"inline"`` (see the module docstring).
    """

    _END = object()
    DECODE_PRIORITIES = ("overlap", "first_chunk", "always", "inline")

    def __init__(
        self,
        tokenizer=None,
        code2wav=None,
        decoder_kwargs: dict | None = None,
        skip_special_tokens: bool = True,
        timeout: float | None = None,
        decode_priority: str = "overlap",
    ):
        self.decode_priority = self.check_decode_priority(decode_priority)
        self._decoder_idle = threading.Event()  # cleared while the consumer decodes a chunk that generation waits for
        self._decoder_idle.set()
        self._sounded: set[int] = set()  # rows whose current phrase already gave waveform samples
        self.tokenizer = tokenizer
        self.code2wav = code2wav
        self.decoder_kwargs = dict(decoder_kwargs or {})
        self.state_pool = StreamingStatePool() if code2wav is not None else None
        self.decoder_kwargs.setdefault("state_pool", self.state_pool)
        self.skip_special_tokens = skip_special_tokens
        self.timeout = timeout
        self.queue: queue.Queue = queue.Queue()
        self._tokens: dict[int, list[int]] = {}
        self._printed: dict[int, int] = {}
        self._decoders: dict[int, object] = {}  # the decoding side only (consumer, or producer when inline)
        self._pending: list[BaichuanAudioStreamEvent] = []
        self._segments: dict[int, int] = {}
        self._prompt_seen = False

    @classmethod
    def check_decode_priority(cls, decode_priority: str) -> str:
        """``decode_priority`` if it is one of :attr:`DECODE_PRIORITIES`, else ``ValueError``."""
        if decode_priority not in cls.DECODE_PRIORITIES:
            raise ValueError(f"decode_priority must be one of {cls.DECODE_PRIORITIES}, got {decode_priority!r}")
        return decode_priority

    # --------------------------------------------------------------------------------------------- producer side
    def put_text(self, row: int, token_ids: list[int]) -> None:
        """New text tokens of ``row``; the text delta is emitted once it decodes to complete characters."""
        tokens = self._tokens.setdefault(row, [])
        tokens.extend(int(t) for t in token_ids)
        text = None
        if self.tokenizer is not None:
            full = self.tokenizer.decode(tokens, skip_special_tokens=self.skip_special_tokens)
            if full.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
                text = ""
            else:
                text = full[self._printed.get(row, 0) :]
                self._printed[row] = len(full)
        self.enqueue(BaichuanAudioStreamEvent(row=row, kind="text", token_ids=list(token_ids), text=text))

    def put_audio(self, row: int, codes: torch.Tensor) -> None:
        """New audio frames (n, num_codebooks) of ``row``'s current segment."""
        codes = codes.detach().to("cpu", torch.long)
        event = BaichuanAudioStreamEvent(row=row, kind="audio", codes=codes, segment=self._segments.get(row, 0))
        if self.decodes_inline:
            self._decode(event)
        self.enqueue(event)
        self._decoder_idle.wait()  # decode_priority: generation waits while the consumer decodes

    def end_segment(self, row: int) -> None:
        """The current audio segment of ``row`` ended."""
        segment = self._segments.get(row, 0)
        event = BaichuanAudioStreamEvent(row=row, kind="segment_end", segment=segment)
        if self.decodes_inline and row in self._decoders:
            self.enqueue(self._finish_phrase(event))
        self.enqueue(event)
        self._segments[row] = segment + 1

    def enqueue(self, event: BaichuanAudioStreamEvent) -> None:
        """Hand ``event`` to the consumer (producer side; a subclass may transform events here)."""
        self.queue.put(event)

    def put(self, value: torch.Tensor) -> None:
        """``BaseStreamer.put`` (the stock ``generate``): token ids ``(batch, n)`` or ``(n,)``; the first call (the
        prompt) is skipped, later ones are :meth:`put_text` of each row."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        ids = value.detach().to("cpu").reshape(value.shape[0] if value.dim() > 1 else 1, -1)
        for row, tokens in enumerate(ids.tolist()):
            self.put_text(row, tokens)

    def end(self) -> None:
        """End of generation (also unblocks the consumer)."""
        self.queue.put(self._END)

    # --------------------------------------------------------------------------------------------- consumer side
    def __iter__(self):
        return self

    def __next__(self) -> BaichuanAudioStreamEvent:
        item = self._pending.pop(0) if self._pending else self.queue.get(timeout=self.timeout)
        if item is self._END:
            self.close_decoders()
            if self.state_pool is not None:
                self.state_pool.clear()  # the turn is over: its phrases' state goes back to the allocator
            raise StopIteration
        if self.code2wav is None or self.decodes_inline:
            return item
        # Waveforms are decoded here, on the CONSUMER side, so that code2wav does not block the generation loop.
        if item.kind == "audio" and item.waveform is None:  # (not pushed yet with an earlier event's frames)
            waits = self.decode_priority == "always" or (
                self.decode_priority == "first_chunk" and item.row not in self._sounded
            )
            if waits:
                self._decoder_idle.clear()
            try:
                self._decode(item)
            finally:
                self._decoder_idle.set()
        elif item.kind == "segment_end" and item.row in self._decoders:
            self._pending.insert(0, item)  # the rest of the phrase comes as one more audio event before segment_end
            return self._finish_phrase(item)
        return item

    # --------------------------------------------------------------------------------------------- decoding
    def close_decoders(self) -> None:
        """Drop the decoders of phrases that were cut off (a stopped turn), their state buffers given back to the
        pool. Called when the consumer reaches the end; call it yourself after leaving the iteration early, once
        generation has stopped (the decoders must not be in use)."""
        for decoder in self._decoders.values():
            decoder.close()
        self._decoders.clear()
        self._sounded.clear()

    @property
    def decodes_inline(self) -> bool:
        """Whether waveforms are decoded on the producer side (``decode_priority="inline"``)."""
        return self.code2wav is not None and self.decode_priority == "inline"

    def _decode(self, event: BaichuanAudioStreamEvent) -> None:
        """Set ``event.waveform``: its frames pushed into the row's streaming decoder (made at its first frame),
        together with those of the row's phrase that are already queued behind it (a consumer that fell behind
        catches up in one decoder pass over the chunks they complete; those events keep their codes and get an
        empty waveform: the samples come with this one)."""
        decoder = self._decoders.get(event.row)
        if decoder is None:
            decoder = self._decoders[event.row] = self.code2wav.streaming_decoder(**self.decoder_kwargs)
        batch = [event, *self._queued_frames(event.row)]
        codes = torch.cat([e.codes for e in batch]) if len(batch) > 1 else event.codes
        event.waveform = decoder.push(codes.to(self.code2wav.device)).detach().cpu()
        for later in batch[1:]:
            later.waveform = event.waveform.new_zeros(0)
        if event.waveform.numel():
            self._sounded.add(event.row)

    def _queued_frames(self, row: int) -> list[BaichuanAudioStreamEvent]:
        """The audio events of ``row``'s current phrase already queued (moved to the pending events, in order)."""
        while True:
            try:
                self._pending.append(self.queue.get_nowait())
            except queue.Empty:
                break
        frames = []
        for item in self._pending:
            if item is self._END or (item.row == row and item.kind == "segment_end"):
                break
            if item.row == row and item.kind == "audio" and item.waveform is None and item.codes is not None:
                frames.append(item)
        return frames

    def _finish_phrase(self, segment_end: BaichuanAudioStreamEvent) -> BaichuanAudioStreamEvent:
        """The audio event with the rest of the row's phrase (its decoder finished) that precedes ``segment_end``."""
        self._sounded.discard(segment_end.row)
        rest = self._decoders.pop(segment_end.row).finish().detach().cpu()
        return BaichuanAudioStreamEvent(row=segment_end.row, kind="audio", waveform=rest, segment=segment_end.segment)


__all__ = ["BaichuanAudioStreamer", "BaichuanAudioStreamEvent"]
