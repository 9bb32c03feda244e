"""The evaluation tasks: what is generated for a batch of examples, what each row records, and the summary.

* ``asr``: the base-model ASR prompt (``processor.asr``) on a batch of clips, one batched ``generate`` call
  (``speech_mode="text"``); WER and CER of every transcript against the reference text (normaliser by language:
  :mod:`.metrics`). Summary: corpus WER / CER in percent; the primary metric is CER for Chinese (references with
  CJK characters) and WER otherwise.
* ``spoken-qa``: the question clip as a user turn of the chat template, one batched ``generate`` call. ``answer=
  "text"`` (S->T): the text answer is judged against the reference answers. ``answer="speech"`` (S->S): the answer is
  also spoken (``speech_mode="chat"``; codes decoded to 24 kHz per row as :meth:`..chat.SpeechChat.decode_answer`
  does), the scoring ASR transcribes the speech, and both the text answer and the transcript are judged; the
  consistency counts of the transcript against the text answer come with it.
* ``consistency``: spoken answers as in S->S; WER / CER of the scoring-ASR transcript against the model's own text
  answer (no reference needed). Rows whose answer has no speech are counted apart (``no_speech``).
* ``latency``: one streamed turn per example (:meth:`..chat.SpeechChat.stream_turn`, speech on), NOT batched: the
  figures are those of one request. Per row: seconds to the first text delta, to the first audio chunk and to the end
  of the turn, seconds of audio and code frames generated. Summary: mean / median / 90th percentile of the first-text
  and first-audio times, real-time factor (turn time / audio time, summed over the rows; below 1 is faster than real
  time) and frames per second (frames / turn time, summed). One untimed warm-up turn runs first (``warmup``).

Generation uses the :class:`..chat.SpeechChat` settings (``generation_kwargs``, seed); rows of a batch share one
sampling generator, so sampled answers depend on the batch (greedy ones do not, up to the audio tokenizer's batch
padding, see the README).

The scoring ASR is any callable ``[(waveform, sampling_rate), ...] -> [text, ...]``; :func:`pipeline_asr` wraps a
transformers ASR checkpoint (Whisper by default) in one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .datasets_io import ANSWER_COLUMNS, ID_COLUMNS, QUESTION_COLUMNS, TEXT_COLUMNS, EvalDataset, answers_of
from .metrics import contains_cjk, corpus_rate, normalizer, score_transcript

TASKS = ("asr", "spoken-qa", "consistency", "latency")
LANGUAGES = ("auto", "en", "zh", "other")
DEFAULT_SCORING_ASR = "openai/whisper-large-v3"
OUTPUT_RATE = 24000

ScoringASR = Callable[[list[tuple[np.ndarray, int]]], list[str]]


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked (unknown task, missing scoring ASR or judge, ...)."""


@dataclass
class EvalOptions:
    """Settings of a run. Columns: ``None`` = the first of the usual names present (see :mod:`.datasets_io`).

    ``language``: ``"en"`` (English normaliser, WER), ``"zh"`` (basic normaliser, CER), ``"other"`` (basic
    normaliser, WER) or ``"auto"`` (per row: ``zh`` when the reference has CJK characters, else ``en``).
    ``answer``: ``"text"`` or ``"speech"`` (spoken-qa). ``answer_separator``: split reference answer strings there
    (e.g. ``";"``). ``warmup``: one untimed turn before the latency rows."""

    language: str = "auto"
    spelling_mapping: str | None = None
    text_column: str | None = None
    answer_column: str | None = None
    alias_column: str | None = None
    question_column: str | None = None
    id_column: str | None = None
    answer_separator: str | None = None
    answer: str = "text"
    warmup: bool = True


@dataclass
class EvalContext:
    """What the tasks run on: the chat engine, the scoring ASR (speech tasks), the judge (spoken-qa), the options."""

    chat: object
    scoring_asr: ScoringASR | None = None
    judge: Callable | None = None
    options: EvalOptions = field(default_factory=EvalOptions)


@dataclass
class Item:
    """One example to run: its index in the dataset, its reference fields and its 16 kHz waveform."""

    index: int
    fields: dict
    wave: np.ndarray


# --------------------------------------------------------------------------------------- model calls (batched)
def _generate(chat, inputs, speech_mode: str, **defaults):
    import torch

    device = chat.model.device
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    kwargs.update(defaults)
    kwargs.update(chat.generation_kwargs)
    kwargs.update(
        output_audio=True,
        speech_mode=speech_mode,
        tokenizer=chat.processor.tokenizer,
        generator=torch.Generator(device=device).manual_seed(chat.seed),
    )
    with torch.no_grad():
        return chat.model.generate(**kwargs)


