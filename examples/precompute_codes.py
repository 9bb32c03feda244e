"""Pre-compute the audio codes of a training dataset with the audio tokenizer (batched, resumable, progress bar).

Every waveform audio part of the rows is replaced by its ``audio_codes``; the output directory holds JSON-lines shards
and a ``manifest.json``. Re-running the same command after an interruption continues where it stopped (no row is
duplicated or lost). Train on the output directory directly (``--dataset OUT`` of the training examples).

Examples::

    python examples/precompute_codes.py --model ./baichuan-audio-hf --dataset rows.jsonl --output_dir codes --device cuda
    python examples/precompute_codes.py --model tiny-random --dataset rows.jsonl --output_dir codes
    # N processes, each encodes one contiguous block of rows (resumable per rank), then one merged manifest:
    accelerate launch --num_processes 8 examples/precompute_codes.py --model ./baichuan-audio-hf \
        --dataset rows.jsonl --output_dir codes --device cuda
    accelerate launch --config_file examples/accelerate/ddp_cpu.yaml examples/precompute_codes.py ...  # CPUs

Arguments: ``--model`` (a converted checkpoint whose audio tokenizer is used, or ``tiny-random``), ``--dataset``
(JSON lines / saved dataset), ``--output_dir``, ``--batch_size`` (16 rows per encoder call), ``--shard_size``
(1024 rows per shard file), ``--device`` (cpu; ``cuda`` = each process its own GPU). Under ``accelerate launch``
the output is ``OUT/rank-*-of-*/`` plus ``OUT/manifest.json`` listing every rank's shards in row order; re-run with
the same number of processes to resume.
"""

from __future__ import annotations

import argparse

from transformers_baichuan_audio.loading import load_model_and_processor
from transformers_baichuan_audio.training.precompute import (
    merge_shard_manifests,
    precompute_audio_codes,
    precompute_audio_codes_shard,
)
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
    from accelerate import PartialState

    state = PartialState(cpu=not args.device.startswith("cuda"))  # one process unless launched with several
    device = state.device if args.device.startswith("cuda") and state.num_processes > 1 else args.device
    model, _ = load_model_and_processor(args.model, device="cpu", dtype="float32", training=True)
    audio_tokenizer = model.model.audio_tokenizer.to(device).eval()
    options = dict(batch_size=args.batch_size, shard_size=args.shard_size, progress=state.is_main_process)
    rows = load_rows(args.dataset)
    if state.num_processes == 1:
        manifest = precompute_audio_codes(rows, audio_tokenizer, args.output_dir, **options)
    else:
        rank, world = state.process_index, state.num_processes
        part = precompute_audio_codes_shard(rows, audio_tokenizer, args.output_dir, rank, world, **options)
        print(f"rank {rank}: rows {part['start']}-{part['stop']} done")
        state.wait_for_everyone()
        manifest = merge_shard_manifests(args.output_dir, world) if state.is_main_process else None
    if manifest is not None:
        print(f"{manifest['rows_done']} rows in {len(manifest['shards'])} shards under {args.output_dir}")


if __name__ == "__main__":
    main()
