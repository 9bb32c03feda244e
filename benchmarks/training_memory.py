"""Memory per GPU of the training recipes for the released 10B model (``BaichuanAudioConfig()`` defaults), computed
from parameter counts and optimizer state by :mod:`transformers_baichuan_audio.training.memory` (no GPU, no weights:
the model is built on the meta device). Activations are not included (see that module).

Usage::

    python benchmarks/training_memory.py                 # markdown table, 2 / 8 / 16 GPUs
    python benchmarks/training_memory.py --gpus 2 4 8 --lora_r 64

The last line of the output is one JSON object with the parameter counts.
"""

from __future__ import annotations

import argparse
import json

from transformers_baichuan_audio.training.memory import memory_table, parameter_counts

RECIPES = {"stage1": "stage 1", "stage2": "stage 2", "lora": "LoRA SFT"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--lora_r", type=int, default=16)
    args = parser.parse_args()
    rows = memory_table(gpus=args.gpus, lora_r=args.lora_r)
    header = ["recipe", "trainable", "frozen", "precision", "DDP (every GPU)"] + [f"FSDP {n} GPUs" for n in args.gpus]
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    for recipe in RECIPES:
        for regime in ("bf16", "mixed"):
            mine = [r for r in rows if r["recipe"] == recipe and r["regime"] == regime]
            ddp = next(r for r in mine if r["parallel"] == "ddp")
            fsdp = [next(r for r in mine if r["parallel"] == "fsdp" and r["gpus"] == n) for n in args.gpus]
            cells = [RECIPES[recipe], f"{ddp['trainable'] / 1e9:.2f} B", f"{ddp['frozen'] / 1e9:.2f} B", regime,
                     f"{ddp['gib']:.1f} GiB"] + [f"{r['gib']:.1f} GiB" for r in fsdp]  # fmt: skip
            print("| " + " | ".join(cells) + " |")
    print(json.dumps(parameter_counts(lora_r=args.lora_r)))


if __name__ == "__main__":
    main()
