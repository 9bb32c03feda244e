"""Judges of spoken-QA answers: ``judge(question, answer, references) -> Verdict`` (score in [0, 1]).

* :class:`ExactMatchJudge` (``"exact"``): 1 when the normalised answer equals a normalised reference.
* :class:`ContainsJudge` (``"contains"``): 1 when a normalised reference occurs in the normalised answer as whole
  words (the usual accuracy of Llama Questions / Web Questions / TriviaQA style sets with short gold answers).
* :class:`LLMJudge` (``"llm"``): asks a chat model behind an OpenAI-compatible endpoint (``openai`` package;
  ``base_url`` e.g. a local vLLM server; the key from ``api_key`` or the ``OPENAI_API_KEY`` environment variable)
  whether the answer is correct (``[Correct]`` / ``[Incorrect]`` -> 1 / 0) or, with ``scale=10``, for a 1-10 score
  (``[[7]]`` -> 0.7; open-ended sets such as AlpacaEval / Reasoning QA). An unparseable reply scores 0 with the
  reply kept in ``reason``.

Normalisation for the two match judges: Whisper's basic normaliser (lower case, punctuation removed).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .metrics import normalizer

JUDGES = ("exact", "contains", "llm")


@dataclass
class Verdict:
    """A judge's score in [0, 1] and its reason (the matched reference, or the LLM's reply)."""

    score: float
    reason: str = ""


class ExactMatchJudge:
    """1 when the normalised answer equals one normalised reference, else 0."""

    name = "exact"

    def __init__(self):
        self.norm = normalizer("basic")

    def __call__(self, question: str | None, answer: str, references: list[str]) -> Verdict:
        got = self.norm(answer)
        for ref in references:
            if got and got == self.norm(ref):
                return Verdict(1.0, f"equals {ref!r}")
        return Verdict(0.0, "no reference equals the answer")


class ContainsJudge(ExactMatchJudge):
    """1 when one normalised reference occurs in the normalised answer as whole words, else 0."""

    name = "contains"

    def __call__(self, question: str | None, answer: str, references: list[str]) -> Verdict:
        got = f" {self.norm(answer)} "
        for ref in references:
            want = self.norm(ref)
            if want and f" {want} " in got:
                return Verdict(1.0, f"contains {ref!r}")
        return Verdict(0.0, "no reference found in the answer")


BINARY_PROMPT = """You grade answers to spoken questions. Decide whether the model's answer is correct given the
reference answers. Wording, number format, spelling slips and extra explanation do not matter; the core fact does.
Explain briefly, then end with exactly "[Correct]" or "[Incorrect]".

Question: {question}
Reference answers: {references}
Model's answer: {answer}"""

SCALE_PROMPT = """You grade answers to spoken requests. Rate how helpful, correct and complete the model's answer is
on a scale of 1 to 10 (reference answers, if any, show what a good answer contains). Explain briefly, then end
with the rating in double brackets, e.g. "[[7]]".

Request: {question}
Reference answers: {references}
Model's answer: {answer}"""

_BINARY = re.compile(r"\[(correct|incorrect)\]", re.IGNORECASE)
_SCALE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


class LLMJudge:
    """An LLM behind an OpenAI-compatible chat endpoint (see the module docstring).

    Args:
        model: the judge model's name at the endpoint (e.g. ``gpt-4o-2024-08-06``).
        base_url: endpoint (default: the ``openai`` package's, or ``OPENAI_BASE_URL``).
        api_key: key (default: the ``OPENAI_API_KEY`` environment variable; ``"EMPTY"`` for local servers).
        scale: ``None`` for correct / incorrect, or ``10`` for a 1-10 rating.
        client: an object with ``chat.completions.create`` (tests; default: ``openai.OpenAI(...)``).
    """

    name = "llm"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, scale=None, client=None):
        self.model = model
        self.scale = scale
        if client is None:
            try:
                import openai
            except ImportError as err:
                raise RuntimeError("the LLM judge needs the 'openai' package: pip install openai") from err
            client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY")
        self.client = client

    def prompt(self, question: str | None, answer: str, references: list[str]) -> str:
        template = SCALE_PROMPT if self.scale else BINARY_PROMPT
        refs = "; ".join(references) if references else "(none)"
        return template.format(question=question or "(not given)", references=refs, answer=answer)

    def __call__(self, question: str | None, answer: str, references: list[str]) -> Verdict:
        reply = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": self.prompt(question, answer, references)}],
            temperature=0,
        )
        text = reply.choices[0].message.content or ""
        return self.parse(text)

    def parse(self, text: str) -> Verdict:
        """Score of a judge reply (the LAST verdict in it counts)."""
        if self.scale:
            found = _SCALE.findall(text)
            if found:
                return Verdict(min(max(float(found[-1]) / float(self.scale), 0.0), 1.0), text)
        else:
            found = _BINARY.findall(text)
            if found:
                return Verdict(1.0 if found[-1].lower() == "correct" else 0.0, text)
        return Verdict(0.0, f"unparseable judge reply: {text}")


def make_judge(name: str, model: str | None = None, base_url: str | None = None, scale=None, client=None):
    """A judge by name (:data:`JUDGES`); ``"llm"`` needs ``model``."""
    if name == "exact":
        return ExactMatchJudge()
    if name == "contains":
        return ContainsJudge()
    if name == "llm":
        if not model:
            raise ValueError("the llm judge needs a model name (--judge-model)")
        return LLMJudge(model, base_url=base_url, scale=scale, client=client)
    raise ValueError(f"unknown judge {name!r}; choose one of {list(JUDGES)}")


__all__ = [
    "BINARY_PROMPT",
    "ContainsJudge",
    "ExactMatchJudge",
    "JUDGES",
    "LLMJudge",
    "SCALE_PROMPT",
    "Verdict",
    "make_judge",
]
