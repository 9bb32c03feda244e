"""The speech-chat engine, with no user interface in it: used by the command line (``baichuan-audio chat`` / ``asr``
/ ``tts``) and by the Gradio app (:mod:`.demo`).

:class:`SpeechChat` holds one model + processor: :meth:`SpeechChat.stream_turn` runs one chat turn in a background
thread and yields :class:`TurnEvent` items (text deltas, 24 kHz audio chunks, the final assistant message);
:meth:`SpeechChat.answer` is the same turn without streaming; :meth:`SpeechChat.transcribe` / :meth:`SpeechChat.synthesize`
are the base-model ASR / TTS prompts. :func:`load_user_audio` / :func:`check_text` validate user input
(:class:`AudioInputError`, a user-facing message); :func:`speech_chat_from_args` builds a :class:`SpeechChat` from the
model options shared by the command line and the app (:func:`.loading.add_model_arguments`).

Audio streaming. Speech is decoded phrase by phrase with the code2wav streaming decoder as the codes are generated
(each frame is pushed as the generation loop emits it; by default the turn's generation thread decodes it, so that
all of a turn's tensor work runs on one thread, see ``decode_priority``) and every chunk it returns is yielded at
once. Chunk schedule (``first_chunk_frames`` / ``chunk_frames``, see ``modeling/code2wav_streaming.py``): by
default a chunk per 25 code frames (2 s of speech: the U-Net's attention chunk, the earliest exact one; the first
chunk holds 80 mel frames = 1.6 s, the vocoder's 20-frame lookahead waits for the next); ``first_chunk_frames``
6..24 gives a provisional first chunk after that many frames.
Within a phrase the chunks concatenate to exactly the phrase's length (``(4 * frames - 1) * 480`` samples, as the
one-shot decode; no cross-fade, the vocoder windows overlap by its receptive field only). Phrases are joined with the
same 240-sample overlapping cross-fade as ``model.decode_audio_segments`` (no sample added: the answer has the sum
of the phrase lengths minus 240 per junction of two phrases longer than 240 samples; the stream is held back by
those 240 samples, 10 ms). A phrase that ends at its first frame (end-of-audio first) adds nothing. The decoder's
random draws come from a generator seeded per turn (``seed``), so the streamed chunks concatenate to exactly
:meth:`SpeechChat.decode_answer` of the final codes.

History. The conversation is passed in and returned as processor messages (no state in the engine); the assistant's
speech is kept as its generated CODES (``processor.to_assistant_message``), never as waveforms, and fed back without
re-encoding.

Limits (:class:`InputLimits`). User audio: length, size, silence, invalid samples; typed text length; a prompt that
does not fit the model's context is refused before generating. The app also applies the per-session limits
(``max_turns``, one turn at a time) and the queue limits (``max_queue``, ``concurrency``).
"""

from __future__ import annotations

import argparse
import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from . import loading
from .cpu_threads import release_openmp_workers, releases_openmp_workers
from .modeling.generation import PromptTooLongError, check_prompt_length, crossfade, join_waveforms, split_tts_text
from .modeling.streamer import BaichuanAudioStreamer, BaichuanAudioStreamEvent
from .modeling.streaming_state import StreamingStatePool
from .processing.audio_io import InvalidAudioError, read_audio_file
from .processing.processor import DEFAULT_VOICE, OUTPUT_SAMPLING_RATE

#: Voice names for the system prompt ``请用【...】这个声音回答问题。``: the released demo's default; the selector also
#: accepts any other name typed in.
VOICES = [DEFAULT_VOICE]
CROSSFADE = 240  # samples at 24 kHz, as the original demo's wave_concat


class AudioInputError(ValueError):
    """Rejected user audio; the message is shown to the user as is."""


@dataclass
class InputLimits:
    """Limits on user audio. ``max_seconds``/``max_megabytes``: upper bounds; ``min_seconds``: shortest clip;
    ``silence_peak``: a clip whose peak amplitude is below this (full scale 1.0) counts as silence;
    ``max_text_chars``: longest typed message / TTS text; ``max_turns``: user turns per session (app);
    ``max_queue``: waiting requests of the app's queue; ``concurrency``: turns generated at once (app)."""

    max_seconds: float = 60.0
    max_megabytes: float = 20.0
    min_seconds: float = 0.2
    silence_peak: float = 1e-3
    max_text_chars: int = 2000
    max_turns: int = 20
    max_queue: int = 16
    concurrency: int = 2


