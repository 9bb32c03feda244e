"""Text-guided speech generation for Baichuan-Audio: one ``generate`` call, one KV cache, text and audio interleaved.

:class:`BaichuanAudioGenerationMixin` adds ``generate(..., output_audio=...)`` to the model class:

* ``output_audio=False`` (default): the stock :meth:`transformers.GenerationMixin.generate` (greedy, sampling,
  streamers, stopping criteria, ...), unchanged except that a prompt beyond ``max_position_embeddings`` raises
  :class:`PromptTooLongError` first. It does not mask audio tokens (the original's text answers can contain
  ``<audiogen_start>``); pass ``suppress_tokens=[...]`` (e.g. the ids of :data:`AUDIO_BLOCK_TOKEN_FIELDS` and
  ``audiogen_start_token_id``) for text that never switches, as the speech loop's ``"text"`` rows do by default.
* ``output_audio=True``: the explicit loop below. Every row of the batch is a small state machine that moves on its
  own between a TEXT phase (LM head + text logits processors) and an AUDIO phase (one LLM step per frame, the
  incremental audio head, per-codebook processors), so rows of different lengths and modes share one batched forward
  per step. Modes per row (``speech_mode``): ``"chat"`` (the instruct model's interleaved answer), ``"tts"`` (the
  base model's chunked text-to-speech: the text is given, only audio is generated) and ``"text"`` (text only, e.g. the
  base model's ASR, stopping at end-of-text).

Layout in the LLM context (the processor builds the same layout for history audio)::

    text <audiogen_start> <audio_pad> x N <audiogen_end> text <audiogen_start> ... <|endoftext|>

The hidden state at ``<audiogen_start>`` predicts frame 0, the one at the ``<audio_pad>`` carrying frame k predicts
frame k+1 (or end-of-audio: code ``codebook_sizes[0]`` in codebook 0). Audio steps never run the text LM head.

Switch policies (``generation_config.switch_policy``):

* ``"reference"`` reproduces the original demo (``s2s_gradio_demo_cosy_multiturn.py`` + ``generation.py``) exactly:
  a text segment stops at ``<audiogen_start>``, end-of-text, a stop string (later segments: ``, ! ? ， 。 ！ ？ ". "``)
  or after ``text_segment_max_new_tokens``; the LAST TOKEN IS OVERWRITTEN by ``<audiogen_start>`` (so a stopping
  punctuation never enters the context); the audio segment's never-fed placeholder is overwritten by
  ``<audiogen_end>`` (at the frame cap this drops the last frame from the context while it is still spoken); on
  end-of-text after a non-empty segment the end-of-text is overwritten by ``<audiogen_start>``, that phrase is
  spoken and the sequence ends with the audio placeholder; after ``max_rounds`` (audio + text) rounds the answer
  stops.
* ``"default"`` does not drop or repeat anything at the switches: the stopping token is kept (fed) and
  ``<audiogen_start>`` is APPENDED after it; at the frame cap the last frame is fed before ``<audiogen_end>``; a final
  phrase is closed with ``<audiogen_end><|endoftext|>``. The context therefore always matches what was shown and
  spoken (the original's overwrite is a plausible cause of the "repeated text and punctuation at transitions"
  reported in Baichuan-Audio issue #10).

Positions are ``attention_mask.cumsum(-1)`` (1-based), as the original's ``prepare_inputs_for_generation``; RoPE is
relative, so this only matters at roundoff level.

Nothing is stored on the model: all state lives in the call (concurrent calls from several threads are safe).
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessorList, SuppressTokensLogitsProcessor
from transformers.cache_utils import Cache, DynamicCache
from transformers.utils import ModelOutput

from ..audio_codes import cut_at_end_of_audio
from ..configuration import TOKEN_ID_FIELDS
from .decode_layout import apply_decode_layout, wants_decode_layout
from .decode_steps import SpeechDecodeSteps, resolve_compile_config
from .logits_process import (
    IGNORED_ID,
    apply_processors,
    audio_codebook_processors,
    sampling_processors,
    select_tokens,
)
from .placement import module_device

#: Defaults of the speech loop: the settings of the original speech-chat demo (reference section 11.2).
#: The un-prefixed sampling settings are those of the FIRST text segment of an answer (and of ``"text"`` rows).
SPEECH_GENERATION_DEFAULTS: dict = {
    "do_sample": True,
    "temperature": 0.8,
    "top_k": 20,
    "top_p": 0.85,
    "repetition_penalty": 1.1,
    "later_text_temperature": 0.3,
    "later_text_top_k": 20,
    "later_text_top_p": 0.85,
    "later_text_repetition_penalty": 1.05,
    "later_text_stop_strings": [",", "!", "?", "，", "。", "！", "？", ". "],
    "text_segment_max_new_tokens": 50,
    "audio_do_sample": None,  # None: same as do_sample
    "audio_temperature": 0.5,
    "audio_top_k": 5,
    "audio_top_p": 0.85,
    "audio_repetition_penalty": 1.3,
    "audio_max_frames": 500,
    "audio_min_frames": 0,
    "max_rounds": 100,
    "text_max_new_tokens": 1024,  # "text" rows (ASR / text-only answers) when max_new_tokens is unset
    "switch_policy": "default",
    "suppress_audio_tokens": True,  # text phases never sample audio-block tokens (see AUDIO_BLOCK_TOKEN_FIELDS)
}
SWITCH_POLICIES = ("default", "reference")
#: Caps that must be positive integers (``max_new_tokens=0`` is refused with transformers' own message) and caps
#: that may be 0 (``max_rounds=0``: the first text segment only; ``audio_min_frames=0``: no minimum).
POSITIVE_CAPS = ("max_new_tokens", "text_max_new_tokens", "text_segment_max_new_tokens", "audio_max_frames")
NON_NEGATIVE_CAPS = ("max_rounds", "audio_min_frames")
#: Config fields of the tokens of audio blocks. A text phase never samples ``<audio_pad>`` (it has no codes: the
#: forward would fail); with ``suppress_audio_tokens`` (default) it samples none of these, and a ``"text"`` row
#: (text-only answer, ASR) not ``<audiogen_start>`` either, so a text-only answer never switches to speech. The
#: original did not mask them (``suppress_audio_tokens=False`` reproduces it; its text-only answers can then contain
#: ``<audiogen_start>`` as a plain token).
AUDIO_BLOCK_TOKEN_FIELDS = tuple(
    name for name in TOKEN_ID_FIELDS if name.startswith("audio") and name != "audiogen_start_token_id"
)


class PromptTooLongError(ValueError):
    """The prompt does not fit the model's context (``max_position_embeddings`` positions)."""


