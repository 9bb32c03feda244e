"""Training data for Baichuan-Audio: the dataset format, the loss-mask rules of the paper and the batch collator.

Dataset format
==============

One row per training sequence (a ``datasets.Dataset``, a list of dicts, JSON lines...)::

    {
      "task": "sft",                       # selects the loss-mask rule (see TASKS below); default "sft"
      "messages": [                        # turns, in order
        {"role": "system", "content": "..."},
        {"role": "user", "content": [{"type": "audio", "path": "q.wav"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Hello."},
            {"type": "audio_codes", "codes": [[12, 3, 0, 7, 1, 9, 4, 2], ...]},   # (frames, num_codebooks)
        ]},
      ],
      "template": "chat",                  # optional: "chat" (the speech-chat template) or "raw" (plain concatenation)
      "audio_output": true,                # optional, chat only: <audiotext_start_baichuan> before <C_A>
      "voice": "邻家女声",                  # optional, chat only: voice system prompt
    }

``content`` is a string or a list of parts:

* ``{"type": "text", "text": str}``
* ``{"type": "audio", "path": str}`` / ``{"type": "audio", "array": [...], "sampling_rate": int}`` /
  ``{"type": "audio", "audio": path | array | {"array", "sampling_rate"}}``: a waveform (mono, any rate; resampled to
  16 kHz by the feature extractor);
* ``{"type": "audio_codes", "codes": (frames, num_codebooks) ints}``: pre-computed codes of the audio tokenizer (see
  :mod:`.precompute`), the preferred form for training (the encoder does not run).

In a ``datasets.Dataset`` (Arrow) write every ``content`` as a list of parts (Arrow cannot mix strings and lists in
one column); parts of different types are one struct type with null fields, which the collator ignores. Audio
columns: plain paths or arrays (``datasets``' ``Audio()`` decoding needs torchcodec; ``Audio(decode=False)`` dicts
with ``path`` work). A batch whose audio is all waveforms without audio labels goes to the model as
``input_features`` (the model's tokenizer encodes them); a batch mixing waveforms with codes, or with a spoken
waveform to train on, needs pre-computed codes or ``BaichuanAudioCollator(audio_tokenizer=...)``.

Audio of an ``assistant`` turn is *spoken* (output form ``<audiogen_start> <audio_pad>*N <audiogen_end>``, trained
through the audio head); audio of any other role is *heard* (input form ``<audio_start> <audio_pad>*N <audio_end>``,
never trained). ``template="raw"`` (the default of every task but ``sft``) concatenates the parts of all turns with no
role tokens: the base model's pre-training layouts; ``"chat"`` renders the processor's chat template (the released
speech-chat prompt format). An end-of-text token is appended to every row (``append_eos``).

Tasks and their loss masks (paper section 3.3, reference section 14)
====================================================================

==========  ==============================================================  =========================================
task        typical row                                                     loss
==========  ==============================================================  =========================================
``asr``     user: [prompt text, audio] / assistant: transcript              assistant turns (text + end-of-text)
``aqa``     user: [audio, question] / assistant: answer                     assistant turns
``s2tt``    user: [prompt, audio] / assistant: translation                  assistant turns
``tts``     user: text / assistant: [audio_codes]                           assistant turns (audio frames)
``sft``     chat turns, assistant answers in text and/or spoken codes       assistant turns: text and audio frames
``itts``    one turn: [text_1, codes_1, text_2, codes_2, ...]               everything except the FIRST text segment
``intlv``   one turn: [audio_1, text_2, audio_3, text_4, ...]               text segments only (no loss on audio)
==========  ==============================================================  =========================================

Token-level rules of a trained region: text tokens (and the appended end-of-text, which inherits the training flag of
the region before it) get a text label; of a trained *spoken* block, ``<audiogen_start>`` gets a text label (the LLM
learns to switch to speech), the ``<audio_pad>`` tokens and ``<audiogen_end>`` never do (the generation loop inserts
them), and the audio labels follow the model's layout: frame 0 at ``<audiogen_start>``, frame k+1 at the pad of frame
k, the end-of-audio frame (``codebook_sizes[i]`` in every codebook) at the last pad. Heard audio and template tokens
(``<B_SYS>``, ``<C_Q>``, ``<C_A>``, ...) are never trained. Per-codebook audio loss weights are the model config's
``audio_loss_weights``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.utils.chat_template_utils import render_jinja_template

from ..audio_encoding import encode_audio
from ..processing.audio_io import audio_part_source

IGNORE_INDEX = -100
TASKS = ("asr", "aqa", "s2tt", "tts", "sft", "itts", "intlv")
ROLE_BASED_TASKS = ("asr", "aqa", "s2tt", "tts", "sft")
_PLACEHOLDER_RE = re.compile(
    r"(<audio_start_baichuan>|<audiogen_start_baichuan>)<audio_pad_baichuan>(<audio_end_baichuan>|<audiogen_end_baichuan>)"
)


@dataclass
class Segment:
    """One piece of a row: ``kind`` ``"text"`` (with ``text``) or ``"audio"`` (``spoken`` or heard, with ``codes``
    (frames, K) or ``waveform`` ``(samples, rate)``); ``train`` says whether it carries loss."""

    kind: str
    train: bool
    text: str = ""
    spoken: bool = False
    codes: torch.Tensor | None = None
    waveform: tuple[np.ndarray, int] | None = None
    n_frames: int = 0  # filled by the collator


def _parts(content) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [p for p in content if p is not None]


def _audio_source(part: dict):
    """``("codes", tensor)`` or ``("wave", (array, rate))`` of an audio part: the inference format
    (:func:`~transformers_baichuan_audio.processing.audio_io.audio_part_source`), with no default rate for arrays."""
    kind, source = audio_part_source(part, default_rate=None)
    if kind == "wave" and not isinstance(source[0], (np.ndarray, torch.Tensor)):
        source = (np.asarray(source[0], dtype=np.float32), source[1])  # lists from JSON / Arrow
    return kind, source


def _is_audio(part: dict) -> bool:
    return part.get("type") in ("audio", "audio_codes")


def row_template(row: dict) -> str:
    task = row.get("task") or "sft"
    return row.get("template") or ("chat" if task == "sft" else "raw")


def _raw_text_regions(row: dict) -> list[tuple[str, bool, dict | None]]:
    """(text or placeholder, is_assistant, audio part or None) of a raw-template row, in order."""
    regions = []
    for message in row["messages"]:
        assistant = message.get("role") == "assistant"
        for part in _parts(message.get("content")):
            if _is_audio(part):
                tag = "audiogen" if assistant else "audio"
                regions.append((f"<{tag}_start_baichuan><audio_pad_baichuan><{tag}_end_baichuan>", assistant, part))
            elif part.get("type", "text") == "text":
                regions.append((part.get("text") or "", assistant, None))
            else:
                raise ValueError(f"unsupported content part type {part.get('type')!r}")
    return regions


def _chat_text_regions(row: dict, chat_template: str) -> list[tuple[str, bool, dict | None]]:
    """Render the chat template (audio parts as one-pad placeholders) and cut it at the assistant spans and the
    audio placeholders."""
    stripped, audio_parts = [], []
    for message in row["messages"]:
        parts = []
        for part in _parts(message.get("content")):
            if _is_audio(part):
                audio_parts.append(part)
                parts.append({"type": "audio_codes" if message.get("role") == "assistant" else "audio"})
            else:
                parts.append({"type": "text", "text": part.get("text") or ""})
        stripped.append({"role": message["role"], "content": parts})
    extra = {k: row[k] for k in ("voice",) if row.get(k)}
    audio_output = row.get("audio_output")
    if audio_output is None:  # a spoken answer in the data asks for one
        audio_output = any(
            _is_audio(p) for m in row["messages"] if m.get("role") == "assistant" for p in _parts(m.get("content"))
        )
    rendered, generation = render_jinja_template(
        [stripped], chat_template=chat_template, return_assistant_tokens_mask=True, audio_output=audio_output, **extra
    )
    text, spans = rendered[0], generation[0]
    cuts = sorted({0, len(text), *[i for span in spans for i in span]})
    cuts = sorted(set(cuts) | {i for m in _PLACEHOLDER_RE.finditer(text) for i in m.span()})
    regions, parts_iter = [], iter(audio_parts)
    for start, end in zip(cuts[:-1], cuts[1:], strict=True):
        piece = text[start:end]
        assistant = any(a <= start and end <= b for a, b in spans)
        regions.append((piece, assistant, next(parts_iter) if _PLACEHOLDER_RE.fullmatch(piece) else None))
    return regions


def row_segments(row: dict, chat_template: str | None = None) -> list[Segment]:
    """The row cut into :class:`Segment` s with the loss flags of its ``task`` (see the module docstring)."""
    task = row.get("task") or "sft"
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if row_template(row) == "chat":
        if chat_template is None:
            raise ValueError("a chat-template row needs the processor's chat_template")
        regions = _chat_text_regions(row, chat_template)
    else:
        regions = _raw_text_regions(row)
    segments, seen_audio = [], False
    for text, assistant, part in regions:
        if part is None:
            if not text:
                continue
            if task in ROLE_BASED_TASKS:
                train = assistant
            elif task == "itts":  # everything except the first text segment (the text before the first audio)
                train = seen_audio
            else:  # intlv: every text segment
                train = True
            if segments and segments[-1].kind == "text" and segments[-1].train == train:
                segments[-1].text += text  # contiguous text of equal flag
            else:
                segments.append(Segment("text", train, text=text))
            continue
        spoken = text.startswith("<audiogen_start")
        kind, source = _audio_source(part)
        if task in ROLE_BASED_TASKS:
            train = assistant and spoken
        elif task == "itts":
            train = spoken
        else:
            train = False
        seg = Segment("audio", train, text=text, spoken=spoken)
        if kind == "codes":
            seg.codes = source
        else:
            seg.waveform = source
        segments.append(seg)
        seen_audio = True
    return segments


class BaichuanAudioCollator:
    """Batch collator for ``transformers.Trainer`` and TRL ``SFTTrainer``: rows of the dataset format above ->
    ``input_ids`` / ``attention_mask`` (right padded) / ``labels`` (B, T) / ``audio_labels`` (B, T, K) and the audio
    inputs (``audio_codes`` (n_pads, K) packed in ``<audio_pad>`` order, or ``input_features`` / ``encoder_length`` /
    ``bridge_length`` when every audio of the batch is a waveform that needs no audio label).

    Args:
        processor: a :class:`BaichuanAudioProcessor` (its tokenizer, feature extractor, chat template and special ids).
        num_codebooks / codebook_sizes: the model's codebooks (``config.codebook_sizes``); the end-of-audio label of
            codebook i is ``codebook_sizes[i]``.
        audio_tokenizer: optional :class:`BaichuanAudioTokenizerModel` to encode waveforms inside the collator (CPU;
            needed when a batch mixes waveforms and codes, or when spoken audio is a waveform). Prefer pre-computing
            codes (:mod:`.precompute`) so that data workers never run the encoder.
        append_eos: append the tokenizer's end-of-text to every row (trained when the region before it is trained).
        max_length: rows longer than this raise (truncation would cut audio blocks); None = no limit.
        pad_to_multiple_of: pad the time dimension to a multiple of this.
    """

    def __init__(
        self,
        processor,
        codebook_sizes: Sequence[int],
        audio_tokenizer=None,
        append_eos: bool = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
    ):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.codebook_sizes = [int(c) for c in codebook_sizes]
        self.audio_tokenizer = audio_tokenizer
        self.append_eos = append_eos
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        ids = processor.special_token_ids
        self.audio_pad_id = ids["audio_pad_token_id"]
        self.start_ids = {True: ids["audiogen_start_token_id"], False: ids["audio_start_token_id"]}
        self.end_ids = {True: ids["audiogen_end_token_id"], False: ids["audio_end_token_id"]}
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    # ------------------------------------------------------------------ audio
    def _frames_of_waveforms(self, waves: list[tuple[np.ndarray, int]]):
        """Features of the clips and their frame counts (one ``<audio_pad>`` per frame)."""
        fe = self.processor.feature_extractor
        clips = [fe.prepare_waveform(w, r) for w, r in waves]
        feats = fe(clips, sampling_rate=fe.sampling_rate, return_tensors="pt")
        bridge, frames, start = feats["bridge_length"].tolist(), [], 0
        for n in feats["audio_pieces"].tolist():
            frames.append(int(sum(bridge[start : start + int(n)])))
            start += int(n)
        return feats, frames, clips

    def _resolve_audio(self, rows: list[list[Segment]]) -> dict[str, torch.Tensor]:
        """Give every audio segment its frame count (and codes when possible); returns the model's audio inputs."""
        audio = [s for segs in rows for s in segs if s.kind == "audio"]
        waves = [s for s in audio if s.codes is None]
        extra: dict[str, torch.Tensor] = {}
        if waves:
            feats, frames, clips = self._frames_of_waveforms([s.waveform for s in waves])
            need_codes = len(waves) < len(audio) or any(s.train for s in waves)
            if need_codes:
                if self.audio_tokenizer is None:
                    raise ValueError(
                        "this batch mixes waveforms with pre-computed codes (or has a trained spoken waveform): "
                        "pre-compute the codes (transformers_baichuan_audio.training.precompute) or pass "
                        "audio_tokenizer= to the collator"
                    )
                with torch.no_grad():
                    codes = encode_audio(self.audio_tokenizer, clips, self.processor.feature_extractor.sampling_rate)
                for seg, c in zip(waves, codes, strict=True):
                    seg.codes = c.cpu().long()
            else:
                extra = {k: feats[k] for k in ("input_features", "encoder_length", "bridge_length")}
                for seg, n in zip(waves, frames, strict=True):
                    seg.n_frames = n
        for seg in audio:
            if seg.codes is not None:
                if seg.codes.shape[1] != self.num_codebooks:
                    raise ValueError(f"codes with {seg.codes.shape[1]} codebooks, the model has {self.num_codebooks}")
                seg.n_frames = seg.codes.shape[0]
        if audio and not extra:
            extra["audio_codes"] = torch.cat([s.codes for s in audio], dim=0).long()
        return extra

    # ------------------------------------------------------------------- rows
    def _encode_row(self, segs: list[Segment]) -> tuple[list[int], list[int], list[list[int]]]:
        """(input_ids, text labels, audio labels) of one row, unpadded."""
        ids: list[int] = []
        labels: list[int] = []
        audio_labels: list[list[int]] = []
        none = [IGNORE_INDEX] * self.num_codebooks
        eos_frame = list(self.codebook_sizes)
        last_train = False
        for seg in segs:
            if seg.kind == "text":
                piece = self.tokenizer(seg.text, add_special_tokens=False)["input_ids"]
                ids += piece
                labels += piece if seg.train else [IGNORE_INDEX] * len(piece)
                audio_labels += [none] * len(piece)
                last_train = seg.train
                continue
            n = seg.n_frames
            start, end = self.start_ids[seg.spoken], self.end_ids[seg.spoken]
            ids += [start] + [self.audio_pad_id] * n + [end]
            trained = seg.train and seg.spoken
            labels += [start if trained else IGNORE_INDEX] + [IGNORE_INDEX] * (n + 1)
            if trained:
                frames = seg.codes.tolist()
                audio_labels += frames + [eos_frame] + [none]  # start->frame 0, pad k->frame k+1, last pad->eos
            else:
                audio_labels += [none] * (n + 2)
            last_train = trained
        if self.append_eos:
            ids.append(self.eos_id)
            labels.append(self.eos_id if last_train else IGNORE_INDEX)
            audio_labels.append(none)
        return ids, labels, audio_labels

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        chat_template = getattr(self.processor, "chat_template", None)
        rows = [row_segments(f, chat_template) for f in features]
        audio_inputs = self._resolve_audio(rows)
        encoded = [self._encode_row(segs) for segs in rows]
        width = max(len(ids) for ids, _, _ in encoded)
        if self.max_length is not None and width > self.max_length:
            raise ValueError(f"a row has {width} tokens > max_length={self.max_length} (filter long rows beforehand)")
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(encoded)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        audio_labels = torch.full((batch, width, self.num_codebooks), IGNORE_INDEX, dtype=torch.long)
        for b, (ids, lab, alab) in enumerate(encoded):
            n = len(ids)
            input_ids[b, :n] = torch.tensor(ids)
            attention_mask[b, :n] = 1
            labels[b, :n] = torch.tensor(lab)
            audio_labels[b, :n] = torch.tensor(alab).reshape(n, self.num_codebooks)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "audio_labels": audio_labels,
            **audio_inputs,
        }


__all__ = ["BaichuanAudioCollator", "Segment", "row_segments", "row_template", "TASKS", "IGNORE_INDEX"]
