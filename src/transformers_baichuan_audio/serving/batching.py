"""Dynamic batching of generation requests: requests that arrive together are decoded together in ONE batched
``generate(..., output_audio=True)`` call, each request's stream kept separate.

A :class:`GenerationJob` is one request's row: its prompt (token ids + the codes of its audio pads, or the text
chunks of a TTS row), its ``speech_mode`` (``"chat"`` / ``"text"`` / ``"tts"``; rows of different modes share a
batch), the generation settings (rows share a batch only when their settings are equal: sampling parameters and
caps are per call in ``generate``) and its own streamer.

:class:`DynamicBatcher` owns one worker thread. The first waiting job opens a batching window (``window_s``); the
batch closes when ``max_batch_size`` compatible jobs wait or the window has passed, and runs while new jobs queue
(no joining a batch in flight: the next batch forms as soon as it ends). The waiting queue is bounded
(``max_queue``): :meth:`DynamicBatcher.submit` raises :class:`QueueFullError` instead of growing. A cancelled job
(client disconnect) leaves the queue at once, or, when its batch is already running, its row is ended at the next
decoding step through the streamer's ``stopped_rows()`` hook of ``generate``; the other rows go on unchanged.

:class:`BatchStreamer` is the streamer of one batched call: it forwards each row's text tokens, audio frames and
segment ends to that row's own streamer (as row 0 of it), drops those of cancelled rows and names them in
``stopped_rows()``. Each job's streamer is ended only after the job's result (generated ids, audio codes) or its
error is stored, so a consumer that has drained the streamer can read :attr:`GenerationJob.result` at once.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The batcher's waiting queue is full (the server answers 429)."""


class ServerClosedError(RuntimeError):
    """The batcher was closed (the server is shutting down; 503)."""


class JobCancelledError(RuntimeError):
    """The job was cancelled (its client went away) before or while it ran."""