def check_prompt_length(num_positions: int, num_audio_frames: int, context: int, what: str = "the prompt") -> None:
    """Raise :class:`PromptTooLongError` when ``num_positions`` (the prompt's tokens, ``num_audio_frames`` of them
    audio frames at 12.5 per second) leave no room for a new token in a ``context``-position model."""
    if num_positions < context:
        return
    audio = ""
    if num_audio_frames:
        spare = max(context - (num_positions - num_audio_frames) - 1, 0)
        audio = (
            f"; {num_audio_frames} of them are audio frames ({num_audio_frames / 12.5:.1f} s of speech at 12.5 frames"
            f" per second): at most {spare / 12.5:.1f} s of audio fit with this text"
        )
    raise PromptTooLongError(
        f"{what} has {num_positions} positions but the model's context is {context} (max_position_embeddings), "
        f"leaving no room for an answer{audio}. Shorten the text or the audio, or start a new conversation."
    )


def default_generation_config(config) -> GenerationConfig:
    """The released demo's settings (reference section 11.2) as a ``GenerationConfig`` for converted checkpoints.

    The un-prefixed sampling settings drive text-only ``generate`` and the first text segment of a spoken answer;
    the ``later_text_*`` / ``audio_*`` attributes and the caps drive the speech loop (see
    :data:`SPEECH_GENERATION_DEFAULTS`). ``max_new_tokens`` is the original checkpoint's 2048.
    """
    eos = config.eos_token_id
    generation_config = GenerationConfig(
        bos_token_id=eos if isinstance(eos, int) else None,
        eos_token_id=eos,
        pad_token_id=config.pad_token_id,
        max_new_tokens=2048,
    )
    for key, value in SPEECH_GENERATION_DEFAULTS.items():
        setattr(generation_config, key, copy.deepcopy(value))
    return generation_config


SPEECH_MODES = ("chat", "tts", "text")
_TTS_SPLIT = re.compile(r"([:,;!?，。；：！？])")


def split_tts_text(text: str, min_chars: int = 10) -> list[str]:
    """Chunk a text for TTS as the original base TTS demo does.

    The text is split after each of ``: , ; ! ? ， 。 ； ： ！ ？`` and pieces are merged until a chunk is longer than
    ``min_chars`` characters; a shorter remainder becomes the last chunk.
    """
    pieces, last = [], 0
    for match in _TTS_SPLIT.finditer(text):
        pieces.append(text[last : match.end()])
        last = match.end()
    if last < len(text):
        pieces.append(text[last:])
    chunks, current = [], ""
    for piece in pieces:
        current += piece
        if len(current) > min_chars:
            chunks.append(current)
            current = ""
    if current:
        chunks.append(current)
    return chunks


@dataclass
class BaichuanAudioGenerateOutput(ModelOutput):
    """Output of ``generate(..., output_audio=True)``.

    Args:
        sequences: (B, L) token ids: each row's prompt (as given, left padding kept) followed by its generated
            tokens (one ``<audio_pad>`` per fed audio frame), right-padded with ``pad_token_id``.
        sequence_lengths: (B,) valid length of each row of ``sequences`` (left padding included).
        audio_codes: per row, the list of its audio segments, each (frames, num_codebooks) int64 codes (without the
            end-of-audio frame).
        waveforms: per row, the 24 kHz waveform (1-D float tensor; segments cross-faded by :func:`join_waveforms`,
            no sample added) or None; only with ``return_waveforms=True`` and a model with ``code2wav``.
        cache: the LLM KV cache after the call (pass it back with the extended sequence to continue).
        audio_logits: with ``output_audio_logits=True``: per row, one entry per audio-head call (frame iteration,
            the end-of-audio one included), each a list of ``num_codebooks`` raw logits (codebook_sizes[i] + 1,).
    """

    sequences: torch.LongTensor | None = None
    sequence_lengths: torch.LongTensor | None = None
    audio_codes: list[list[torch.LongTensor]] | None = None
    waveforms: list[torch.Tensor | None] | None = None
    cache: Cache | None = None
    audio_logits: list[list[list[torch.Tensor]]] | None = None


