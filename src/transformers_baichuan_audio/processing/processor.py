"""``BaichuanAudioProcessor``: conversations with speech in and speech out, in the released prompt format.

Prompt layout (the released speech-chat demo, see ``chat_template.jinja``)::

    <B_SYS>{system}<C_Q>{user}[<audiotext_start_baichuan>]<C_A>{assistant}...[<audiotext_start_baichuan>]<C_A>

Audio in the text
    Every audio block in a text is a *placeholder* that :meth:`BaichuanAudioProcessor.__call__` expands to one
    ``<audio_pad_baichuan>`` per 12.5 Hz frame:

    * ``<audio_start_baichuan><audio_pad_baichuan><audio_end_baichuan>``: input speech. Consumes the next waveform of
      ``audio``; the waveform is split into 30 s pieces and turned into log-mel features by the feature extractor,
      and the block gets ``sum(bridge_length)`` pads over its pieces.
    * ``<audiogen_start_baichuan><audio_pad_baichuan><audiogen_end_baichuan>``: speech the assistant said earlier.
      Consumes the next item of ``audio_codes`` (an ``(N, num_codebooks)`` integer array: the codes the model
      generated, N pads, no re-encoding). When ``audio_codes`` is not given at all, it consumes the next waveform of
      ``audio`` instead (the original demo's wav round trip: the 24 kHz answer is re-loaded and re-tokenised).
    * A block may also hold the original JSON form ``{"path": "file.wav"}`` (``processor_omni`` compatibility): the
      file is loaded (resampled to 16 kHz) and expanded like a waveform.
    * A block already expanded to the right number of pads is accepted unchanged.

    Waveforms and codes are consumed in text order, row after row of the batch.

Outputs (``BatchFeature``)
    ``input_ids`` / ``attention_mask`` (padded, ``padding_side="left"`` by default for generation; ``"right"`` for
    training), and when waveforms were given ``input_features`` ``(n_pieces, n_mels, T)`` (right zero padded),
    ``encoder_length`` / ``bridge_length`` ``(n_pieces,)`` (the pieces of all clips in order; a clip's block has
    the sum of its pieces' ``bridge_length`` pads).
    When ``audio_codes`` were given, ``audio_codes`` ``(n_pads, num_codebooks)`` int64 holds one row per
    ``<audio_pad_baichuan>`` of the whole batch in pad order (row-major over ``input_ids``); the rows of pads that
    belong to waveform blocks are ``-1`` and must be filled, in order, with the codes the audio tokenizer computes
    from ``input_features``: ``codes[codes[:, 0] < 0] = audio_tokenizer(input_features, ...)``
    (:func:`transformers_baichuan_audio.audio_codes.fill_audio_codes`; the model does it).
    ``apply_chat_template(..., return_assistant_tokens_mask=True)`` also returns ``assistant_masks`` (assistant
    text and every token of the assistant's audio blocks).

Security
    Text given to :meth:`__call__` is trusted: special-token strings in it ARE control tokens (that is how the
    template and the original format write them). User content must go through :meth:`apply_chat_template`, which
    sanitizes by default (whenever ``tokenize=True``): every added-token string (all of them, special or not) that
    appears in a message, in the system prompt or in a template variable such as ``voice`` is wrapped in private-use
    markers and encoded as plain text (the tokenizer's normalizer + pre-tokenizer + BPE only), so it can never become
    a control id; the text itself is kept (escaping, not rejecting). Text assembled by hand can be escaped with
    :meth:`escape_text` (:meth:`tts_prompt` does it). ``apply_chat_template(tokenize=False)`` returns the string for
    display only.

Output side
    :meth:`split_generated` splits a generated sequence into text and audio segments (with their codes),
    :meth:`to_assistant_message` turns them into the next turn's assistant message (codes, no wav round trip),
    :func:`save_wav` writes a wav file and :meth:`batch_decode` gives the text. Turning codes into waveforms is the
    model's job (``model.decode_audio(codes)``; the processor never needs the model).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack

from .audio_io import (  # re-exported: files in / out, the shared audio content part, the sampling rates
    INPUT_SAMPLING_RATE,
    OUTPUT_SAMPLING_RATE,
    InvalidAudioError,
    audio_part_source,
    check_sampling_rate,
    read_audio_file,
    save_wav,
)

SYSTEM_TOKEN = "<B_SYS>"
USER_TOKEN = "<C_Q>"
ASSISTANT_TOKEN = "<C_A>"
AUDIO_START_TOKEN = "<audio_start_baichuan>"
AUDIO_END_TOKEN = "<audio_end_baichuan>"
AUDIO_PAD_TOKEN = "<audio_pad_baichuan>"
AUDIO_DELIM_TOKEN = "<audio_delim_baichuan>"
AUDIOTEXT_START_TOKEN = "<audiotext_start_baichuan>"
AUDIOTEXT_END_TOKEN = "<audiotext_end_baichuan>"
AUDIOTEXT_PAD_TOKEN = "<audiotext_pad_baichuan>"
AUDIOGEN_START_TOKEN = "<audiogen_start_baichuan>"
AUDIOGEN_END_TOKEN = "<audiogen_end_baichuan>"

#: name -> token string of every Baichuan token the processor uses (``processor.<name>`` / ``processor.<name>_id``).
SPECIAL_TOKENS: dict[str, str] = {
    "system_token": SYSTEM_TOKEN,
    "user_token": USER_TOKEN,
    "assistant_token": ASSISTANT_TOKEN,
    "audio_start_token": AUDIO_START_TOKEN,
    "audio_end_token": AUDIO_END_TOKEN,
    "audio_pad_token": AUDIO_PAD_TOKEN,
    "audio_delim_token": AUDIO_DELIM_TOKEN,
    "audiotext_start_token": AUDIOTEXT_START_TOKEN,
    "audiotext_end_token": AUDIOTEXT_END_TOKEN,
    "audiotext_pad_token": AUDIOTEXT_PAD_TOKEN,
    "audiogen_start_token": AUDIOGEN_START_TOKEN,
    "audiogen_end_token": AUDIOGEN_END_TOKEN,
}

DEFAULT_VOICE = "邻家女声"
VOICE_PROMPT = "请用【{voice}】这个声音回答问题。"
ASR_PROMPT = "将语音转录为文本:"

_CHAT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")
#: Sanitize markers: private-use code points wrapped around every added-token string found in untrusted text, so
#: that ``__call__`` encodes that string as plain text (our own escaping, built on the tokenizer's public list of
#: added tokens; the same code points as transformers' chat sanitizer).
ESCAPE_START = "\U000f0000"
ESCAPE_END = "\U000f0001"
_MARKERS = ESCAPE_START + ESCAPE_END
# An audio block: start tag, content without another start tag, matching end tag. A tag written right after a
# sanitize marker comes from user text and never opens a block.
_BLOCK_RE = re.compile(
    rf"(?<!{ESCAPE_START})(?P<tag>{re.escape(AUDIO_START_TOKEN)}|{re.escape(AUDIOGEN_START_TOKEN)})"
    rf"(?P<inner>(?:(?!{re.escape(AUDIO_START_TOKEN)}|{re.escape(AUDIOGEN_START_TOKEN)}).)*?)"
    rf"(?<!{ESCAPE_START})(?P<end>{re.escape(AUDIO_END_TOKEN)}|{re.escape(AUDIOGEN_END_TOKEN)})",
    re.S,
)


def added_tokens_pattern(tokens) -> re.Pattern:
    """Regex matching any of ``tokens`` (added-token strings), longest first so that a token wins over the tokens it
    contains; matches nothing when there are none."""
    return re.compile("|".join(map(re.escape, sorted(tokens, key=len, reverse=True))) or "(?!)")


def escape_added_tokens(obj: Any, tokens_re: re.Pattern) -> Any:
    """Wrap every match of ``tokens_re`` in the strings of ``obj`` (a string, or dicts / lists of them, e.g.
    messages; dict keys are left alone) in :data:`ESCAPE_START` / :data:`ESCAPE_END`. Markers already in a string
    are dropped first, so user text cannot forge an escaped token."""
    if isinstance(obj, str):
        obj = obj.replace(ESCAPE_START, "").replace(ESCAPE_END, "")
        return tokens_re.sub(ESCAPE_START + r"\g<0>" + ESCAPE_END, obj)
    if isinstance(obj, dict):
        return {key: escape_added_tokens(value, tokens_re) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [escape_added_tokens(value, tokens_re) for value in obj]
    return obj


def default_chat_template() -> str:
    """The packaged Jinja chat template (``chat_template.jinja``)."""
    return _CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")


def voice_prompt(voice: str = DEFAULT_VOICE) -> str:
    """The system prompt the released model was trained with to pick a voice, e.g. ``请用【邻家女声】这个声音回答问题。``."""
    return VOICE_PROMPT.format(voice=voice)


class BaichuanAudioProcessorKwargs(ProcessingKwargs, total=False):
    """Keyword arguments of :meth:`BaichuanAudioProcessor.__call__` (transformers' ``ProcessingKwargs``).

    Given per modality (``text_kwargs={"padding_side": "right"}``, ``audio_kwargs={"sampling_rate": 8000}``) or
    flat (``padding_side="right"``, ``sampling_rate=8000``; a flat key goes to the modality that honours it, and a
    key given both ways with different values is an error). Honoured:

    * text: ``padding``, ``padding_side``, ``max_length``, ``pad_to_multiple_of`` (passed to the tokenizer's
      ``pad``), ``return_tensors``, ``return_offsets_mapping``; defaults: :attr:`BaichuanAudioProcessor.text_kwargs`.
    * audio: ``sampling_rate`` (rate of array waveforms; the feature extractor resamples them).
    * accepted and ignored (``apply_chat_template`` passes them): ``add_special_tokens`` (the prompt format has no
      BOS/EOS), ``sanitize_control_tokens`` (the processor escapes control tokens itself),
      ``return_text_replacement_offsets`` (offsets already point into the unexpanded text).

    Every other key, including the ``TextKwargs`` / ``AudioKwargs`` keys listed nowhere above (e.g. ``truncation``,
    which would cut audio blocks), raises ``TypeError``.
    """


#: The keys of each modality's kwargs that :meth:`BaichuanAudioProcessor.__call__` honours (all named in
#: transformers' ``TextKwargs`` / ``AudioKwargs``), and the ones it accepts and ignores.
SUPPORTED_KWARGS: dict[str, tuple[str, ...]] = {
    "text_kwargs": (
        "padding",
        "padding_side",
        "max_length",
        "pad_to_multiple_of",
        "return_tensors",
        "return_offsets_mapping",
    ),
    "audio_kwargs": ("sampling_rate",),
}
IGNORED_KWARGS = ("add_special_tokens", "sanitize_control_tokens", "return_text_replacement_offsets")


class BaichuanAudioProcessor(ProcessorMixin):
    r"""Processor of Baichuan-Audio: the feature extractor (16 kHz speech -> log-mel pieces) and the Qwen2 tokenizer
    with the Baichuan special tokens, plus the chat template of the released speech-chat demo.

    See the module docstring for the placeholder rules, the outputs and the security model. Token ids are always
    read from the tokenizer (``processor.audio_pad_token_id`` ...), never hard-coded.

    Args:
        feature_extractor ([`BaichuanAudioFeatureExtractor`]): speech front end.
        tokenizer ([`Qwen2Tokenizer`]): tokenizer that knows the Baichuan special tokens.
        chat_template (`str`, *optional*): Jinja template; defaults to the packaged ``chat_template.jinja``.
    """

    valid_processor_kwargs = BaichuanAudioProcessorKwargs
    #: Defaults of the text kwargs (transformers' processor-level defaults): left padding for generation, tensors.
    text_kwargs = {"padding": True, "padding_side": "left", "return_tensors": "pt", "return_offsets_mapping": False}
    audio_kwargs = {"sampling_rate": None}  # None: the feature extractor's rate

    def __init__(self, feature_extractor=None, tokenizer=None, chat_template=None):
        if chat_template is None:
            chat_template = default_chat_template()
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)
        missing = [tok for tok in SPECIAL_TOKENS.values() if self._token_id(tok) is None]
        if missing:
            raise ValueError(f"the tokenizer does not know the Baichuan special tokens {missing}")
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token (<|endoftext|> in the released checkpoints)")

    # ------------------------------------------------------------------ tokens
    def _token_id(self, token: str) -> int | None:
        idx = self.tokenizer.convert_tokens_to_ids(token)
        if idx is None or self.tokenizer.convert_ids_to_tokens(idx) != token:
            return None
        return int(idx)

    def __getattr__(self, name: str):
        # processor.audio_pad_token -> "<audio_pad_baichuan>", processor.audio_pad_token_id -> its id in the tokenizer
        if name in SPECIAL_TOKENS:
            return SPECIAL_TOKENS[name]
        if name.endswith("_id") and name[:-3] in SPECIAL_TOKENS and "tokenizer" in self.__dict__:
            return self._token_id(SPECIAL_TOKENS[name[:-3]])
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def special_token_ids(self) -> dict[str, int]:
        """``{"audio_pad_token_id": ..., ...}`` for every Baichuan token, read from the tokenizer."""
        return {f"{name}_id": self._token_id(tok) for name, tok in SPECIAL_TOKENS.items()}

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features", "encoder_length", "bridge_length", "audio_codes"]

    def _control_tokens_re(self) -> re.Pattern:
        return added_tokens_pattern(self.tokenizer.added_tokens_encoder)

    def escape_text(self, text: str) -> str:
        """Mark every special-token string in ``text`` so that :meth:`__call__` encodes it as plain text."""
        return escape_added_tokens(text, self._control_tokens_re())

    # ----------------------------------------------------------------- prompts
    def asr_prompt(self) -> str:
        """Base-model ASR prompt (``将语音转录为文本:`` + one input-audio placeholder); generate text after it."""
        return ASR_PROMPT + AUDIO_START_TOKEN + AUDIO_PAD_TOKEN + AUDIO_END_TOKEN

    def tts_prompt(self, text: str) -> str:
        """Base-model TTS prompt: the (escaped) text followed by ``<audiogen_start_baichuan>``; generate audio after it.

        Later chunks of the same utterance continue the sequence: replace its last token by
        ``<audiogen_end_baichuan>`` and append the next ``tts_prompt`` (the ITTS layout ``t1<ag_s>a1<ag_e>t2<ag_s>``).
        """
        return self.escape_text(text) + AUDIOGEN_START_TOKEN

    def asr(self, audio, sampling_rate: int | None = None, **kwargs) -> BatchFeature:
        """Model inputs for base-model ASR of one waveform or a list of them (one prompt each)."""
        clips = audio if isinstance(audio, (list, tuple)) else [audio]
        if sampling_rate is not None:
            kwargs["sampling_rate"] = sampling_rate
        return self(text=[self.asr_prompt()] * len(clips), audio=list(clips), **kwargs)

    def tts(self, text: str | Sequence[str], **kwargs) -> BatchFeature:
        """Model inputs for base-model TTS of one text chunk or a batch of chunks (chunk a long text like the demo with
        ``transformers_baichuan_audio.modeling.generation.split_tts_text``)."""
        texts = [text] if isinstance(text, str) else list(text)
        return self(text=[self.tts_prompt(t) for t in texts], **kwargs)

    def apply_chat_template(self, conversation, chat_template: str | None = None, **kwargs):
        """Render (and by default with ``tokenize=True`` also tokenize) conversations.

        Content parts: ``{"type": "text", "text": ...}``, ``{"type": "audio", "audio"|"path"|"url": ...}`` or
        ``{"type": "audio", "array": ..., "sampling_rate": ...}`` (the training format, :mod:`.audio_io`; input
        speech in user/system turns; in assistant turns: earlier spoken answer given as a waveform, re-encoded),
        ``{"type": "audio_codes", "codes": (N, num_codebooks)}`` (assistant turns: codes the model generated). Template
        variables: ``audio_output=True`` (ask for a spoken answer: ``<audiotext_start_baichuan>`` before every
        ``<C_A>``), ``voice="..."`` (voice system prompt; the default voice is used when there is no system
        message), ``add_generation_prompt``. ``sanitize_control_tokens`` defaults to ``tokenize``.
        Codes and waveforms cannot both be used for assistant speech in one call.

        Limits: audio takes 12.5 positions per second (a 30 s piece: 375) and the model's context is
        ``max_position_embeddings`` positions (8,192 in the default config, 4,096 in ``.tiny()``); the processor
        does not know the model, ``generate`` refuses a longer prompt with ``PromptTooLongError`` before any forward.
        Audio files: a missing file raises ``FileNotFoundError``, an unreadable one ``InvalidAudioError`` (see
        :mod:`.audio_io`).

        With ``tokenize=True`` every added-token string found in the messages or in the template variables (e.g.
        ``voice``) is encoded as plain text (``sanitize_control_tokens=True``, the default then); pass
        ``sanitize_control_tokens=False`` only for trusted conversations that deliberately write control tokens.
        """
        tokenize = kwargs.get("tokenize", False)
        sanitize = kwargs.pop("sanitize_control_tokens", None)
        if sanitize is None:
            sanitize = bool(tokenize) and not kwargs.get("return_assistant_tokens_mask")
        if sanitize and not tokenize:
            raise ValueError("sanitize_control_tokens=True needs tokenize=True")
        if tokenize:
            # audio parts are loaded here at the model rate (files at their own rate, arrays at their part's
            # "sampling_rate" or the given sampling_rate), so the processor call below gets the model rate
            fe_rate = int(getattr(self.feature_extractor, "sampling_rate", INPUT_SAMPLING_RATE))
            processor_kwargs = dict(kwargs.pop("processor_kwargs", None) or {})
            audio_kwargs = dict(processor_kwargs.pop("audio_kwargs", None) or {})
            array_rate = (
                kwargs.pop("sampling_rate", None)
                or processor_kwargs.get("sampling_rate")
                or audio_kwargs.pop("sampling_rate", None)
                or fe_rate
            )
            array_rate = check_sampling_rate(array_rate, "sampling_rate")
            processor_kwargs["sampling_rate"] = fe_rate
            if audio_kwargs:
                processor_kwargs["audio_kwargs"] = audio_kwargs
            kwargs["processor_kwargs"] = processor_kwargs
            is_batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
            conversations = [
                self._load_conversation_audio(c, array_rate) for c in (conversation if is_batched else [conversation])
            ]
            if sanitize:
                # Mark every added-token string of the user's strings ourselves (all 59 added tokens, also the
                # non-special ones the tokenizer's own sanitizer leaves alone); __call__ encodes them as plain text.
                control_re = self._control_tokens_re()
                conversations = [escape_added_tokens(c, control_re) for c in conversations]
                kwargs = {k: escape_added_tokens(v, control_re) if isinstance(v, str) else v for k, v in kwargs.items()}
            conversation = conversations if is_batched else conversations[0]
            codes, assistant_waves = [], 0
            for conv in conversations:
                for message in conv:
                    content = message.get("content")
                    if isinstance(content, str) or not content:
                        continue
                    for part in content:
                        if part.get("type") == "audio_codes":
                            codes.append(part["codes"])
                        elif part.get("type") == "audio" and message.get("role") == "assistant":
                            assistant_waves += 1
            if codes and assistant_waves:
                raise ValueError("assistant speech given both as codes and as waveforms: use one form per call")
            if codes:
                processor_kwargs["audio_codes"] = codes
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    def _load_conversation_audio(self, conversation: list[dict], array_rate: int) -> list[dict]:
        """Copy of a conversation whose audio parts hold mono arrays at the model rate (files read at their own rate;
        arrays taken at ``part["sampling_rate"]``, default ``array_rate``; resampled with the feature extractor's sinc
        resampler)."""
        out = []
        for message in conversation:
            content = message.get("content")
            if isinstance(content, (list, tuple)):
                parts = []
                for part in content:
                    if isinstance(part, dict) and part.get("type") == "audio":
                        # the one content-part format of inference and training (audio_io.audio_part_source)
                        kind, source = audio_part_source(part, default_rate=array_rate)
                        if kind == "codes":
                            raise ValueError("an audio part with 'codes' must have type 'audio_codes'")
                        part = {"type": "audio", "audio": self.feature_extractor.prepare_waveform(*source)}
                    parts.append(part)
                message = {**message, "content": parts}
            out.append(message)
        return out

    # -------------------------------------------------------------------- call
    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        audio=None,
        audio_codes=None,
        *,
        images=None,
        videos=None,
        **kwargs: Unpack[BaichuanAudioProcessorKwargs],
    ) -> BatchFeature:
        """Tokenize texts with audio placeholders, expand them and extract the audio features.

        Args:
            text: one prompt or a batch of prompts (trusted text: special-token strings are control tokens).
            audio: waveforms (1-D arrays/tensors at ``sampling_rate``, ``{"array", "sampling_rate"}`` dicts, or file
                paths/URLs), one per audio placeholder, in text order over the whole batch.
            audio_codes: ``(N_i, num_codebooks)`` integer arrays, one per ``<audiogen_start>`` placeholder.
            **kwargs: :class:`BaichuanAudioProcessorKwargs`, flat or as ``text_kwargs`` / ``audio_kwargs``:

                * ``sampling_rate``: rate of the array waveforms (default: the feature extractor's, 16 kHz); other
                  rates are resampled by the feature extractor (the original's sinc resampler).
                * ``padding`` / ``padding_side`` / ``max_length`` / ``pad_to_multiple_of``: batch padding
                  (``padding_side="left"`` by default, for generation; ``"right"`` for training). There is no
                  truncation (it would cut audio blocks).
                * ``return_tensors``: ``"pt"`` (default) or ``None`` (python lists for ids and mask).
                * ``return_offsets_mapping``: also return ``offset_mapping`` (per token ``(start, end)`` characters
                  of the text; every token of an audio block spans the whole placeholder block; padding
                  ``(0, 0)``). Used by ``apply_chat_template(..., return_assistant_tokens_mask=True)``.

                Any other key raises ``TypeError``.
        """
        if images is not None or videos is not None:
            raise ValueError("Baichuan-Audio takes text and audio only")
        text_kwargs, audio_kwargs = self.merge_call_kwargs(kwargs)
        padding_side = text_kwargs["padding_side"]
        return_tensors = text_kwargs["return_tensors"]
        if text is None:
            raise ValueError("text is required (use asr_prompt()/tts_prompt() or apply_chat_template)")
        texts = [text] if isinstance(text, str) else list(text)
        fe_rate = int(getattr(self.feature_extractor, "sampling_rate", INPUT_SAMPLING_RATE))
        sampling_rate = check_sampling_rate(audio_kwargs["sampling_rate"] or fe_rate, "sampling_rate")
        waves = self._waveform_iter(audio, sampling_rate)
        codes_iter = iter([self._as_codes(c) for c in audio_codes]) if audio_codes is not None else None

        parsed, clips = self._parse(texts, waves, codes_iter)
        data, frames_per_clip = self._extract_features(clips, fe_rate)
        all_ids, all_offsets, code_rows = [], [], []
        for items in parsed:
            ids, offsets = self._sample_ids(items, frames_per_clip, code_rows)
            all_ids.append(ids)
            all_offsets.append(offsets)

        padded = self.tokenizer.pad(
            {"input_ids": all_ids},
            padding=text_kwargs["padding"],
            padding_side=padding_side,
            max_length=text_kwargs.get("max_length"),
            pad_to_multiple_of=text_kwargs.get("pad_to_multiple_of"),
            return_attention_mask=True,
            return_tensors=return_tensors,
        )
        data["input_ids"] = padded["input_ids"]
        data["attention_mask"] = padded["attention_mask"]
        if text_kwargs["return_offsets_mapping"]:
            width = len(padded["input_ids"][0])
            pad = [[(0, 0)] * (width - len(o)) for o in all_offsets]
            data["offset_mapping"] = [
                p + o if padding_side == "left" else o + p for p, o in zip(pad, all_offsets, strict=True)
            ]
        given = [r for r in code_rows if isinstance(r, torch.Tensor)]
        if given:
            num_codebooks = given[0].shape[1]
            if any(c.shape[1] != num_codebooks for c in given):
                raise ValueError("all audio_codes items need the same number of codebooks")
            rows = [r if isinstance(r, torch.Tensor) else torch.full((r, num_codebooks), -1) for r in code_rows]
            data["audio_codes"] = torch.cat(rows, dim=0).long()
        return BatchFeature(data=data)

    def merge_call_kwargs(self, kwargs: dict) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(text_kwargs, audio_kwargs)`` of a :meth:`__call__`: the processor's defaults (:attr:`text_kwargs`,
        :attr:`audio_kwargs`), updated by the ``text_kwargs`` / ``audio_kwargs`` dicts, updated by the flat keys
        (each goes to the modality that honours it). ``TypeError`` for a key this processor does not honour
        (see :class:`BaichuanAudioProcessorKwargs`), ``ValueError`` for a key given flat and nested with different
        values. Merged here on the public pieces (the typed dicts and the processor's defaults), not with
        transformers' underscore-named merge."""
        kwargs = dict(kwargs)
        merged = {name: dict(getattr(self, name)) for name in SUPPORTED_KWARGS}
        unknown: list[str] = []
        for name in ("images_kwargs", "videos_kwargs"):
            if kwargs.pop(name, None):
                raise ValueError("Baichuan-Audio takes text and audio only")
        for name, supported in SUPPORTED_KWARGS.items():
            nested = kwargs.pop(name, None) or {}
            for key, value in nested.items():
                if key in IGNORED_KWARGS:
                    continue
                if key not in supported:
                    unknown.append(f"{name}[{key!r}]")
                elif key in kwargs and kwargs[key] is not value and kwargs[key] != value:
                    raise ValueError(f"{key!r} was given twice, in {name} and as a keyword argument")
                merged[name][key] = value
        for key, value in kwargs.items():
            name = next((n for n, supported in SUPPORTED_KWARGS.items() if key in supported), None)
            if name is not None:
                merged[name][key] = value
            elif key not in IGNORED_KWARGS:
                unknown.append(repr(key))
        if unknown:
            honoured = sorted(k for keys in SUPPORTED_KWARGS.values() for k in keys)
            raise TypeError(
                f"unexpected arguments [{', '.join(sorted(unknown))}]: {type(self).__name__} takes {honoured} "
                "(flat, or in text_kwargs / audio_kwargs)"
            )
        return merged["text_kwargs"], merged["audio_kwargs"]

    def _parse(self, texts: list[str], waves: Iterator, codes_iter: Iterator | None) -> tuple[list[list], list]:
        """Split each text into text pieces ``("text", str, start)`` and audio blocks ``("block", is_gen, source,
        given_pads, (start, end))``; ``source`` is a clip index (int) or a codes tensor. Returns (items per text,
        clips ``(waveform, rate)``)."""
        parsed, clips = [], []
        for sample in texts:
            items, pos = [], 0
            for m in _BLOCK_RE.finditer(sample):
                is_gen = m.group("tag") == AUDIOGEN_START_TOKEN
                if (m.group("end") == AUDIOGEN_END_TOKEN) != is_gen:
                    raise ValueError(f"audio block {m.group('tag')} closed by {m.group('end')}")
                items.append(("text", sample[pos : m.start()], pos))
                given_pads = self._placeholder_pads(m.group("inner"))
                if given_pads is None:  # the original's JSON form
                    clips.append(self._load_json_audio(m.group("inner")))
                    source = len(clips) - 1
                elif is_gen and codes_iter is not None:
                    source = next(codes_iter, None)
                    if source is None:
                        raise ValueError("more <audiogen_start> placeholders than audio_codes items")
                else:
                    wave = next(waves, None)
                    if wave is None:
                        raise ValueError("more audio placeholders than audio waveforms")
                    clips.append(wave)
                    source = len(clips) - 1
                items.append(("block", is_gen, source, given_pads, m.span()))
                pos = m.end()
            items.append(("text", sample[pos:], pos))
            parsed.append(items)
        if next(waves, None) is not None:
            raise ValueError("more audio waveforms than audio placeholders in the text")
        if codes_iter is not None and next(codes_iter, None) is not None:
            raise ValueError("more audio_codes items than <audiogen_start> placeholders in the text")
        return parsed, clips

    def _extract_features(self, clips: list, fe_rate: int) -> tuple[dict[str, Any], list[int]]:
        """Feature-extractor outputs of all clips and the number of frames (pads) of each clip."""
        if not clips:
            return {}, []
        # every clip to mono at the model rate with the extractor's (torchaudio-equivalent) resampler
        waveforms = [self.feature_extractor.prepare_waveform(wav, rate) for wav, rate in clips]
        feats = self.feature_extractor(waveforms, sampling_rate=fe_rate, return_tensors="pt")
        bridge = [int(b) for b in feats["bridge_length"].tolist()]
        frames, start = [], 0
        for n in feats["audio_pieces"].tolist():
            frames.append(sum(bridge[start : start + int(n)]))
            start += int(n)
        # audio_pieces (pieces per clip) is not returned: model(**inputs) must only see what forward takes
        keys = ("input_features", "encoder_length", "bridge_length")
        return {k: feats[k] for k in keys}, frames

    def _sample_ids(self, items: list, frames_per_clip: list[int], code_rows: list) -> tuple[list[int], list]:
        """Token ids (and character offsets) of one parsed text; appends each block's code rows (a codes tensor, or
        the number of frames the audio tokenizer will compute) to ``code_rows``."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        pad_id = self.audio_pad_token_id
        for item in items:
            if item[0] == "text":
                piece_ids, piece_offsets = self._encode_text(item[1], item[2])
                ids += piece_ids
                offsets += piece_offsets
                continue
            _, is_gen, source, given, span = item
            if isinstance(source, torch.Tensor):
                n = source.shape[0]
                code_rows.append(source)
            else:
                n = frames_per_clip[source]
                code_rows.append(n)
            if given not in (None, 0, 1) and given != n:
                raise ValueError(f"an expanded audio block has {given} pads but its audio has {n} frames")
            start_id = self.audiogen_start_token_id if is_gen else self.audio_start_token_id
            end_id = self.audiogen_end_token_id if is_gen else self.audio_end_token_id
            ids += [start_id] + [pad_id] * n + [end_id]
            offsets += [span] * (n + 2)
        return ids, offsets

    # ------------------------------------------------------------- internals
    def _encode_text(self, piece: str, offset: int = 0) -> tuple[list[int], list[tuple[int, int]]]:
        """Encode trusted text -> (ids, character offsets + ``offset``). Control tokens wrapped in sanitize markers
        are encoded as plain text and lone markers are dropped (they still separate the text on both sides, so those
        sides cannot join into a control token)."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        if not piece:
            return ids, offsets
        if any(ch in piece for ch in _MARKERS):
            tokens = self._control_tokens_re().pattern
            markers_re = re.compile(f"{ESCAPE_START}({tokens}){ESCAPE_END}|[{_MARKERS}]")
            pos = 0
            for i, part in enumerate(markers_re.split(piece)):  # [text, marked token or None, text, ...]
                if not part:
                    continue
                pos = piece.index(part, pos)
                part_ids = (
                    self._encode_plain(part) if i % 2 == 1 else self.tokenizer.encode(part, add_special_tokens=False)
                )
                ids += part_ids
                offsets += [(offset + pos, offset + pos + len(part))] * len(part_ids)
                pos += len(part)
            return ids, offsets
        enc = self.tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(offset + a, offset + b) for a, b in enc["offset_mapping"]]

    def _encode_plain(self, text: str) -> list[int]:
        """Encode ``text`` with the tokenizer's normalizer, pre-tokenizer and model only: no added token (special or
        not, e.g. Qwen's non-special ``<tool_call>``) can match, unlike ``split_special_tokens``."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # python tokenizer: split_special_tokens is the best available
            ids = self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        else:
            if backend.normalizer is not None:
                text = backend.normalizer.normalize_str(text)
            words = (
                backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer is not None else [(text, None)]
            )
            ids = [tok.id for word, _ in words for tok in backend.model.tokenize(word)]
        control = set(self.tokenizer.added_tokens_encoder.values())
        if any(i in control for i in ids):
            raise ValueError(f"cannot encode {text[:40]!r} as plain text: the tokenizer yields a control token")
        return ids

    @staticmethod
    def _placeholder_pads(inner: str) -> int | None:
        """Number of pads of a placeholder block body, or None for the original JSON form."""
        stripped = inner.strip()
        if stripped.startswith("{"):
            return None
        if stripped.replace(AUDIO_PAD_TOKEN, ""):
            raise ValueError(f"unrecognised audio block content {inner[:80]!r}: expected {AUDIO_PAD_TOKEN} or JSON")
        return stripped.count(AUDIO_PAD_TOKEN)

    @staticmethod
    def _load_json_audio(inner: str) -> tuple[np.ndarray, int]:
        info = json.loads(inner.strip())
        if "path" not in info:
            raise ValueError(f"audio block JSON without 'path': {inner[:80]!r}")
        return read_audio_file(info["path"])

    @staticmethod
    def _as_codes(codes, allow_empty: bool = False) -> torch.Tensor:
        c = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes).long()
        if c.ndim == 3 and c.shape[0] == 1:
            c = c[0]
        if c.ndim != 2 or (c.shape[0] == 0 and not allow_empty):
            raise ValueError(f"audio_codes items must be (N>0, num_codebooks) integer arrays, got {tuple(c.shape)}")
        return c

    @staticmethod
    def _waveform_iter(audio, sampling_rate: int) -> Iterator[tuple[Any, int]]:
        if audio is None:
            return iter(())
        if isinstance(audio, (np.ndarray, torch.Tensor, str, dict)):
            audio = [audio]
        flat: list = []
        for a in audio:  # a batch may come as a list of per-sample lists
            flat.extend(a if isinstance(a, (list, tuple)) else [a])

        def load(a):
            if isinstance(a, (str, os.PathLike)):
                return read_audio_file(a)
            if isinstance(a, dict):  # datasets' Audio feature
                return audio_part_source({"audio": a}, default_rate=sampling_rate)[1]
            return a, sampling_rate

        return (load(a) for a in flat)

    # ------------------------------------------------------------ output side
    def split_generated(
        self, sequence, audio_codes=None, prompt_length: int = 0, skip_special_tokens: bool = True
    ) -> list[dict]:
        """Split one generated id sequence into text and audio segments, in order.

        An audio segment is ``<audiogen_start_baichuan>`` + a run of ``<audio_pad_baichuan>`` (closed by
        ``<audiogen_end_baichuan>`` or by the end of the sequence). Returns dicts ``{"type": "text", "text",
        "token_ids"}`` and ``{"type": "audio", "start", "end", "num_frames"[, "codes"]}`` (``start:end`` = the pad
        positions in ``sequence``). Tokens before ``prompt_length`` are skipped (pass the prompt length to keep only
        the answer).

        ``audio_codes``: a list with one ``(frames, C)`` array per audio segment (as ``generate(..., output_audio=True)``
        returns them per row: each segment gets its own array, whatever its pad count), or one packed ``(n_pads, C)``
        array of the frames of the pads in order (each segment gets its slice).
        """
        ids = sequence.tolist() if hasattr(sequence, "tolist") else list(sequence)
        if ids and isinstance(ids[0], list):
            if len(ids) != 1:
                raise ValueError("split_generated takes one sequence; loop over the batch")
            ids = ids[0]
        pad, gen_start, gen_end = self.audio_pad_token_id, self.audiogen_start_token_id, self.audiogen_end_token_id
        segments, text_ids, i = [], [], int(prompt_length)

        def flush():
            if text_ids:
                txt = self.tokenizer.decode(text_ids, skip_special_tokens=skip_special_tokens)
                segments.append({"type": "text", "text": txt, "token_ids": list(text_ids)})
                text_ids.clear()

        while i < len(ids):
            if ids[i] != gen_start:
                text_ids.append(ids[i])
                i += 1
                continue
            flush()
            j = i + 1
            while j < len(ids) and ids[j] == pad:
                j += 1
            segments.append({"type": "audio", "start": i + 1, "end": j, "num_frames": j - i - 1})
            i = j + 1 if j < len(ids) and ids[j] == gen_end else j
        flush()
        if audio_codes is not None:
            self._attach_codes([s for s in segments if s["type"] == "audio"], audio_codes)
        return segments

    def _attach_codes(self, audio_segments: list[dict], audio_codes) -> None:
        if isinstance(audio_codes, (list, tuple)):
            if len(audio_codes) != len(audio_segments):
                # A switch token the loop never followed with audio (e.g. a text-only row that emitted it without
                # suppression) is an audio segment of no frames and no codes: give those empty codes.
                spoken = [s for s in audio_segments if s["num_frames"] > 0]
                nonempty = [c for c in audio_codes if len(c) > 0]
                if len(spoken) != len(nonempty):
                    raise ValueError(f"{len(audio_codes)} code segments for {len(audio_segments)} audio segments")
                width = self._as_codes(nonempty[0]).shape[1] if nonempty else 1
                for seg in audio_segments:
                    seg["codes"] = torch.zeros(0, width, dtype=torch.long)
                audio_segments, audio_codes = spoken, nonempty
            for seg, codes in zip(audio_segments, audio_codes, strict=True):
                seg["codes"] = self._as_codes(codes, allow_empty=True)
            return
        packed, used = self._as_codes(audio_codes), 0
        for seg in audio_segments:
            seg["codes"] = packed[used : used + seg["num_frames"]]
            used += seg["num_frames"]
        if used != packed.shape[0]:
            raise ValueError(f"{packed.shape[0]} code frames for {used} audio pads")

    def to_assistant_message(self, segments: list[dict]) -> dict:
        """An assistant message for the next turn (text parts and ``audio_codes`` parts) from :meth:`split_generated`
        segments (with codes): the generated speech is fed back as codes, no wav round trip."""
        content = []
        for seg in segments:
            if seg["type"] == "text":
                if seg["text"]:
                    content.append({"type": "text", "text": seg["text"]})
            elif "codes" not in seg:
                raise ValueError("audio segments need their codes: call split_generated(..., audio_codes=...)")
            elif seg["codes"].shape[0]:
                content.append({"type": "audio_codes", "codes": seg["codes"]})
        return {"role": "assistant", "content": content}

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Text of generated sequences (``skip_special_tokens=True`` by default: audio pads and switch tokens are
        dropped; use :meth:`split_generated` to keep the audio segments)."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    save_wav = staticmethod(save_wav)


def register_processor() -> None:
    """Register the processor (and the feature extractor) with the Auto classes (idempotent)."""
    from transformers import AutoFeatureExtractor, AutoProcessor

    from ..configuration import BaichuanAudioConfig
    from .feature_extraction import BaichuanAudioFeatureExtractor

    AutoFeatureExtractor.register(BaichuanAudioConfig, BaichuanAudioFeatureExtractor, exist_ok=True)
    AutoProcessor.register(BaichuanAudioConfig, BaichuanAudioProcessor, exist_ok=True)


__all__ = [
    "BaichuanAudioProcessor",
    "BaichuanAudioProcessorKwargs",
    "SPECIAL_TOKENS",
    "DEFAULT_VOICE",
    "ASR_PROMPT",
    "INPUT_SAMPLING_RATE",
    "OUTPUT_SAMPLING_RATE",
    "default_chat_template",
    "voice_prompt",
    "save_wav",
    "read_audio_file",
    "InvalidAudioError",
    "register_processor",
]