def _frozen(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


_ids = itertools.count()


@dataclass(eq=False)
class GenerationJob:
    """One request's row of a batched ``generate`` call.

    Attributes:
        input_ids: the prompt's token ids (empty for a TTS row without prefix).
        mode: ``speech_mode`` of the row (``"chat"``, ``"text"`` or ``"tts"``).
        settings: ``generate`` keyword arguments (sampling settings and caps) shared by the batch.
        streamer: receives ``put_text(0, ids)`` / ``put_audio(0, codes)`` / ``end_segment(0)`` / ``end()``.
        audio_codes: (n, num_codebooks) codes of the ``<audio_pad>`` tokens of ``input_ids`` (or None).
        tts_chunks: the token-id chunks of a TTS row.
        result: after the run, ``(generated ids, audio code segments)`` of the row.
        error: the exception that ended the job (:class:`JobCancelledError`, ...), or None.
    """

    input_ids: list[int]
    mode: str
    settings: dict
    streamer: object
    audio_codes: torch.Tensor | None = None
    tts_chunks: list[list[int]] | None = None
    result: tuple[list[int], list[torch.Tensor]] | None = None
    error: BaseException | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    enqueued: float = 0.0
    batch_size: int = 0  # rows of the batch it ran in (for logs and tests)
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def key(self):
        """Jobs with equal keys may share a batch (equal generation settings)."""
        return _frozen(self.settings)

    def finish(self, result=None, error: BaseException | None = None) -> None:
        """Store the outcome, then end the job's streamer (in that order: see the module docstring)."""
        if self.finished.is_set():
            return
        self.result, self.error = result, error
        self.finished.set()
        end = getattr(self.streamer, "end", None)
        if end is not None:
            end()


class BatchStreamer:
    """The streamer of one batched call: routes each row's events to its job's streamer (see the module docstring)."""

    def __init__(self, jobs: list[GenerationJob]):
        self.jobs = jobs

    def _live(self, row: int):
        job = self.jobs[row]
        return None if job.cancelled.is_set() else job.streamer

    def put_text(self, row: int, token_ids) -> None:
        target = self._live(row)
        if target is not None:
            target.put_text(0, token_ids)

    def put_audio(self, row: int, codes) -> None:
        target = self._live(row)
        if target is not None:
            target.put_audio(0, codes)

    def end_segment(self, row: int) -> None:
        target = self._live(row)
        if target is not None:
            target.end_segment(0)

    def end(self) -> None:
        """Nothing here: each job's streamer is ended by :meth:`GenerationJob.finish` once its result is stored."""

    def stopped_rows(self) -> set[int]:
        """Rows whose client went away: ``generate`` ends them at the next step."""
        return {r for r, job in enumerate(self.jobs) if job.cancelled.is_set()}


class DynamicBatcher:
    """A worker thread that runs waiting jobs in batches (see the module docstring).

    Args:
        run_batch: ``run_batch(jobs)`` runs one batched ``generate`` and calls ``finish`` on every job (errors it
            raises are given to every job of the batch that is not finished yet).
        max_batch_size: rows per batch.
        window_s: how long the first waiting job waits for others to join its batch.
        max_queue: waiting jobs (not yet running) at most; more raise :class:`QueueFullError`.
    """

    def __init__(
        self,
        run_batch: Callable[[list[GenerationJob]], None],
        max_batch_size: int = 8,
        window_s: float = 0.02,
        max_queue: int = 32,
    ):
        if max_batch_size < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and window_s >= 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.max_queue = max_queue
        self.waiting: collections.deque[GenerationJob] = collections.deque()
        self.running: list[GenerationJob] = []
        self.batches_run = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="baichuan-audio-batcher", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------------------- clients
    def submit(self, job: GenerationJob) -> GenerationJob:
        """Queue ``job``; :class:`QueueFullError` when ``max_queue`` jobs wait, :class:`ServerClosedError` after
        :meth:`close`."""
        with self._cond:
            if self._closed:
                raise ServerClosedError("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self.waiting)} requests are waiting (the limit); try again shortly")
            job.enqueued = time.monotonic()
            self.waiting.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, job: GenerationJob) -> None:
        """The client of ``job`` went away: drop it from the queue, or end its row in the running batch."""
        job.cancelled.set()
        with self._cond:
            if job in self.waiting:
                self.waiting.remove(job)
                job.finish(error=JobCancelledError("cancelled before it ran"))

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new jobs, fail the waiting ones (:class:`ServerClosedError`), let the running batch end."""
        with self._cond:
            self._closed = True
            waiting, self.waiting = list(self.waiting), collections.deque()
            self._cond.notify_all()
        for job in waiting:
            job.finish(error=ServerClosedError("the server is shutting down"))
        self._thread.join(timeout)

    # ----------------------------------------------------------------------------------------------- worker
    def _next_batch(self) -> list[GenerationJob] | None:
        with self._cond:
            while not self.waiting and not self._closed:
                self._cond.wait()
            if not self.waiting:
                return None
            first = self.waiting[0]
            deadline = first.enqueued + self.window_s
            while True:
                batch = [job for job in self.waiting if job.key == first.key][: self.max_batch_size]
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch_size or remaining <= 0 or self._closed or first not in self.waiting:
                    break
                self._cond.wait(remaining)
            batch = [job for job in batch if job in self.waiting]
            for job in batch:
                self.waiting.remove(job)
            self.running = batch
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            for job in batch:
                job.batch_size = len(batch)
            try:
                self.run_batch(batch)
            except BaseException as err:  # given to the jobs; the worker goes on
                logger.exception("batched generation failed")
                for job in batch:
                    job.finish(error=err)
            finally:
                with self._cond:
                    self.running = []
                    self.batches_run += 1

    def stats(self) -> dict:
        """Waiting and running jobs, batches run so far."""
        with self._cond:
            return {"waiting": len(self.waiting), "running": len(self.running), "batches_run": self.batches_run}


__all__ = [
    "BatchStreamer",
    "DynamicBatcher",
    "GenerationJob",
    "JobCancelledError",
    "QueueFullError",
    "ServerClosedError",
]