@dataclass
class _Row:
    """Mutable per-row state of one speech-generation call (never stored on the model)."""

    mode: str
    seq: list[int]  # logical sequence (prompt without left padding + generated tokens)
    phase: str = "text"  # "text" | "audio" | "done"
    later_text: bool = False  # current text segment is not the answer's first
    text_new: int = 0  # tokens sampled in the current text segment
    rounds: int = 0  # finished (audio + text) rounds
    final_audio: bool = False  # the current audio segment closes the answer
    frames: list[torch.Tensor] = field(default_factory=list)  # current segment's frames (K,)
    segments: list[torch.Tensor] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # tokens to feed at the next step
    pending_codes: list[torch.Tensor] = field(default_factory=list)  # codes of the <audio_pad> among pending
    chunks: list[list[int]] = field(default_factory=list)  # remaining TTS chunks
    audio_logits: list[list[torch.Tensor]] | None = None  # raw head logits per frame iteration (if requested)


class _Settings:
    """Resolved settings of one call (generation_config + kwargs + speech defaults)."""

    def __init__(self, config: GenerationConfig, kwargs: dict):
        for key, default in SPEECH_GENERATION_DEFAULTS.items():
            value = kwargs.pop(key, None)
            if value is None:
                value = getattr(config, key, None)
            setattr(self, key, default if value is None else value)
        for key in ("max_new_tokens", "eos_token_id", "pad_token_id"):
            value = kwargs.pop(key, None)
            setattr(self, key, value if value is not None else getattr(config, key, None))
        if self.audio_do_sample is None:
            self.audio_do_sample = self.do_sample
        if self.switch_policy not in SWITCH_POLICIES:
            raise ValueError(f"switch_policy must be one of {SWITCH_POLICIES}, got {self.switch_policy!r}")
        for key in POSITIVE_CAPS + NON_NEGATIVE_CAPS:
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`{key}` must be an integer, but is {value!r}.")
            if key in POSITIVE_CAPS and value <= 0:  # transformers' GenerationConfig.validate message
                raise ValueError(f"`{key}` must be greater than 0, but is {value}.")
            if value < 0:
                raise ValueError(f"`{key}` must be 0 or more, but is {value}.")


def _as_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


