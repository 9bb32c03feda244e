"""Loading helpers shared by the training example scripts: a dataset of rows (the model and processor come from
:func:`transformers_baichuan_audio.loading.load_model_and_processor`, ``training=True``)."""

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


def add_training_arguments(parser, learning_rate: float, save_steps: int) -> None:
    """The command-line arguments shared by the training examples (see their docstrings)."""
    parser.add_argument("--model", required=True)
    parser.add_argument("--output_dir", default="baichuan-audio-training")
    parser.add_argument("--learning_rate", type=float, default=learning_rate)
    parser.add_argument("--batch_size", type=int, default=4, help="per device")
    parser.add_argument("--grad_accum", type=int, default=1)
    parser.add_argument("--num_train_epochs", type=float, default=1.0)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--use_cpu", action="store_true")
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--save_steps", type=int, default=save_steps)
    parser.add_argument("--seed", type=int, default=0)


def training_arguments_kwargs(args) -> dict:
    """``TrainingArguments`` / ``SFTConfig`` keyword arguments from :func:`add_training_arguments`' options (the
    collator needs the raw rows: ``remove_unused_columns=False``)."""
    return dict(
        output_dir=args.output_dir,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        bf16=args.bf16,
        use_cpu=args.use_cpu,
        gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        seed=args.seed,
        remove_unused_columns=False,
        report_to=[],
    )


__all__ = ["add_training_arguments", "load_rows", "training_arguments_kwargs"]