def check_text(text: str | None, limits: InputLimits) -> str:
    """The stripped text, or :class:`AudioInputError` when it is longer than ``limits.max_text_chars``."""
    text = (text or "").strip()
    if len(text) > limits.max_text_chars:
        raise AudioInputError(f"The text has {len(text)} characters; the limit is {limits.max_text_chars}.")
    return text


def load_user_audio(value, limits: InputLimits | None = None) -> tuple[np.ndarray, int]:
    """``(mono float32 waveform, sampling_rate)`` of a Gradio audio value (a file path or ``(sr, int16 array)``).

    Raises :class:`AudioInputError` with a user-facing message for files that are missing, too big, not audio or
    truncated, clips that are too long (checked from the header, before reading), too short, silent or with
    invalid (NaN / infinite) samples.
    """
    limits = limits or InputLimits()
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise AudioInputError("The audio file could not be found; please upload it again.")
        megabytes = os.path.getsize(path) / 1e6
        if megabytes > limits.max_megabytes:
            raise AudioInputError(f"The file is {megabytes:.1f} MB; the limit is {limits.max_megabytes:g} MB.")
        import soundfile as sf

        try:
            info = sf.info(path)
        except Exception:  # soundfile raises several types for unreadable files
            info = None
        if info is not None and info.samplerate > 0 and info.frames / info.samplerate > limits.max_seconds:
            raise AudioInputError(
                f"The recording is {info.frames / info.samplerate:.0f} s long; the limit is {limits.max_seconds:g} s."
            )
        try:
            data, rate = read_audio_file(path)
        except (InvalidAudioError, FileNotFoundError) as err:
            reason = err.reason if isinstance(err, InvalidAudioError) else "not found"
            raise AudioInputError(
                f"This file is not an audio file that can be read (try WAV, FLAC or OGG): {reason}."
            ) from err
        data = data.reshape(data.shape[0], -1)
    elif isinstance(value, tuple) and len(value) == 2:
        rate, data = value[0], np.asarray(value[1])
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise AudioInputError(f"The audio has an invalid sampling rate ({rate!r}).")
        if data.dtype == np.bool_ or not (
            np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
        ):
            raise AudioInputError(f"The audio samples have an unsupported type ({data.dtype}).")
        if np.issubdtype(data.dtype, np.integer):
            data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
        data = data.astype(np.float32).reshape(data.shape[0], -1) if data.ndim else data.reshape(0, 1)
    else:
        raise AudioInputError("Please record or upload some audio first.")
    rate = int(rate)
    wave = data.mean(axis=1) if data.ndim == 2 else data
    seconds = wave.shape[0] / rate
    if seconds > limits.max_seconds:
        raise AudioInputError(f"The recording is {seconds:.0f} s long; the limit is {limits.max_seconds:g} s.")
    if seconds < limits.min_seconds:
        raise AudioInputError(f"The recording is too short ({seconds:.2f} s); please say something longer.")
    if not np.isfinite(data).all():
        raise AudioInputError("The recording contains invalid samples (NaN or infinity); it cannot be used.")
    if float(np.abs(wave).max()) < limits.silence_peak:
        raise AudioInputError("The recording is silent; please check the microphone and try again.")
    return np.ascontiguousarray(wave, dtype=np.float32), rate


def to_pcm16(waveform) -> np.ndarray:
    """Float waveform in [-1, 1] -> int16 samples (clipped; a fixed scale, no per-chunk normalisation)."""
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().float().cpu().numpy()
    wave = np.clip(np.asarray(waveform, dtype=np.float32).reshape(-1), -1.0, 1.0)
    return np.round(wave * 32767.0).astype(np.int16)