def transcribe_batch(chat, waves: list[np.ndarray]) -> list[str]:
    """Base-model ASR of 16 kHz clips in one batched ``generate`` call (the prompt of ``SpeechChat.transcribe``)."""
    inputs = chat.processor.asr(list(waves), sampling_rate=16000, return_tensors="pt")
    chat.check_context(inputs)
    out = _generate(chat, inputs, "text", max_new_tokens=256)
    prompt = int(inputs["input_ids"].shape[1])
    tok = chat.processor.tokenizer
    return [
        tok.decode(out.sequences[r, prompt : int(out.sequence_lengths[r])], skip_special_tokens=True).strip()
        for r in range(len(waves))
    ]


def answer_batch(chat, waves: list[np.ndarray], speak: bool) -> list[dict]:
    """Chat answers to spoken questions (16 kHz clips), one batched ``generate`` call: per row ``{"text", "codes",
    "audio"}`` (``audio``: the 24 kHz answer, or None without speech)."""
    from ..processing.processor import DEFAULT_VOICE

    speak = bool(speak) and chat.can_speak
    conversations = [
        [{"role": "user", "content": [{"type": "audio", "audio": w, "sampling_rate": 16000}]}] for w in waves
    ]
    inputs = chat.processor.apply_chat_template(
        conversations,
        audio_output=speak,
        voice=DEFAULT_VOICE,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    chat.check_context(inputs)
    out = _generate(chat, inputs, "chat" if speak else "text")
    prompt = int(inputs["input_ids"].shape[1])
    answers = []
    for r in range(len(waves)):
        row = out.sequences[r, : int(out.sequence_lengths[r])]
        segments = chat.processor.split_generated(row, out.audio_codes[r], prompt_length=prompt)
        text = "".join(s["text"] for s in segments if s["type"] == "text").strip()
        codes = [c for c in out.audio_codes[r] if c.shape[0]]
        audio = chat.decode_answer(codes) if speak and codes else None
        answers.append({"text": text, "codes": codes, "audio": audio})
    return answers


def pipeline_asr(
    model: str = DEFAULT_SCORING_ASR, device=None, batch_size: int = 8, language: str | None = None
) -> ScoringASR:
    """A scoring ASR from a transformers checkpoint (``pipeline("automatic-speech-recognition")``, 30 s chunks);
    ``language`` (e.g. ``"english"``) is passed to Whisper checkpoints."""
    from transformers import pipeline

    pipe = pipeline("automatic-speech-recognition", model=model, device=device, chunk_length_s=30)
    is_whisper = getattr(pipe.model.config, "model_type", "") == "whisper"

    def transcribe(clips: list[tuple[np.ndarray, int]]) -> list[str]:
        inputs = [{"raw": np.asarray(w, dtype=np.float32), "sampling_rate": int(sr)} for w, sr in clips]
        kwargs = {"generate_kwargs": {"language": language, "task": "transcribe"}} if is_whisper and language else {}
        return [o["text"].strip() for o in pipe(inputs, batch_size=batch_size, **kwargs)]

    return transcribe


# ------------------------------------------------------------------------------------------------ the tasks
def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "p50": None, "p90": None}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(np.ceil(0.9 * len(ordered))) - 1)]
    return {"mean": statistics.fmean(values), "p50": statistics.median(values), "p90": p90}


class Task:
    """Base class: :meth:`prepare` resolves the columns (``DatasetError`` when one is missing), :meth:`fields`
    reads an example's reference fields, :meth:`run_batch` makes the rows, :meth:`summarize` the summary."""

    name = ""
    needs_scoring_asr = False
    needs_judge = False

    def prepare(self, dataset: EvalDataset, options: EvalOptions) -> None:
        self.options = options
        self.id_column = dataset.optional_column(options.id_column, ID_COLUMNS)

    def fields(self, row: dict) -> dict:
        return {"id": str(row.get(self.id_column)) if self.id_column else None}

    def check_context(self, ctx: EvalContext) -> None:
        if self.needs_scoring_asr and ctx.scoring_asr is None:
            raise EvaluationError(f"{self.name} needs a scoring ASR model (--asr-model)")
        if self.needs_judge and ctx.judge is None:
            raise EvaluationError(f"{self.name} needs a judge (--judge)")

    def run_batch(self, items: list[Item], ctx: EvalContext) -> list[dict]:
        raise NotImplementedError

    def summarize(self, rows: list[dict]) -> dict:
        raise NotImplementedError

    # helpers
    def language_of(self, reference: str) -> str:
        lang = self.options.language
        if lang == "auto":
            return "zh" if contains_cjk(reference) else "en"
        return lang

    def norm_for(self, language: str):
        if language == "en":
            return normalizer("english", self.options.spelling_mapping)
        return normalizer("basic")

    def score(self, reference: str, hypothesis: str) -> dict:
        language = self.language_of(reference)
        return {"language": language, **score_transcript(reference, hypothesis, self.norm_for(language))}

    @staticmethod
    def rates(rows: list[dict], prefix: str = "") -> dict:
        ok = [r for r in rows if f"{prefix}word_errors" in r]
        wer = corpus_rate((r[f"{prefix}word_errors"], r[f"{prefix}reference_words"]) for r in ok)
        cer = corpus_rate((r[f"{prefix}char_errors"], r[f"{prefix}reference_chars"]) for r in ok)
        zh = sum(r.get(f"{prefix}language") == "zh" for r in ok)
        return {f"{prefix}wer": wer, f"{prefix}cer": cer, f"{prefix}primary": "cer" if zh * 2 > len(ok) else "wer"}


