"""Pre-compute the audio codes of a training dataset with the audio tokenizer (batched, resumable, progress bar).

Every waveform audio part of the rows is replaced by its ``audio_codes``; the output directory holds JSON-lines shards
and a ``manifest.json``. Re-running the same command after an interruption continues where it stopped (no row is
duplicated or lost). Train on the output directory directly (``--dataset OUT`` of the training examples).

Examples::

    python examples/precompute_codes.py --model ./baichuan-audio-hf --dataset rows.jsonl --output_dir codes --device cuda
    python examples/precompute_codes.py --model tiny-random --dataset rows.jsonl --output_dir codes

Arguments: ``--model`` (a converted checkpoint whose audio tokenizer is used, or ``tiny-random``), ``--dataset``
(JSON lines / saved dataset), ``--output_dir``, ``--batch_size`` (16 rows per encoder call), ``--shard_size``
(1024 rows per shard file), ``--device`` (cpu).
"""

from __future__ import annotations

import argparse

from transformers_baichuan_audio.loading import load_model_and_processor
from transformers_baichuan_audio.training.precompute import precompute_audio_codes
from transformers_baichuan_audio.training.scripts import load_rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--shard_size", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    model, _ = load_model_and_processor(args.model, device="cpu", dtype="float32", training=True)
    audio_tokenizer = model.model.audio_tokenizer.to(args.device).eval()
    manifest = precompute_audio_codes(
        load_rows(args.dataset),
        audio_tokenizer,
        args.output_dir,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
    )
    print(f"{manifest['rows_done']} rows in {len(manifest['shards'])} shards under {args.output_dir}")


if __name__ == "__main__":
    main()
