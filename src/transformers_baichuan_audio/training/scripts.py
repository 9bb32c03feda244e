"""Helpers shared by the training example scripts: a dataset of rows and the ``HfArgumentParser`` of their arguments
(the model and processor come from :func:`transformers_baichuan_audio.loading.load_model_and_processor`,
``training=True``)."""

from __future__ import annotations

import json
from pathlib import Path


def load_rows(path: str):
    """A ``datasets.Dataset`` of training rows from a JSON-lines file, a directory of pre-computed shards
    (:mod:`.precompute`) or a ``save_to_disk`` directory."""
    from datasets import Dataset, load_dataset, load_from_disk

    p = Path(path)
    if p.is_dir() and (p / "manifest.json").exists():
        files = [str(p / s["file"]) for s in json.loads((p / "manifest.json").read_text())["shards"]]
        return load_dataset("json", data_files=files, split="train")
    if p.is_dir():
        return load_from_disk(str(p))
    if p.suffix in (".json", ".jsonl"):
        return load_dataset("json", data_files=str(p), split="train")
    return Dataset.from_list(json.loads(p.read_text()))


def training_rows(path: str, streaming: bool = False, task_weights: str | None = None, seed: int = 0):
    """The training examples' ``--dataset``: :func:`load_rows` (whole, in memory), or with ``streaming`` a lazily
    read ``datasets.IterableDataset`` (:func:`.corpora.stream_rows`; ``Trainer`` then needs ``--max_steps``), or
    with ``task_weights`` (``"asr=0.3,tts=0.7"`` or ``"paper"``) the seeded task mix of the rows of those tasks
    (:func:`.corpora.mix_tasks`; each task's stream reads the files and keeps its own rows)."""
    from . import corpora

    if task_weights:
        weights = corpora.parse_task_weights(task_weights)
        streams = {task: corpora.stream_rows(path, task=task) for task in weights}
        return corpora.mix_tasks(streams, weights, seed=seed)
    return corpora.stream_rows(path) if streaming else load_rows(path)


#: This project's defaults for the training examples' ``TrainingArguments`` / ``SFTConfig`` fields (where they differ
#: from transformers' / TRL's): the collator needs the raw rows (``remove_unused_columns=False``); no activation
#: checkpointing unless asked (``SFTConfig`` defaults it to on; ``gradient_checkpointing=None`` leaves
#: ``activation_checkpointing`` off without the deprecation warning of an explicit ``False``).
TRAINING_DEFAULTS = {
    "output_dir": "baichuan-audio-training",
    "per_device_train_batch_size": 4,
    "logging_steps": 10,
    "seed": 0,
    "gradient_checkpointing": None,
    "remove_unused_columns": False,
}
#: Short command-line names of two training-argument fields (the examples' own, kept as aliases).
TRAINING_ALIASES = {"--batch_size": "per_device_train_batch_size", "--grad_accum": "gradient_accumulation_steps"}


def training_argument_parser(script_arguments, training_arguments, **defaults):
    """``transformers.HfArgumentParser`` of a training example: the fields of its ``script_arguments`` dataclass and
    of ``training_arguments`` (``TrainingArguments`` or TRL's ``SFTConfig``: every field is a ``--name`` option),
    with :data:`TRAINING_DEFAULTS` updated by ``defaults`` and the aliases :data:`TRAINING_ALIASES`.
    ``parser.parse_args_into_dataclasses(argv)`` returns ``(script_args, training_args)``."""
    import argparse

    from transformers import HfArgumentParser

    parser = HfArgumentParser((script_arguments, training_arguments))
    parser.set_defaults(**{**TRAINING_DEFAULTS, **defaults})
    for flag, dest in TRAINING_ALIASES.items():
        parser.add_argument(flag, dest=dest, type=int, default=argparse.SUPPRESS, help=f"alias of --{dest}")
    return parser


__all__ = ["TRAINING_ALIASES", "TRAINING_DEFAULTS", "load_rows", "training_argument_parser", "training_rows"]