class ASRTask(Task):
    name = "asr"

    def prepare(self, dataset, options):
        super().prepare(dataset, options)
        self.text_column = dataset.column(
            options.text_column, TEXT_COLUMNS, "the reference transcript", "--text-column"
        )

    def fields(self, row):
        return {**super().fields(row), "reference": str(row.get(self.text_column) or "")}

    def run_batch(self, items, ctx):
        hyps = transcribe_batch(ctx.chat, [it.wave for it in items])
        return [
            {"index": it.index, **it.fields, "hypothesis": h, **self.score(it.fields["reference"], h)}
            for it, h in zip(items, hyps, strict=True)
        ]

    def summarize(self, rows):
        ok = [r for r in rows if "error" not in r]
        return {"examples": len(rows), "failed": len(rows) - len(ok), **self.rates(ok)}


def _speech_fields(answer: dict, transcript: str | None) -> dict:
    audio = answer["audio"]
    return {
        "answer_text": answer["text"],
        "speech_seconds": float(audio.shape[-1]) / OUTPUT_RATE if audio is not None else 0.0,
        "audio_frames": int(sum(c.shape[0] for c in answer["codes"])),
        "transcript": transcript,
    }


def _spoken_answers(items: list[Item], ctx: EvalContext) -> list[tuple[dict, str | None]]:
    answers = answer_batch(ctx.chat, [it.wave for it in items], speak=True)
    spoken = [(i, a["audio"].numpy(), OUTPUT_RATE) for i, a in enumerate(answers) if a["audio"] is not None]
    texts = ctx.scoring_asr([(w, sr) for _, w, sr in spoken]) if spoken else []
    if len(texts) != len(spoken):
        raise EvaluationError(f"the scoring ASR returned {len(texts)} transcripts for {len(spoken)} clips")
    transcripts: list[str | None] = [None] * len(answers)
    for (i, _, _), text in zip(spoken, texts, strict=True):
        transcripts[i] = text
    return list(zip(answers, transcripts, strict=True))


class SpokenQATask(Task):
    name = "spoken-qa"
    needs_judge = True

    def prepare(self, dataset, options):
        super().prepare(dataset, options)
        if options.answer not in ("text", "speech"):
            raise EvaluationError(f"answer must be 'text' or 'speech', got {options.answer!r}")
        self.needs_scoring_asr = options.answer == "speech"
        self.answer_column = dataset.column(
            options.answer_column, ANSWER_COLUMNS, "the reference answers", "--answer-column"
        )
        self.alias_column = dataset.optional_column(options.alias_column, ())
        self.question_column = dataset.optional_column(options.question_column, QUESTION_COLUMNS)

    def fields(self, row):
        sep = self.options.answer_separator
        refs = answers_of(row.get(self.answer_column), sep)
        if self.alias_column:
            refs = list(dict.fromkeys(refs + answers_of(row.get(self.alias_column), sep or ",")))
        question = str(row.get(self.question_column)) if self.question_column else None
        return {**super().fields(row), "question": question, "references": refs}

    def _judged(self, ctx, it: Item, answer: str, prefix: str) -> dict:
        verdict = ctx.judge(it.fields["question"], answer, it.fields["references"])
        return {f"{prefix}score": float(verdict.score), f"{prefix}reason": verdict.reason}

    def run_batch(self, items, ctx):
        rows = []
        if self.options.answer == "text":
            for it, ans in zip(items, answer_batch(ctx.chat, [it.wave for it in items], speak=False), strict=True):
                rows.append(
                    {
                        "index": it.index,
                        **it.fields,
                        "answer_text": ans["text"],
                        **self._judged(ctx, it, ans["text"], "text_"),
                    }
                )
            return rows
        for it, (ans, transcript) in zip(items, _spoken_answers(items, ctx), strict=True):
            row = {"index": it.index, **it.fields, **_speech_fields(ans, transcript)}
            row.update(self._judged(ctx, it, ans["text"], "text_"))
            row.update(self._judged(ctx, it, transcript or "", "speech_"))
            if transcript is not None:
                row.update({f"consistency_{k}": v for k, v in self.score(ans["text"], transcript).items()})
            rows.append(row)
        return rows

    def summarize(self, rows):
        ok = [r for r in rows if "error" not in r]
        out = {"examples": len(rows), "failed": len(rows) - len(ok)}
        out["text_accuracy"] = 100.0 * statistics.fmean(r["text_score"] for r in ok) if ok else None
        if self.options.answer == "speech":
            out["speech_accuracy"] = 100.0 * statistics.fmean(r["speech_score"] for r in ok) if ok else None
            out["no_speech"] = sum(r.get("transcript") is None for r in ok)
            out.update(self.rates(ok, "consistency_"))
        return out


