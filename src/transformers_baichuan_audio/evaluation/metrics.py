"""Error rates and text normalisation.

Normalisers (applied to the reference and the hypothesis before counting):

* ``"english"``: Whisper's English normaliser (``transformers.models.whisper.english_normalizer.EnglishTextNormalizer``,
  the one of the Whisper paper's LibriSpeech numbers): lower case, punctuation and bracketed/filler words removed,
  contractions and titles expanded ("won't" -> "will not", "Mr." -> "mister"), numbers written as digits
  ("twenty five" -> "25"). Its British -> American spelling table lives in the Whisper tokenizer's
  ``normalizer.json``, which is not available offline: pass ``spelling_mapping`` (a dict or the path of that file)
  to use it; without it spellings are left as they are ("colour" stays "colour").
* ``"basic"``: Whisper's ``BasicTextNormalizer`` (lower case, punctuation and symbols removed; any script kept) for
  non-English text (Chinese, Fleurs languages).
* ``"none"``: the text as is (whitespace collapsed).

Counting (:func:`word_errors`, :func:`char_errors`): the Levenshtein alignment of ``jiwer`` (substitutions +
deletions + insertions) over words, or over characters with all whitespace removed (CER, for Chinese). A corpus rate
is the sum of the errors over the sum of the reference lengths (:func:`corpus_rate`), not the mean of per-utterance
rates. An empty reference counts every hypothesis token as an insertion.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

NORMALIZERS = ("english", "basic", "none")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def contains_cjk(text: str) -> bool:
    """True when ``text`` has Chinese, Japanese or Korean characters (scored by CER)."""
    return bool(_CJK.search(text or ""))


@functools.lru_cache(maxsize=8)
def _english(mapping_key: str | None):
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    mapping = {}
    if mapping_key:
        mapping = json.loads(Path(mapping_key).read_text(encoding="utf-8"))
    return EnglishTextNormalizer(mapping)


@functools.lru_cache(maxsize=1)
def _basic():
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()


def normalizer(kind: str = "english", spelling_mapping: str | dict | None = None) -> Callable[[str], str]:
    """The normalising function ``str -> str`` of ``kind`` (see the module docstring)."""
    if kind == "english":
        if isinstance(spelling_mapping, dict):
            from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

            norm = EnglishTextNormalizer(dict(spelling_mapping))
        else:
            norm = _english(str(spelling_mapping) if spelling_mapping else None)
    elif kind == "basic":
        norm = _basic()
    elif kind == "none":
        return lambda text: " ".join((text or "").split())
    else:
        raise ValueError(f"unknown normalizer {kind!r}; choose one of {list(NORMALIZERS)}")
    return lambda text: " ".join(norm(text or "").split())


def _edit_errors(reference: list[str], hypothesis: list[str]) -> int:
    if not reference:
        return len(hypothesis)
    if not hypothesis:
        return len(reference)
    import jiwer

    out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    return int(out.substitutions + out.deletions + out.insertions)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """``(errors, reference words)`` of already normalised strings (words split at whitespace)."""
    ref, hyp = reference.split(), hypothesis.split()
    return _edit_errors(ref, hyp), len(ref)


def char_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """``(errors, reference characters)`` of already normalised strings, whitespace removed (CER)."""
    ref = list("".join(reference.split()))
    hyp = list("".join(hypothesis.split()))
    return _edit_errors(ref, hyp), len(ref)


def corpus_rate(pairs: Iterable[tuple[int, int]]) -> float | None:
    """Sum of errors / sum of reference lengths, in percent; None when there is no reference token at all."""
    errors = total = 0
    for e, n in pairs:
        errors += e
        total += n
    return 100.0 * errors / total if total else None


def score_transcript(reference: str, hypothesis: str, norm: Callable[[str], str]) -> dict:
    """Row fields of one transcript: the normalised strings and the word / character error counts."""
    ref, hyp = norm(reference), norm(hypothesis)
    w_err, w_ref = word_errors(ref, hyp)
    c_err, c_ref = char_errors(ref, hyp)
    return {
        "reference_normalized": ref,
        "hypothesis_normalized": hyp,
        "word_errors": w_err,
        "reference_words": w_ref,
        "char_errors": c_err,
        "reference_chars": c_ref,
    }


__all__ = [
    "NORMALIZERS",
    "char_errors",
    "contains_cjk",
    "corpus_rate",
    "normalizer",
    "score_transcript",
    "word_errors",
]