class BaichuanAudioGenerationMixin:
    """Adds speech output to ``generate`` (see the module docstring). Mix in BEFORE ``GenerationMixin``."""

    # ------------------------------------------------------------------------------------------------ public API
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config=None,
        output_audio: bool = False,
        decode_layout: bool | None = None,
        **kwargs,
    ):
        """Generate text (``output_audio=False``, the stock transformers ``generate``) or interleaved text + speech.

        Speech-output arguments (``output_audio=True``):
            input_ids / inputs: (B, S) prompts, left-padded; ``attention_mask`` (B, S) (default: all ones).
            audio_codes / input_features / encoder_length / bridge_length: speech of the prompt (see the model's
                ``forward``); only used for the first forward.
            cache: a KV cache holding the first ``cache.get_seq_length()`` positions of ``input_ids`` (continuation,
                e.g. the next TTS chunk or the next turn); only the remaining suffix is fed.
            speech_mode: ``"chat"`` | ``"tts"`` | ``"text"``, or one per row (see the module docstring).
            tts_chunks: for ``"tts"`` rows, per row the list of text chunks as token-id lists (without
                ``<audiogen_start>``), or per row one string (with ``tokenizer``: chunked by :func:`split_tts_text`
                and tokenized) or a list of strings; each chunk is followed by ``<audiogen_start>`` and one audio segment, and
                later chunks are preceded by ``<audiogen_end>`` (the base TTS demo's layout). ``input_ids`` is an
                optional prefix before the first chunk.
            tokenizer: needed for the stop strings of later text segments (``later_text_stop_strings``); without
                it only ``<audiogen_start>``, end-of-text and the token cap end a text segment.
            streamer: a :class:`BaichuanAudioStreamer` (or any object with ``put_text`` / ``put_audio`` /
                ``end_segment`` / ``end``) receiving text tokens and audio frames as they are generated. A
                streamer with a ``stopped_rows()`` method (returning row indices) ends those rows at the next step,
                as a row reaching the context ends (its audio segment so far kept; no warning): e.g. a server's
                disconnected client, while the other rows of the batch go on unchanged.
            generator: ``torch.Generator`` for the sampling draws.
            return_waveforms: decode the audio segments with ``self.code2wav`` (24 kHz).
            cache_implementation: ``"dynamic"`` (default) or ``"static"``: a preallocated ``StaticCache`` of fixed
                shape (for ``torch.compile`` / CUDA graphs on GPUs) of ``static_cache_max_len`` positions (default
                ``max_position_embeddings``). A ``cache=`` object given by the caller is used as is.
            compile_config: a ``transformers.CompileConfig``: with a static cache, single-token LLM steps and the
                audio head's positions run ``torch.compile``-d (see :mod:`.decode_steps`; never implicit, any
                device); ``disable_compile=True`` turns it off. Also read from ``generation_config``.
            Sampling settings: any key of :data:`SPEECH_GENERATION_DEFAULTS` (``temperature`` ... for the first text
                segment and "text" rows, ``later_text_*``, ``audio_*``, ``text_segment_max_new_tokens``,
                ``max_rounds``, ``switch_policy``, ``suppress_audio_tokens``), read from kwargs, then
                ``generation_config``, then the defaults.
            max_new_tokens: cap of ``"text"`` rows (unset: ``text_max_new_tokens``); ``"chat"`` / ``"tts"`` answers
                are capped by ``text_segment_max_new_tokens``, ``audio_max_frames`` and ``max_rounds``. Caps are
                checked like transformers checks ``max_new_tokens``: 0 or less raises ``ValueError``.
            Context: a prompt that leaves no position of ``max_position_embeddings`` (or of a static cache) free
                raises :class:`PromptTooLongError` before any forward; a row reaching the context during the call
                ends there with a warning.
        Both kinds of output:
            decode_layout: compute the batch-1 decode products of the LLM, audio head and LM head as one row
                block of each weight per thread (MKL runs a batch-1 product on one thread; the weights themselves
                are not changed; see :mod:`.decode_layout`). ``None`` (default): when the model is on a CPU and in
                eval mode; ``False``: leave the model as it is (a layout applied earlier stays).
        Returns:
            :class:`BaichuanAudioGenerateOutput` for speech output, else what ``GenerationMixin.generate`` returns.
        """
        if wants_decode_layout(self, decode_layout):
            apply_decode_layout(self)
        if not output_audio:
            prompt = inputs if inputs is not None else kwargs.get("input_ids")
            if isinstance(prompt, torch.Tensor) and prompt.ndim == 2:
                mask = kwargs.get("attention_mask")
                lengths = mask.sum(-1) if isinstance(mask, torch.Tensor) else [prompt.shape[1]]
                pads = (prompt == self.config.audio_pad_token_id).sum(-1)
                row = int(torch.as_tensor(lengths).argmax())
                check_prompt_length(int(lengths[row]), int(pads[row]), self._context_length())
            return super().generate(inputs, generation_config=generation_config, **kwargs)
        input_ids = kwargs.pop("input_ids", None) if inputs is None else inputs
        config = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        wants_compile = kwargs.get("compile_config") is not None or getattr(config, "compile_config", None) is not None
        # Compiled graphs are guarded on the grad mode, which is per thread: one mode for every compiled call, so that
        # a call from another thread (a streamer's producer) reuses the graphs instead of compiling them again.
        with torch.inference_mode() if wants_compile else torch.no_grad():
            return self._generate_speech(input_ids, config, kwargs)

    # ------------------------------------------------------------------------------------------------ the loop
    def _generate_speech(self, input_ids, config: GenerationConfig, kwargs: dict) -> BaichuanAudioGenerateOutput:
        settings = _Settings(config, kwargs)
        attention_mask = kwargs.pop("attention_mask", None)
        cache = kwargs.pop("cache", None)
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        speech_mode = kwargs.pop("speech_mode", "chat")
        tts_chunks = kwargs.pop("tts_chunks", None)
        tokenizer = kwargs.pop("tokenizer", None)
        tts_chunks = _tokenize_chunks(tts_chunks, tokenizer)
        streamer = kwargs.pop("streamer", None)
        generator = kwargs.pop("generator", None)
        return_waveforms = kwargs.pop("return_waveforms", False)
        output_audio_logits = kwargs.pop("output_audio_logits", False)
        cache_implementation = kwargs.pop("cache_implementation", None) or getattr(config, "cache_implementation", None)
        static_cache_max_len = kwargs.pop("static_cache_max_len", None)
        compile_config = kwargs.pop("compile_config", None) or getattr(config, "compile_config", None)
        disable_compile = kwargs.pop("disable_compile", None) or getattr(config, "disable_compile", None)
        prefill_inputs = {
            k: kwargs.pop(k, None) for k in ("audio_codes", "input_features", "encoder_length", "bridge_length")
        }
        prefill_inputs = {k: v for k, v in prefill_inputs.items() if v is not None}
        for key in ("return_dict_in_generate", "use_cache", "num_beams", "num_return_sequences"):
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"generate(output_audio=True) got unsupported arguments: {sorted(kwargs)}")

        cfg = self.config
        device = module_device(self.lm_head, self)
        batch_size = len(tts_chunks) if input_ids is None and tts_chunks is not None else input_ids.shape[0]
        if input_ids is None:
            input_ids = torch.empty(batch_size, 0, dtype=torch.long, device=device)
        input_ids = input_ids.to(device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(device).long()
        modes = [speech_mode] * batch_size if isinstance(speech_mode, str) else list(speech_mode)
        if len(modes) != batch_size or any(m not in SPEECH_MODES for m in modes):
            raise ValueError(f"speech_mode must be one of {SPEECH_MODES} or one per row, got {speech_mode!r}")

        ids = _SpecialIds(cfg, settings)
        cached = cache.get_seq_length() if cache is not None else 0
        rows = _initial_rows(input_ids, attention_mask, cached, modes, tts_chunks, ids, output_audio_logits)
        context = self._context_length()
        for row in rows:
            check_prompt_length(len(row.seq), row.seq.count(ids.audio_pad), context)
        if cache is None:
            cache = _new_cache(cfg, cache_implementation, static_cache_max_len, device)
        cache_room = int(cache.get_max_length())  # a static cache's columns (left padding included); -1: unbounded
        if cache_room > 0:
            check_prompt_length(input_ids.shape[1], 0, cache_room, "the (padded) prompt batch")
        compile_config = resolve_compile_config(cache, compile_config, disable_compile)
        steps = SpeechDecodeSteps(self, cache, compile_config, batch_size)
        # Full attention mask over everything fed so far (cached prefix + fed steps).
        mask = attention_mask[:, :cached].clone()
        first = sampling_processors(
            settings.do_sample, settings.temperature, settings.top_k, settings.top_p, settings.repetition_penalty
        )
        later = sampling_processors(
            settings.do_sample,
            settings.later_text_temperature,
            settings.later_text_top_k,
            settings.later_text_top_p,
            settings.later_text_repetition_penalty,
        )
        suppress = _suppressed_text_tokens(cfg, ids, settings.suppress_audio_tokens)
        text_procs = {
            key: LogitsProcessorList([SuppressTokensLogitsProcessor(suppress[mode], device=device), *procs])
            for key, mode, procs in (("first", "chat", first), ("later", "chat", later), ("text", "text", first))
        }
        audio_procs = audio_codebook_processors(
            list(cfg.codebook_sizes),
            settings.audio_do_sample,
            settings.audio_temperature,
            settings.audio_top_k,
            settings.audio_top_p,
            settings.audio_repetition_penalty,
            settings.audio_min_frames,
        )
        stops = _StopChecker(tokenizer, settings)
        first_step = True
        with steps.settings():
            while any(row.phase != "done" for row in rows):
                self._speech_check_context(rows, context, cache_room, mask.shape[1], streamer)
                if all(row.phase == "done" for row in rows):
                    break
                step_ids, step_mask, step_codes = _build_step(rows, ids, device)
                mask = torch.cat([mask, step_mask], dim=1)
                position_ids = mask.cumsum(-1)[:, -step_ids.shape[1] :]
                model_inputs = dict(prefill_inputs) if first_step else {}
                if step_codes is not None:
                    model_inputs["audio_codes"] = step_codes
                model_inputs.update(input_ids=step_ids, attention_mask=mask, position_ids=position_ids, cache=cache)
                hidden = steps.llm(model_inputs)  # hidden states only: no LM head on audio steps
                first_step = False
                # Phases are read before either update: a row switching phase acts on the NEXT step's output.
                text_rows = [r for r, row in enumerate(rows) if row.phase == "text"]
                audio_rows = [r for r, row in enumerate(rows) if row.phase == "audio"]
                self._speech_text_step(rows, text_rows, hidden, text_procs, stops, ids, settings, generator, streamer)
                self._speech_audio_step(
                    rows, audio_rows, hidden, audio_procs, ids, settings, generator, steps, streamer
                )

        if streamer is not None:
            streamer.end()
        return self._speech_output(rows, input_ids, attention_mask, ids, cache, return_waveforms)

    # ------------------------------------------------------------------------------------------------ text rows
    def _speech_text_step(self, rows, active, hidden, text_procs, stops, ids, settings, generator, streamer) -> None:
        if not active:
            return
        groups: dict[str, list[int]] = {}
        for r in active:
            mode = rows[r].mode
            key = "text" if mode == "text" else "later" if rows[r].later_text else "first"
            groups.setdefault(key, []).append(r)
        for key, members in groups.items():
            logits = self.lm_head(hidden[members]).float()
            history = _pad_histories([rows[r].seq for r in members], logits.device)
            scores = apply_processors(text_procs[key], history, logits)
            tokens = select_tokens(scores, settings.do_sample, generator).tolist()
            for r, token in zip(members, tokens):
                self._speech_text_token(r, rows[r], int(token), stops, ids, settings, streamer)

    def _speech_text_token(self, r, row: _Row, token: int, stops, ids, settings, streamer) -> None:
        row.seq.append(token)
        row.text_new += 1
        if streamer is not None and token not in ids.specials:
            streamer.put_text(r, [token])
        if row.mode == "text":
            cap = settings.max_new_tokens if settings.max_new_tokens is not None else settings.text_max_new_tokens
            if token in ids.eos or row.text_new >= cap:
                row.phase = "done"
            else:
                row.pending = [token]
            return
        ended = (
            token in ids.eos
            or token == ids.audiogen_start
            or row.text_new >= settings.text_segment_max_new_tokens
            or stops.stopped(row.seq, later=row.later_text)
        )
        if not ended:
            row.pending = [token]
            return
        if row.rounds >= settings.max_rounds:
            row.phase = "done"
            return
        if token in ids.eos:
            if row.text_new <= 1:
                row.phase = "done"
                return
            row.final_audio = True
            row.seq[-1] = ids.audiogen_start
            _start_audio(row, [ids.audiogen_start])
        elif token == ids.audiogen_start or settings.switch_policy == "reference":
            row.seq[-1] = ids.audiogen_start
            _start_audio(row, [ids.audiogen_start])
        else:  # default policy: keep the stopping token, append <audiogen_start>
            row.seq.append(ids.audiogen_start)
            _start_audio(row, [token, ids.audiogen_start])

    # ------------------------------------------------------------------------------------------------ context
    def _context_length(self) -> int:
        return int(self.config.get_text_config().max_position_embeddings)

    def _speech_check_context(self, rows, context: int, cache_room: int, fed: int, streamer) -> None:
        """End the rows whose sequence reached the model's context (as transformers' ``max_length``: a sequence never
        has more tokens than ``max_position_embeddings``) or whose next feed would pass a static cache's columns,
        with a warning, and the rows the streamer's ``stopped_rows()`` names (no warning): an audio segment in
        progress is kept (its frames so far), the answer ends there."""
        width = max(len(row.pending) for row in rows if row.phase != "done")
        cache_full = cache_room > 0 and fed + width > cache_room
        stopped = set(streamer.stopped_rows()) if hasattr(streamer, "stopped_rows") else set()
        for r, row in enumerate(rows):
            at_limit = len(row.seq) >= context or cache_full  # sequences stay <= context
            if row.phase == "done" or not (at_limit or r in stopped):
                continue
            if at_limit:
                limit = f"the static cache's {cache_room} columns" if cache_full else f"the model's context ({context})"
                warnings.warn(f"generation of row {r} stopped at {limit}: the answer is cut there", stacklevel=4)
            if row.phase == "audio":
                segment = torch.stack(row.frames) if row.frames else torch.empty(0, len(self.config.codebook_sizes))
                row.segments.append(segment.long())
                row.frames = []
                if streamer is not None:
                    streamer.end_segment(r)
            row.phase, row.pending, row.pending_codes = "done", [], []

    # ------------------------------------------------------------------------------------------------ audio rows
    def _speech_audio_step(self, rows, active, hidden, audio_procs, ids, settings, generator, steps, streamer) -> None:
        if not active:
            return
        head_device = module_device(self.audio_head, self)
        num_codebooks = len(audio_procs)
        histories = _pad_frames([rows[r].frames for r in active], num_codebooks, head_device)

        def select(codebook: int, logits: torch.Tensor) -> torch.Tensor:
            scores = apply_processors(audio_procs[codebook], histories[:, :, codebook], logits.float())
            return select_tokens(scores, settings.audio_do_sample, generator)

        frames, logits = steps.audio_frame(hidden[active].to(head_device), select)
        eos_code = self.config.codebook_sizes[0]
        for j, (r, frame) in enumerate(zip(active, frames)):
            row = rows[r]
            if row.audio_logits is not None:
                row.audio_logits.append([codebook_logits[j] for codebook_logits in logits])
            row.seq.append(ids.audio_pad)  # placeholder of this frame (fed at the next step, if any)
            is_end = int(frame[0]) == eos_code
            if not is_end:
                row.frames.append(frame)
                if streamer is not None:
                    streamer.put_audio(r, frame.unsqueeze(0))
            iterations = len(row.frames) + int(is_end)
            if is_end or iterations >= settings.audio_max_frames:
                self._speech_end_segment(r, row, is_end, ids, settings, streamer)
            else:
                row.pending, row.pending_codes = [ids.audio_pad], [frame]

    def _speech_end_segment(self, r, row: _Row, is_end: bool, ids, settings, streamer) -> None:
        segment = torch.stack(row.frames) if row.frames else torch.empty(0, len(self.config.codebook_sizes))
        row.segments.append(segment.long())
        row.rounds += 1
        if streamer is not None:
            streamer.end_segment(r)
        reference = settings.switch_policy == "reference"
        last_frame = row.frames[-1] if row.frames else None
        row.frames = []
        if (row.mode == "tts" and not row.chunks) or row.final_audio:
            row.phase = "done"
            if not reference:  # close the segment in the context layout; a final phrase also ends the text
                if is_end:
                    row.seq[-1] = ids.audiogen_end  # the placeholder of the end-of-audio frame
                else:
                    row.seq.append(ids.audiogen_end)  # keep the last frame's placeholder
                if row.final_audio:
                    row.seq.append(ids.eos[0])
            return
        if is_end or reference:  # the never-fed placeholder becomes <audiogen_end>
            row.seq[-1] = ids.audiogen_end
            feed, codes = [ids.audiogen_end], []
        else:  # default policy at the frame cap: feed the last frame, then <audiogen_end>
            row.seq.append(ids.audiogen_end)
            feed, codes = [ids.audio_pad, ids.audiogen_end], [last_frame]
        if row.mode == "tts":
            chunk = row.chunks.pop(0) + [ids.audiogen_start]
            row.seq += chunk
            _start_audio(row, feed + chunk)
            row.pending_codes = codes
            return
        row.phase, row.later_text, row.text_new = "text", True, 0
        row.pending, row.pending_codes = feed, codes

    # ------------------------------------------------------------------------------------------------ output
    def _speech_output(self, rows, input_ids, attention_mask, ids, cache, return_waveforms):
        device = input_ids.device
        left = [int((attention_mask[r] == 0).sum()) if input_ids.shape[1] else 0 for r in range(len(rows))]
        lengths = [left[r] + len(row.seq) for r, row in enumerate(rows)]
        pad = ids.pad
        sequences = torch.full((len(rows), max(lengths)), pad, dtype=torch.long, device=device)
        for r, row in enumerate(rows):
            if left[r]:
                sequences[r, : left[r]] = input_ids[r, : left[r]]
            sequences[r, left[r] : lengths[r]] = torch.tensor(row.seq, dtype=torch.long, device=device)
        waveforms = None
        if return_waveforms:
            waveforms = [self.decode_audio_segments(row.segments) for row in rows]
        return BaichuanAudioGenerateOutput(
            sequences=sequences,
            sequence_lengths=torch.tensor(lengths, dtype=torch.long, device=device),
            audio_codes=[row.segments for row in rows],
            waveforms=waveforms,
            cache=cache,
            audio_logits=[row.audio_logits for row in rows] if rows and rows[0].audio_logits is not None else None,
        )

    def decode_audio_segments(
        self, segments: list[torch.Tensor], overlap: int = 240, join: str = "crossfade"
    ) -> torch.Tensor | None:
        """24 kHz waveform of a row's audio segments (each decoded on its own by ``self.code2wav``), joined by
        :func:`join_waveforms` (``join="crossfade"``: overlapped, no sample added; ``"reference"``: the original
        demo's inserted block). Empty segments (an end-of-audio first frame) are skipped. Returns None without
        segments or without ``code2wav``."""
        code2wav = getattr(self, "code2wav", None)
        segments = [s for s in segments if s.shape[0] > 0]
        if code2wav is None or not segments:
            return None
        waves = [_decode_waveform(code2wav, s) for s in segments]
        return join_waveforms(waves, overlap, mode=join)

    def decode_audio(self, codes, **kwargs) -> list[torch.Tensor]:
        """24 kHz waveforms of audio code segments, one per segment (:func:`decode_audio_codes` with
        ``self.code2wav``); ``kwargs`` (``generator``, ``num_steps``, ...) go to ``code2wav.decode`` unchanged."""
        code2wav = getattr(self, "code2wav", None)
        if code2wav is None:
            raise ValueError("this model has no code2wav (enable_audio_output=False): it cannot decode audio codes")
        return decode_audio_codes(code2wav, codes, **kwargs)


def decode_audio_codes(code2wav, codes, **kwargs) -> list[torch.Tensor]:
    """24 kHz waveforms of audio code segments: a thin call to ``code2wav.decode`` (a :class:`BaichuanAudioCode2Wav`).

    ``codes``: one ``(N, C)`` array or a list of them (e.g. the ``codes`` of the processor's ``split_generated``
    segments). Each segment is cut at its first end-of-audio frame (:func:`..audio_codes.cut_at_end_of_audio`, as the
    original's ``decode_wave_vocoder`` does); ``kwargs`` go to ``decode`` unchanged. Returns one 1-D waveform per
    segment (``decode(...).audio_values``).
    """
    sizes = getattr(getattr(code2wav, "config", None), "codebook_sizes", None)
    items = list(codes) if isinstance(codes, (list, tuple)) else [codes]
    out = code2wav.decode([cut_at_end_of_audio(c, sizes) for c in items], **kwargs)
    return list(getattr(out, "audio_values", out))


JOIN_MODES = ("crossfade", "reference")


def crossfade(tail: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """``tail * ramp_down + head * ramp_up`` over their common length (linear ramps from 1 to 0 and 0 to 1)."""
    n = tail.shape[-1]
    down = torch.linspace(1.0, 0.0, n, device=head.device, dtype=head.dtype)
    up = torch.linspace(0.0, 1.0, n, device=head.device, dtype=head.dtype)
    return tail * down + head * up


def join_waveforms(waves: list[torch.Tensor], overlap: int = 240, mode: str = "crossfade") -> torch.Tensor:
    """Join consecutive 1-D waveforms (phrases) with a linear cross-fade of ``overlap`` samples where both
    neighbours are longer than ``overlap`` (elsewhere they are concatenated); empty waveforms are skipped.

    ``mode="crossfade"`` (default): the last ``overlap`` samples of the output so far and the first ``overlap`` of
    the next phrase are overlapped, so the result has ``sum(lengths) - overlap`` samples per cross-faded junction
    and every other sample is a phrase's own sample. ``mode="reference"``: the original demo's ``wave_concat``,
    which keeps both phrases whole and INSERTS the cross-faded block (``overlap`` extra samples per junction,
    a 10 ms repeat at 24 kHz).
    """
    if mode not in JOIN_MODES:
        raise ValueError(f"mode must be one of {JOIN_MODES}, got {mode!r}")
    waves = [w for w in waves if w.shape[-1] > 0]
    if not waves:
        return torch.zeros(0)
    if mode == "reference":
        parts = [waves[0]]
        for prev, wave in zip(waves[:-1], waves[1:]):
            if prev.shape[-1] > overlap and wave.shape[-1] > overlap:
                parts.append(crossfade(prev[-overlap:], wave[:overlap]))
            parts.append(wave)
        return torch.cat(parts)
    out = waves[0]
    for prev, wave in zip(waves[:-1], waves[1:]):
        if prev.shape[-1] > overlap and wave.shape[-1] > overlap:
            out = torch.cat([out[:-overlap], crossfade(out[-overlap:], wave[:overlap]), wave[overlap:]])
        else:
            out = torch.cat([out, wave])
    return out


def _decode_waveform(code2wav, codes: torch.Tensor) -> torch.Tensor:
    return code2wav.decode(codes.to(code2wav.device)).audio_values[0].reshape(-1)


# ---------------------------------------------------------------------------------------------------- helpers
class _SpecialIds:
    def __init__(self, cfg, settings: _Settings):
        self.audiogen_start = int(cfg.audiogen_start_token_id)
        self.audiogen_end = int(cfg.audiogen_end_token_id)
        self.audio_pad = int(cfg.audio_pad_token_id)
        eos = settings.eos_token_id if settings.eos_token_id is not None else cfg.eos_token_id
        self.eos = _as_list(eos)
        if not self.eos:
            raise ValueError("an eos_token_id is needed for speech generation")
        pad = settings.pad_token_id if settings.pad_token_id is not None else cfg.pad_token_id
        self.pad = int(pad) if pad is not None else self.eos[0]
        self.specials = {self.audiogen_start, self.audiogen_end, self.audio_pad, *self.eos}


class _StopChecker:
    """Stop strings on decoded text for the later text segments (``later_text_stop_strings``; needs a tokenizer).

    Same rule as transformers' ``StopStringCriteria`` (which the original ``generate`` used): a segment stops when
    the newest token completes a stop string, i.e. the string occurs in the decoded tail of the sequence and ends
    inside the newest token's text (``'. '`` therefore needs the space). ``<audiogen_start>`` and end-of-text are
    checked by id. Decoding a short tail per step avoids ``StopStringCriteria``'s vocabulary preprocessing.
    """

    def __init__(self, tokenizer, settings: _Settings, window: int = 8):
        self.tokenizer = tokenizer
        self.strings = [s for s in (settings.later_text_stop_strings or []) if s]
        self.window = window + max((len(s) for s in self.strings), default=0)

    def stopped(self, seq: list[int], later: bool) -> bool:
        if not later or self.tokenizer is None or not self.strings:
            return False
        tail = seq[-self.window :]
        text = self.tokenizer.decode(tail, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        before = self.tokenizer.decode(tail[:-1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        common = 0  # text shared with the sequence before the newest token
        while common < min(len(text), len(before)) and text[common] == before[common]:
            common += 1
        return any(text.find(s, max(0, common - len(s) + 1)) != -1 for s in self.strings)


def _tokenize_chunks(tts_chunks, tokenizer):
    """Strings in ``tts_chunks`` (a row's whole text, or its chunks) -> token-id chunks (needs the tokenizer)."""
    if tts_chunks is None:
        return None
    out = []
    for row in tts_chunks:
        if isinstance(row, str):
            row = split_tts_text(row)
        if any(isinstance(chunk, str) for chunk in row):
            if tokenizer is None:
                raise ValueError("text in tts_chunks needs `tokenizer`")
            row = [tokenizer.encode(c, add_special_tokens=False) if isinstance(c, str) else c for c in row]
        out.append(row)
    return out


def _initial_rows(input_ids, attention_mask, cached, modes, tts_chunks, ids, output_audio_logits) -> list[_Row]:
    """Per-row state before the first step: the logical sequence (prompt without padding, + the first TTS chunk),
    the tokens to feed (those not in the cache) and the starting phase (audio after a final ``<audiogen_start>``)."""
    rows = []
    for r, mode in enumerate(modes):
        valid = input_ids[r][attention_mask[r].bool()].tolist()
        row = _Row(mode=mode, seq=list(valid), audio_logits=[] if output_audio_logits else None)
        fed_prefix = int(attention_mask[r, :cached].sum())
        row.pending = list(valid[fed_prefix:])
        if mode == "tts":
            chunks = [_as_list(c) for c in (tts_chunks[r] if tts_chunks is not None else [])]
            if chunks:
                first = chunks[0] + [ids.audiogen_start]
                row.seq += first
                row.pending += first
                row.chunks = chunks[1:]
            if not row.seq or row.seq[-1] != ids.audiogen_start:
                raise ValueError("a 'tts' row needs tts_chunks or a prompt ending with <audiogen_start>")
        if not row.pending:
            raise ValueError("nothing to feed: the cache already covers the whole prompt of a row")
        row.phase = "audio" if mode != "text" and row.seq[-1] == ids.audiogen_start else "text"
        rows.append(row)
    return rows


def _suppressed_text_tokens(cfg, ids: _SpecialIds, suppress_audio_tokens: bool) -> dict[str, list[int]]:
    """Token ids a text phase never samples, for ``"chat"`` rows and for ``"text"`` rows (see
    :data:`AUDIO_BLOCK_TOKEN_FIELDS`)."""
    if not suppress_audio_tokens:
        return {"chat": [ids.audio_pad], "text": [ids.audio_pad]}
    block = sorted(
        {int(getattr(cfg, name)) for name in AUDIO_BLOCK_TOKEN_FIELDS if getattr(cfg, name, None) is not None}
    )
    return {"chat": block, "text": sorted({*block, ids.audiogen_start})}


def _start_audio(row: _Row, feed: list[int]) -> None:
    row.phase, row.frames = "audio", []
    row.pending, row.pending_codes = feed, []


def _build_step(rows: list[_Row], ids: _SpecialIds, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Left-pad every row's pending tokens to a common width: (B, q) ids, (B, q) mask, (N, K) codes or None."""
    width = max(len(row.pending) for row in rows if row.phase != "done") if rows else 1
    step_ids = torch.full((len(rows), width), ids.pad, dtype=torch.long)
    step_mask = torch.zeros((len(rows), width), dtype=torch.long)
    codes = []
    for r, row in enumerate(rows):
        if row.phase == "done" or not row.pending:
            continue
        n = len(row.pending)
        step_ids[r, width - n :] = torch.tensor(row.pending, dtype=torch.long)
        step_mask[r, width - n :] = 1
        codes.extend(row.pending_codes)
        row.pending, row.pending_codes = [], []
    step_codes = torch.stack(codes).to(device) if codes else None
    return step_ids.to(device), step_mask.to(device), step_codes


def _new_cache(cfg, implementation, max_len, device) -> Cache:
    """The LLM KV cache of one call: dynamic (default), or a preallocated ``StaticCache`` of fixed shape
    (``cache_implementation="static"``, for ``torch.compile`` / CUDA graphs) of ``static_cache_max_len`` positions
    (default: the LLM's ``max_position_embeddings``)."""
    text_config = cfg.get_text_config()
    if implementation in (None, "dynamic"):
        return DynamicCache(config=text_config)
    if implementation != "static":
        raise ValueError(f"cache_implementation must be 'dynamic' or 'static', got {implementation!r}")
    from transformers import StaticCache

    return StaticCache(config=text_config, max_cache_len=max_len or text_config.max_position_embeddings)


def _pad_histories(seqs: list[list[int]], device) -> torch.Tensor:
    """(n, max_len) ids, right-padded with :data:`IGNORED_ID` (ignored by the repetition penalty)."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), IGNORED_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out.to(device)


def _pad_frames(frames: list[list[torch.Tensor]], num_codebooks: int, device) -> torch.Tensor:
    """(n, max_frames, K) codes of the current segments, right-padded with :data:`IGNORED_ID`."""
    width = max(len(f) for f in frames)
    out = torch.full((len(frames), width, num_codebooks), IGNORED_ID, dtype=torch.long, device=device)
    for i, f in enumerate(frames):
        if f:
            out[i, : len(f)] = torch.stack(f).to(device)
    return out


__all__ = [
    "AUDIO_BLOCK_TOKEN_FIELDS",
    "BaichuanAudioGenerationMixin",
    "BaichuanAudioGenerateOutput",
    "PromptTooLongError",
    "SPEECH_GENERATION_DEFAULTS",
    "check_prompt_length",
    "crossfade",
    "decode_audio_codes",
    "split_tts_text",
    "join_waveforms",
]