class ConsistencyTask(Task):
    name = "consistency"
    needs_scoring_asr = True

    def run_batch(self, items, ctx):
        rows = []
        for it, (ans, transcript) in zip(items, _spoken_answers(items, ctx), strict=True):
            row = {"index": it.index, **it.fields, **_speech_fields(ans, transcript)}
            if transcript is None:
                row["no_speech"] = True
            else:
                row.update(self.score(ans["text"], transcript))
            rows.append(row)
        return rows

    def summarize(self, rows):
        ok = [r for r in rows if "error" not in r]
        scored = [r for r in ok if not r.get("no_speech")]
        return {
            "examples": len(rows),
            "failed": len(rows) - len(ok),
            "no_speech": len(ok) - len(scored),
            **self.rates(scored),
        }


class LatencyTask(Task):
    name = "latency"

    def __init__(self):
        self.warmed = False

    def _turn(self, chat, wave: np.ndarray) -> dict:
        user = {"role": "user", "content": [{"type": "audio", "audio": wave, "sampling_rate": 16000}]}
        start = time.perf_counter()
        first_text = first_audio = None
        samples = 0
        done = None
        for event in chat.stream_turn([user], speak=True):
            now = time.perf_counter() - start
            if event.kind == "text" and first_text is None:
                first_text = now
            elif event.kind == "audio":
                first_audio = now if first_audio is None else first_audio
                samples += int(event.audio.numel())
            elif event.kind == "done":
                done = event
        total = time.perf_counter() - start
        return {
            "first_text_s": first_text,
            "first_audio_s": first_audio,
            "total_s": total,
            "audio_s": samples / OUTPUT_RATE,
            "audio_frames": int(sum(c.shape[0] for c in done.codes)) if done is not None else 0,
            "text_chars": len(done.text) if done is not None else 0,
        }

    def run_batch(self, items, ctx):
        if self.options.warmup and not self.warmed and items:
            self._turn(ctx.chat, items[0].wave)
        self.warmed = True
        return [{"index": it.index, **it.fields, **self._turn(ctx.chat, it.wave)} for it in items]

    def summarize(self, rows):
        ok = [r for r in rows if "error" not in r]
        total = sum(r["total_s"] for r in ok)
        audio = sum(r["audio_s"] for r in ok)
        frames = sum(r["audio_frames"] for r in ok)
        out = {"examples": len(rows), "failed": len(rows) - len(ok)}
        for key in ("first_text_s", "first_audio_s"):
            for stat, value in _stats([r[key] for r in ok if r[key] is not None]).items():
                out[f"{key}_{stat}"] = value
        out["real_time_factor"] = total / audio if audio else None
        out["frames_per_s"] = frames / total if total else None
        out["audio_s"] = audio
        return out


def make_task(name: str) -> Task:
    """A fresh task by name (:data:`TASKS`); :class:`EvaluationError` for an unknown one."""
    classes = {"asr": ASRTask, "spoken-qa": SpokenQATask, "consistency": ConsistencyTask, "latency": LatencyTask}
    if name not in classes:
        raise EvaluationError(f"unknown task {name!r}; choose one of {list(TASKS)}")
    return classes[name]()


__all__ = [
    "ASRTask",
    "ConsistencyTask",
    "DEFAULT_SCORING_ASR",
    "EvalContext",
    "EvalOptions",
    "EvaluationError",
    "Item",
    "LANGUAGES",
    "LatencyTask",
    "SpokenQATask",
    "TASKS",
    "Task",
    "answer_batch",
    "make_task",
    "pipeline_asr",
    "transcribe_batch",
]
