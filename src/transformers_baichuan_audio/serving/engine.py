"""The serving engine: requests -> batched generation jobs -> per-request event streams (no HTTP in here).

:class:`ServingEngine` wraps a :class:`..chat.SpeechChat` (model, processor, input limits, context check) and a
:class:`.batching.DynamicBatcher`. ``chat_job`` / ``asr_job`` / ``tts_job`` validate a request and build its row:
the prompt is built by the processor alone (one conversation: control tokens in user text are escaped there), the
speech of the prompt is encoded to codes by the audio tokenizer for this request alone (so a row's codes never
depend on the other rows: the batched audio encoder would pad them together), and the row is queued. :meth:`events`
drains the job's own streamer (text deltas; speech decoded by the code2wav streaming decoder in the consuming
thread and joined phrase by phrase exactly as ``SpeechChat.stream_turn`` joins them) and ends with a ``"done"``
event carrying the final text.

Batched rows: one ``generate`` call gets every row of the batch left-padded, the rows' audio codes concatenated in
row order, ``speech_mode`` per row and ``tts_chunks`` per row. Under greedy decoding a row's tokens and codes are
those it gets alone (rows never see each other: attention masks, per-row state); under sampling the batch shares
one ``torch.Generator`` (seeded per batch), so a sampled answer depends on the batch it ran in. Each request's
code2wav draws come from its own generator (``seed + 1``), as in ``SpeechChat``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..audio_codes import fill_audio_codes
from ..chat import AudioInputError, PhraseJoiner, SpeechChat, check_text
from ..modeling.generation import split_tts_text
from ..modeling.streamer import BaichuanAudioStreamer
from .batching import BatchStreamer, DynamicBatcher, GenerationJob
from .limits import ServeLimits

logger = logging.getLogger(__name__)


@dataclass
class Event:
    """One item of :meth:`ServingEngine.events`: ``"text"`` (a delta), ``"audio"`` (24 kHz float samples) or
    ``"done"`` (``text``: the whole answer, ``completion_tokens``, ``audio_seconds``)."""

    kind: str
    text: str = ""
    audio: np.ndarray | None = None
    completion_tokens: int = 0
    audio_seconds: float = 0.0


@dataclass
class Request:
    """A validated request turned into a job; ``prompt_tokens`` for the usage figures."""

    job: GenerationJob
    kind: str  # "chat", "asr", "tts"
    speak: bool
    prompt_tokens: int


class ServingEngine:
    """Requests -> batched jobs -> event streams (see the module docstring).

    Args:
        chat: the :class:`SpeechChat` (model, processor, ``generation_kwargs`` defaults, ``seed``, input limits).
        limits: :class:`ServeLimits`.
        decode_priority: where each request's speech is decoded (the streamer's argument, see
            :mod:`..modeling.streamer`): ``"overlap"`` (default) in the request's consuming thread while the batch
            generates; ``"inline"`` in the batcher's thread, between generation steps (all tensor work on one
            thread; the batch waits while a row's chunk is decoded). Same samples either way.
    """

    def __init__(self, chat: SpeechChat, limits: ServeLimits | None = None, decode_priority: str = "overlap"):
        self.chat = chat
        self.limits = limits or ServeLimits()
        self.decode_priority = BaichuanAudioStreamer.check_decode_priority(decode_priority)
        chat.limits = dataclasses.replace(
            chat.limits,
            max_seconds=self.limits.max_audio_seconds,
            max_megabytes=self.limits.max_upload_bytes / 1e6,
            max_text_chars=self.limits.max_text_chars,
        )
        self.batcher = DynamicBatcher(
            self.run_batch,
            max_batch_size=self.limits.max_batch_size,
            window_s=self.limits.batch_window_ms / 1000.0,
            max_queue=self.limits.max_queue,
        )

    @property
    def model(self):
        return self.chat.model

    @property
    def processor(self):
        return self.chat.processor

    @property
    def can_speak(self) -> bool:
        return self.chat.can_speak

    def close(self) -> None:
        self.batcher.close()

    # ------------------------------------------------------------------------------------------ settings
    def settings(self, temperature: float | None = None, top_p: float | None = None, max_tokens=None) -> dict:
        """``generate`` settings of a request: the engine's defaults, then the request's ``temperature`` (0 =
        greedy), ``top_p`` and ``max_tokens`` (cap of text-only answers and transcripts, <= the server's limit)."""
        kwargs = dict(self.chat.generation_kwargs)
        if temperature is not None:
            if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
                raise AudioInputError("temperature must be a number from 0 to 2")
            if temperature == 0:
                kwargs["do_sample"] = False
            else:
                kwargs.update(temperature=float(temperature), do_sample=True)
        if top_p is not None:
            if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
                raise AudioInputError("top_p must be a number in (0, 1]")
            kwargs["top_p"] = float(top_p)
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
                raise AudioInputError("max_tokens must be a positive integer")
            if max_tokens > self.limits.max_new_tokens:
                raise AudioInputError(f"max_tokens is {max_tokens}; the limit is {self.limits.max_new_tokens}")
            kwargs["max_new_tokens"] = max_tokens
        kwargs.setdefault("max_new_tokens", min(256, self.limits.max_new_tokens))
        return kwargs

    # ------------------------------------------------------------------------------------------ requests
    def _streamer(self, speak: bool) -> BaichuanAudioStreamer:
        return BaichuanAudioStreamer(
            tokenizer=self.processor.tokenizer,
            code2wav=self.model.code2wav if speak else None,
            decoder_kwargs=self.chat.decoder_kwargs() if speak else None,  # the chat's seed, schedule, kept pool
            decode_priority=self.decode_priority,
        )

    def _prompt_codes(self, inputs) -> torch.Tensor | None:
        """Codes of the prompt's audio pads: given ones (history answers) filled with this request's encoded speech."""
        codes = inputs.get("audio_codes")
        features = inputs.get("input_features")
        if features is not None:
            inner = self.model.model
            device = next(inner.audio_tokenizer.parameters()).device
            encoded = inner.get_audio_codes(
                features.to(device),
                inputs["encoder_length"].to(device),
                inputs["bridge_length"].to(device) if inputs.get("bridge_length") is not None else None,
            ).cpu()
            codes = encoded if codes is None else fill_audio_codes(codes, encoded)
        return None if codes is None else codes.reshape(-1, codes.shape[-1]).long().cpu()

    def _submit(self, job: GenerationJob, kind: str, speak: bool) -> Request:
        self.batcher.submit(job)
        return Request(job=job, kind=kind, speak=speak, prompt_tokens=len(job.input_ids))

    def chat_job(self, messages: list[dict], voice: str | None, speak: bool, settings: dict) -> Request:
        """Queue a chat turn on processor ``messages`` (the last one the user's)."""
        speak = bool(speak) and self.can_speak
        inputs = self.chat._inputs(messages, voice, speak)  # the engine's own prompt: template + context check
        ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
        job = GenerationJob(
            input_ids=ids,
            mode="chat" if speak else "text",
            settings=settings,
            streamer=self._streamer(speak),
            audio_codes=self._prompt_codes(inputs),
        )
        return self._submit(job, "chat", speak)

    def asr_job(self, wave: np.ndarray, rate: int, settings: dict) -> Request:
        """Queue a base-model ASR row for a validated waveform."""
        inputs = self.processor.asr(wave, sampling_rate=rate, return_tensors="pt")
        self.chat.check_context(inputs)
        job = GenerationJob(
            input_ids=inputs["input_ids"][0].tolist(),
            mode="text",
            settings=settings,
            streamer=self._streamer(False),
            audio_codes=self._prompt_codes(inputs),
        )
        return self._submit(job, "asr", False)

    def tts_job(self, text: str, settings: dict) -> Request:
        """Queue a base-model TTS row (text chunked like ``SpeechChat.synthesize``; control tokens as plain text)."""
        text = check_text(text, self.chat.limits)
        if not text:
            raise AudioInputError("The input text is empty.")
        if not self.can_speak:
            raise AudioInputError("This model was loaded without the vocoder (code2wav): it cannot speak.")
        tok = self.processor.tokenizer
        chunks = [tok.encode(c, add_special_tokens=False, split_special_tokens=True) for c in split_tts_text(text)]
        chunks = [c for c in chunks if c]
        if not chunks:
            raise AudioInputError("The input text is empty.")
        self.chat.check_context({"input_ids": torch.tensor([[t for c in chunks for t in c]])})
        job = GenerationJob(
            input_ids=[], mode="tts", settings=settings, streamer=self._streamer(True), tts_chunks=chunks
        )
        request = self._submit(job, "tts", True)
        request.prompt_tokens = sum(len(c) for c in chunks)
        return request

    def cancel(self, request: Request) -> None:
        self.batcher.cancel(request.job)

    # ------------------------------------------------------------------------------------------ the batch
    def run_batch(self, jobs: list[GenerationJob]) -> None:
        """One batched ``generate`` for ``jobs`` (left-padded; see the module docstring)."""
        model = self.model
        device = model.device
        width = max(len(job.input_ids) for job in jobs)
        pad = int(model.config.pad_token_id if model.config.pad_token_id is not None else 0)
        input_ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for r, job in enumerate(jobs):
            n = len(job.input_ids)
            if n:
                input_ids[r, width - n :] = torch.tensor(job.input_ids, dtype=torch.long)
                mask[r, width - n :] = 1
        codes = [job.audio_codes for job in jobs if job.audio_codes is not None and job.audio_codes.shape[0]]
        kwargs = dict(jobs[0].settings)
        if any(job.mode == "tts" for job in jobs):
            kwargs["tts_chunks"] = [job.tts_chunks or [] for job in jobs]
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            audio_codes=torch.cat(codes).to(device) if codes else None,
            output_audio=True,
            speech_mode=[job.mode for job in jobs],
            tokenizer=self.processor.tokenizer,
            streamer=BatchStreamer(jobs),
            generator=torch.Generator(device=device).manual_seed(self.chat.seed),
            **kwargs,
        )
        for r, job in enumerate(jobs):
            generated = out.sequences[r, width : int(out.sequence_lengths[r])].tolist()
            job.finish(result=(generated, [c.cpu() for c in out.audio_codes[r]]))

    # ------------------------------------------------------------------------------------------ a job's stream
    def events(self, request: Request) -> Iterator[Event]:
        """The request's events (blocking; run it in a thread): text deltas, audio chunks, then ``"done"``.

        Raises the job's error (:class:`.batching.JobCancelledError` after a cancel, or the generation error)."""
        job = request.job
        joiner, samples = PhraseJoiner(), 0
        for event in job.streamer:
            chunk = None
            if event.kind == "text" and event.text and request.kind != "tts":
                yield Event("text", text=event.text)
            elif event.kind == "audio" and event.waveform is not None and event.waveform.numel():
                chunk = joiner.push(event.waveform)
            elif event.kind == "segment_end":
                chunk = joiner.end_phrase()
            if chunk is not None and chunk.numel():
                samples += chunk.numel()
                yield Event("audio", audio=chunk.numpy())
        chunk = joiner.finish()
        if chunk.numel():
            samples += chunk.numel()
            yield Event("audio", audio=chunk.numpy())
        job.finished.wait()
        if job.error is not None:
            raise job.error
        generated, codes = job.result
        if request.kind == "tts":
            text = ""
        elif request.speak:
            segments = self.processor.split_generated(generated, codes)
            text = "".join(s["text"] for s in segments if s["type"] == "text")
        else:
            text = self.processor.tokenizer.decode(generated, skip_special_tokens=True)
            text = text.strip() if request.kind == "asr" else text
        yield Event("done", text=text, completion_tokens=len(generated), audio_seconds=samples / 24000.0)


__all__ = ["Event", "Request", "ServeLimits", "ServingEngine"]