def wav_bytes(waveform, sampling_rate: int = OUTPUT_SAMPLING_RATE) -> bytes:
    """A complete 16-bit mono WAV file (bytes) of a float or int16 waveform."""
    import soundfile as sf

    pcm = waveform if isinstance(waveform, np.ndarray) and waveform.dtype == np.int16 else to_pcm16(waveform)
    buffer = io.BytesIO()
    sf.write(buffer, pcm, sampling_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ streaming glue
class TurnStopped(RuntimeError):
    """Raised inside the generation thread when the user pressed stop."""


class _TurnStreamer(BaichuanAudioStreamer):
    """The streamer of one turn: aborts generation (raises :class:`TurnStopped` in the generation thread) once
    ``stop`` is set, and joins the phrases' waveforms (:class:`PhraseJoiner`) where they are decoded: in the
    generation thread with ``decode_priority="inline"`` (then the consuming thread does no tensor work at all, see
    :mod:`.cpu_threads`), else in the consuming thread (:meth:`joined_events`). Audio events then carry the samples to
    play now, and :meth:`end` adds one more with the samples held back for a cross-fade."""

    def __init__(self, stop: threading.Event, **kwargs):
        super().__init__(**kwargs)
        self.stop = stop
        self.joiner = PhraseJoiner()

    def put_text(self, row, token_ids):
        if self.stop.is_set():
            raise TurnStopped("stopped by the user")
        super().put_text(row, token_ids)

    def put_audio(self, row, codes):
        if self.stop.is_set():
            raise TurnStopped("stopped by the user")
        super().put_audio(row, codes)

    def enqueue(self, event):
        if not self.decodes_inline:
            super().enqueue(event)
            return
        for joined in self.join(event):
            super().enqueue(joined)

    def end(self):
        if self.decodes_inline:
            super().enqueue(self._held_back())
        super().end()

    def joined_events(self) -> Iterator:
        """The consumer's events, joined (here, unless the generation thread already joined them)."""
        while True:
            try:
                event = next(self)
            except StopIteration:
                break
            yield from ([event] if self.decodes_inline else self.join(event))
        if not self.decodes_inline:
            yield self._held_back()

    def join(self, event) -> list:
        """``event`` with its waveform replaced by the joined samples to play now; before a ``segment_end``, an
        audio event with what the phrase's end releases."""
        if event.kind == "audio" and event.waveform is not None and event.waveform.numel():
            event.waveform = self.joiner.push(event.waveform)
        elif event.kind == "segment_end":
            released = self.joiner.end_phrase()
            return [BaichuanAudioStreamEvent(event.row, "audio", waveform=released, segment=event.segment), event]
        return [event]

    def _held_back(self):
        return BaichuanAudioStreamEvent(0, "audio", waveform=self.joiner.finish())


class PhraseJoiner:
    """Streams the join of phrase waveforms exactly as :func:`join_waveforms` (``mode="crossfade"``) joins whole ones.

    Where two phrases both have more than ``n`` samples, ``join_waveforms`` overlaps the last ``n`` samples of the
    output so far with the first ``n`` of the next phrase (linear cross-fade, no sample added). Here the last ``n``
    samples of the stream are always held back (they may still be cross-faded), and so is a new phrase's head until
    it is known whether the phrase is longer than ``n``; :meth:`finish` releases the rest at the end of the answer.
    Empty phrases (an audio segment that ended at its first frame) change nothing.
    """

    def __init__(self, overlap: int = CROSSFADE):
        self.overlap = overlap
        self.hold = torch.zeros(0)  # last `overlap` samples of the stream, not emitted yet
        self.prev_length = 0  # samples of the previous non-empty phrase
        self._reset()

    def _reset(self) -> None:
        self.head: list[torch.Tensor] = []  # start of the current phrase while the cross-fade is undecided
        self.length = 0  # samples of the current phrase so far
        self.decided = False

    def _append(self, samples: torch.Tensor) -> torch.Tensor:
        """Add samples to the stream; emit all but the last ``overlap``."""
        stream = torch.cat([self.hold, samples])
        cut = max(stream.shape[0] - self.overlap, 0)
        self.hold = stream[cut:]
        return stream[:cut]

    def _decide(self, force: bool = False) -> torch.Tensor:
        head = torch.cat(self.head) if self.head else torch.zeros(0)
        n = self.overlap
        fade = self.prev_length > n and self.length > n
        if not (fade or force or self.prev_length <= n):
            return torch.zeros(0)  # the previous phrase is long: wait until this one is longer than n (or ends)
        self.decided, self.head = True, []
        if fade:  # the held samples are exactly the stream's last n
            self.hold, head = torch.zeros(0), torch.cat([crossfade(self.hold, head[:n]), head[n:]])
        return self._append(head)

    def push(self, chunk: torch.Tensor) -> torch.Tensor:
        """Samples of the current phrase -> samples to play now (maybe none)."""
        chunk = chunk.detach().float().cpu().reshape(-1)
        self.length += chunk.shape[0]
        if self.decided:
            return self._append(chunk)
        self.head.append(chunk)
        return self._decide()

    def end_phrase(self) -> torch.Tensor:
        """The current phrase ended: the samples that can be played now."""
        if self.length == 0:
            self._reset()
            return torch.zeros(0)
        out = torch.zeros(0) if self.decided else self._decide(force=True)
        self.prev_length = self.length
        self._reset()
        return out

    def finish(self) -> torch.Tensor:
        """The answer ended: every sample still held back (a phrase not closed by :meth:`end_phrase` included)."""
        out = self.end_phrase()
        rest, self.hold, self.prev_length = self.hold, torch.zeros(0), 0
        return torch.cat([out, rest])


@dataclass
class TurnEvent:
    """One item of :meth:`SpeechChat.stream_turn`: ``kind`` is ``"text"`` (``text``: a delta), ``"audio"``
    (``audio``: 24 kHz float samples) or ``"done"`` (``message``: the assistant message for the history, ``text``:
    the whole answer text, ``codes``: the answer's audio segments, ``stopped``: the user stopped it)."""

    kind: str
    text: str = ""
    audio: torch.Tensor | None = None
    message: dict | None = None
    codes: list[torch.Tensor] = field(default_factory=list)
    stopped: bool = False


class SpeechChat:
    """One model + processor and the turn logic of the app and of ``baichuan-audio chat`` (no conversation
    state of its own: the conversation is passed in and returned, so concurrent sessions never share one; a kept
    ``state_pool`` only lends each of its buffers to one stream at a time).

    Args:
        model: ``BaichuanAudioForConditionalGeneration`` (with the speech generation mixin and ``code2wav``).
        processor: ``BaichuanAudioProcessor``.
        generation_kwargs: extra ``generate`` arguments (sampling settings, caps; e.g. ``do_sample=False``).
        seed: seed of the sampling and of the code2wav draws of every turn (reproducible answers).
        limits: :class:`InputLimits` of user audio.
        first_chunk_frames, chunk_frames: the chunk schedule of the streamed speech (the code2wav streaming
            decoder's arguments; None: its defaults, a chunk per 25 frames). Checked here (``ValueError``).
        decode_priority: where and when chunks are decoded (the streamer's argument, see
            :mod:`.modeling.streamer`); default ``"inline"``: in the turn's generation thread, which then does all
            of the turn's tensor work (generation waits while a chunk decodes; on a CPU one thread's OpenMP team
            on the cores is the fastest, see :mod:`.cpu_threads`). ``"first_chunk"`` / ``"overlap"`` /
            ``"always"`` decode in the consuming thread.
        state_pool: a :class:`~.modeling.streaming_state.StreamingStatePool` that the speech of EVERY turn takes its
            streaming state buffers from (the CLI's / app's ``--keep-stream-state``). Default None: one pool per
            turn, emptied at the turn's end, so a turn's first phrase writes to newly mapped pages (on the project's
            2-core VM an 8 s phrase at real size streamed in 1.38x its one-shot decode time on new pages, 1.19x on
            reused ones: ``benchmarks/bench_code2wav_streaming.py --state-pool``). With a kept pool only the first
            phrase of the pool's life does (a turn stopped mid-phrase gives that phrase's buffers back too); the
            price is the state of the longest phrase decoded so far (per turn running at once) staying resident:
            ~230 MB per second of speech at the released size (:meth:`StreamingStatePool.clear` gives it back).
    """

    def __init__(
        self,
        model,
        processor,
        generation_kwargs: dict | None = None,
        seed: int = 0,
        limits=None,
        first_chunk_frames: int | None = None,
        chunk_frames: int | None = None,
        decode_priority: str = "inline",
        state_pool: StreamingStatePool | None = None,
    ):
        self.decode_priority = BaichuanAudioStreamer.check_decode_priority(decode_priority)
        if state_pool is not None and not isinstance(state_pool, StreamingStatePool):
            raise TypeError(f"state_pool must be a StreamingStatePool or None, got {type(state_pool).__name__}")
        self.state_pool = state_pool
        self.model = model
        self.processor = processor
        self.generation_kwargs = dict(generation_kwargs or {})
        self.seed = seed
        self.limits = limits or InputLimits()
        self.schedule = {
            k: v
            for k, v in (("first_chunk_frames", first_chunk_frames), ("chunk_frames", chunk_frames))
            if v is not None
        }
        if self.schedule and self.can_speak:
            model.code2wav.streaming_decoder(**self.schedule)  # ValueError on a schedule the model cannot follow

    @property
    def can_speak(self) -> bool:
        return getattr(self.model, "code2wav", None) is not None

    # ------------------------------------------------------------------------------------------ prompt
    def user_message(self, audio=None, text: str | None = None) -> dict:
        """A user message from a Gradio audio value (path or ``(sr, array)``) and/or typed text (validated)."""
        content = []
        if audio is not None:
            wave, rate = load_user_audio(audio, self.limits)
            content.append({"type": "audio", "audio": wave, "sampling_rate": rate})
        text = check_text(text, self.limits)
        if text:
            content.append({"type": "text", "text": text})
        if not content:
            raise AudioInputError("Please record or upload some audio, or type a message.")
        return {"role": "user", "content": content}

    def _inputs(self, messages: list[dict], voice: str, speak: bool):
        try:
            inputs = self.processor.apply_chat_template(
                messages,
                audio_output=speak,
                voice=voice or DEFAULT_VOICE,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
            )
        except InvalidAudioError as err:
            raise AudioInputError(f"This audio cannot be used: {err.reason}.") from err
        self.check_context(inputs)
        return inputs

    def check_context(self, inputs) -> None:
        """:class:`AudioInputError` (a user-facing message) when the prompt does not fit the model's context."""
        ids = inputs["input_ids"]
        pad_id = getattr(self.model.config, "audio_pad_token_id", None)
        try:
            check_prompt_length(
                int(ids.shape[-1]),
                int((ids == pad_id).sum()) if pad_id is not None else 0,
                int(self.model.config.get_text_config().max_position_embeddings),
                "This conversation",
            )
        except PromptTooLongError as err:
            raise AudioInputError(str(err)) from err

    def _generate_kwargs(self, inputs, speak: bool) -> dict:
        device = self.model.device
        kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        kwargs.update(
            output_audio=True,
            speech_mode="chat" if speak else "text",
            tokenizer=self.processor.tokenizer,
            generator=torch.Generator(device=device).manual_seed(self.seed),
        )
        kwargs.update(self.generation_kwargs)
        return kwargs

    def decoder_kwargs(self) -> dict:
        """Arguments of a turn's ``code2wav.streaming_decoder``: a generator seeded with ``seed + 1`` (fresh per
        turn), the chunk schedule and, if kept, the chat's ``state_pool``."""
        device = self.model.code2wav.device
        kwargs = {"generator": torch.Generator(device=device).manual_seed(self.seed + 1), **self.schedule}
        if self.state_pool is not None:
            kwargs["state_pool"] = self.state_pool  # kept across turns (the streamer never clears a given pool)
        return kwargs

    def _assistant_message(self, out, prompt_length: int) -> tuple[dict, str]:
        row = out.sequences[0, : int(out.sequence_lengths[0])]
        segments = self.processor.split_generated(row, out.audio_codes[0], prompt_length=prompt_length)
        text = "".join(s["text"] for s in segments if s["type"] == "text")
        return self.processor.to_assistant_message(segments), text

    # ------------------------------------------------------------------------------------------ turns
    def stream_turn(
        self, messages: list[dict], voice: str = DEFAULT_VOICE, speak: bool = True, stop=None
    ) -> Iterator[TurnEvent]:
        """Run one turn on ``messages`` (ending with the user's message) and stream it.

        Yields text deltas and audio chunks as they are generated, then one ``"done"`` event with the assistant
        message to append to the history. ``stop`` (a ``threading.Event``) ends the turn early (``done`` with
        ``stopped=True``, the text so far and no codes). Errors of the generation thread are re-raised here.
        """
        speak = bool(speak) and self.can_speak
        inputs = self._inputs(messages, voice, speak)
        prompt_length = int(inputs["input_ids"].shape[1])
        stop = stop or threading.Event()
        streamer = _TurnStreamer(
            stop,
            tokenizer=self.processor.tokenizer,
            code2wav=self.model.code2wav if speak else None,
            decoder_kwargs=self.decoder_kwargs() if speak else None,
            decode_priority=self.decode_priority,
        )
        result: dict = {}
        kwargs = self._generate_kwargs(inputs, speak)

        def run():
            try:
                result["out"] = self.model.generate(streamer=streamer, **kwargs)
            except BaseException as err:  # handed to the consumer
                result["error"] = err
                streamer.end()

        release_openmp_workers()  # the turn thread's team is then the only one on the cores (.cpu_threads)
        thread = threading.Thread(target=run, name="baichuan-audio-turn", daemon=True)
        thread.start()
        text = []
        try:
            for event in streamer.joined_events():
                if event.kind == "text" and event.text:
                    text.append(event.text)
                    yield TurnEvent("text", text=event.text)
                elif event.kind == "audio" and event.waveform is not None and event.waveform.numel():
                    yield TurnEvent("audio", audio=event.waveform)
        finally:
            if thread.is_alive():  # the consumer left early (e.g. Gradio cancelled the event): end generation
                stop.set()
            thread.join()
            streamer.close_decoders()  # phrases cut off: their state back to the (kept) pool
        error = result.get("error")
        if isinstance(error, TurnStopped) or (error is None and "out" not in result):
            message = {"role": "assistant", "content": [{"type": "text", "text": "".join(text)}]}
            yield TurnEvent("done", text="".join(text), message=message, stopped=True)
            return
        if error is not None:
            raise error
        out = result["out"]
        message, full_text = self._assistant_message(out, prompt_length)
        yield TurnEvent("done", text=full_text, message=message, codes=list(out.audio_codes[0]))

    @releases_openmp_workers
    def answer(self, messages: list[dict], voice: str = DEFAULT_VOICE, speak: bool = True) -> TurnEvent:
        """The same turn without streaming: ``done`` event with ``text``, ``codes``, ``message`` and ``audio`` (the
        whole 24 kHz answer from :meth:`decode_answer`, or None)."""
        speak = bool(speak) and self.can_speak
        inputs = self._inputs(messages, voice, speak)
        with torch.no_grad():
            out = self.model.generate(**self._generate_kwargs(inputs, speak))
        message, text = self._assistant_message(out, int(inputs["input_ids"].shape[1]))
        codes = list(out.audio_codes[0])
        audio = self.decode_answer(codes) if speak and codes else None
        return TurnEvent("done", text=text, message=message, codes=codes, audio=audio)

    def decode_answer(self, codes: list[torch.Tensor]) -> torch.Tensor | None:
        """24 kHz waveform of an answer's audio segments, decoded as :meth:`stream_turn` streams them."""
        # later phrases reuse the state pages: of this answer's pool, or of the chat's kept one
        kwargs = {"state_pool": StreamingStatePool(), **self.decoder_kwargs()}
        waves = []
        for segment in codes:
            if segment.shape[0] == 0:
                continue
            decoder = self.model.code2wav.streaming_decoder(**kwargs)
            frames = segment.to(self.model.code2wav.device)
            pieces = [decoder.push(frames[i : i + 1]) for i in range(frames.shape[0])]  # frame by frame, as streamed
            waves.append(torch.cat([*pieces, decoder.finish()]).detach().float().cpu())
        return join_waveforms(waves, CROSSFADE) if waves else None

    # ------------------------------------------------------------------------------------------ base tasks
    @releases_openmp_workers
    def transcribe(self, audio) -> str:
        """Base-model ASR of a Gradio audio value / file path (validated)."""
        wave, rate = load_user_audio(audio, self.limits)
        inputs = self.processor.asr(wave, sampling_rate=rate, return_tensors="pt")
        self.check_context(inputs)
        kwargs = self._generate_kwargs(inputs, speak=False)
        kwargs.setdefault("max_new_tokens", 256)
        with torch.no_grad():
            out = self.model.generate(**kwargs)
        prompt = int(inputs["input_ids"].shape[1])
        return self.processor.tokenizer.decode(
            out.sequences[0, prompt : int(out.sequence_lengths[0])], skip_special_tokens=True
        ).strip()

    @releases_openmp_workers
    def synthesize(self, text: str) -> torch.Tensor:
        """Base-model TTS of ``text`` (chunked like the original base TTS demo): the 24 kHz waveform."""
        text = check_text(text, self.limits)
        if not text:
            raise AudioInputError("Please type some text to speak.")
        if not self.can_speak:
            raise AudioInputError("This model was loaded without the vocoder (code2wav): it cannot speak.")
        tok = self.processor.tokenizer
        chunks = [
            tok.encode(c, add_special_tokens=False, split_special_tokens=True) for c in split_tts_text(text.strip())
        ]
        inputs = {"input_ids": torch.tensor([[t for chunk in chunks for t in chunk]])}
        self.check_context(inputs)  # the chunks + one switch token each must fit, before any audio
        kwargs = self._generate_kwargs({}, speak=True)
        kwargs.update(speech_mode="tts", tts_chunks=[chunks], tokenizer=tok)
        with torch.no_grad():
            out = self.model.generate(**kwargs)
        wave = self.decode_answer(list(out.audio_codes[0]))
        if wave is None:
            raise AudioInputError("The model produced no speech for this text.")
        return wave


# ------------------------------------------------------------------------------------- options of the front ends
@releases_openmp_workers
def speech_chat_from_args(args: argparse.Namespace) -> SpeechChat:
    """Load the model of ``args.model`` (:func:`.loading.load_model_and_processor`) and wrap it in a
    :class:`SpeechChat` with the options of :func:`.loading.add_model_arguments` (``tiny-random`` gets short caps)."""
    model, processor = loading.load_model_and_processor(args.model, args.vocoder, args.device, args.dtype)
    left_chunks = getattr(args, "decoding_left_chunks", None)
    if left_chunks is not None and getattr(model, "code2wav", None) is not None:
        model.code2wav.config.flow_matching_config.num_decoding_left_chunks = left_chunks
    kwargs = loading.generation_kwargs_for(args.model)
    if args.greedy:
        kwargs["do_sample"] = False
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    pool = StreamingStatePool() if getattr(args, "keep_stream_state", False) else None
    try:
        return SpeechChat(
            model,
            processor,
            kwargs,
            seed=args.seed,
            first_chunk_frames=getattr(args, "first_chunk_frames", None),
            chunk_frames=getattr(args, "chunk_frames", None),
            state_pool=pool,
        )
    except ValueError as err:  # a schedule the model cannot follow
        option = "--chunk-frames" if str(err).startswith("chunk_frames") else "--first-chunk-frames"
        raise SystemExit(f"{option}: {err}") from err


#: Errors of bad input that the front ends report as a message (the CLI: ``error: ...``, exit status 2).
def input_errors() -> tuple[type[BaseException], ...]:
    from .processing.audio_io import OutputPathError

    return (AudioInputError, InvalidAudioError, OutputPathError, PromptTooLongError, FileNotFoundError, UnicodeError)


__all__ = [
    "AudioInputError",
    "CROSSFADE",
    "InputLimits",
    "PhraseJoiner",
    "SpeechChat",
    "TurnEvent",
    "TurnStopped",
    "VOICES",
    "check_text",
    "input_errors",
    "load_user_audio",
    "speech_chat_from_args",
    "to_pcm16",
    "wav_bytes",
]
