"""Audio-code pre-computation throughput, clips/s per process, with 1 and N processes each taking a shard
(``precompute_audio_codes_shard``, as ``accelerate launch examples/precompute_codes.py`` runs it), random weights.

Usage::

    python benchmarks/bench_precompute.py                       # tiny audio tokenizer, 1 and 2 CPU processes
    python benchmarks/bench_precompute.py --processes 1 2 4 --clips 64 --seconds 8

Each process runs with one torch thread on its own block of clips (4 s of noise each by default) and reports its
encode time; the wall time includes the merge of the manifests. The last line of the output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time


def make_rows(clips: int, seconds: float) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [
        {
            "task": "asr",
            "messages": [
                {"role": "user", "content": [{"type": "audio", "array": (rng.standard_normal(int(16000 * seconds))
                                                                          * 0.1).tolist(), "sampling_rate": 16000}]},
                {"role": "assistant", "content": [{"type": "text", "text": f"clip {i}"}]},
            ],
        }
        for i in range(clips)
    ]  # fmt: skip


def worker(args):
    rank, world, rows, out, batch_size = args
    import torch

    from transformers_baichuan_audio.configuration import BaichuanAudioConfig
    from transformers_baichuan_audio.modeling.audio_tokenizer import BaichuanAudioTokenizerModel
    from transformers_baichuan_audio.training.precompute import precompute_audio_codes_shard

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = BaichuanAudioTokenizerModel(BaichuanAudioConfig.tiny().audio_tokenizer_config).eval()
    start = time.perf_counter()
    part = precompute_audio_codes_shard(rows, tokenizer, out, rank, world, batch_size=batch_size, progress=False)
    return part["stop"] - part["start"], time.perf_counter() - start


def run(world: int, rows: list[dict], batch_size: int) -> dict:
    from transformers_baichuan_audio.training.precompute import merge_shard_manifests

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        with mp.get_context("spawn").Pool(world) as pool:
            results = pool.map(worker, [(r, world, rows, out, batch_size) for r in range(world)])
        merge_shard_manifests(out, world)
        wall = time.perf_counter() - start
    per_process = [n / t for n, t in results]
    return {"processes": world, "clips_per_s_per_process": per_process, "clips_per_s_total": len(rows) / wall,
            "wall_s": wall}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    rows = make_rows(args.clips, args.seconds)
    results = []
    for world in args.processes:
        result = run(world, rows, args.batch_size)
        per = ", ".join(f"{x:.1f}" for x in result["clips_per_s_per_process"])
        print(f"{world} process(es): {per} clips/s per process; {result['clips_per_s_total']:.1f} clips/s overall "
              f"(wall {result['wall_s']:.1f} s incl. process start)")  # fmt: skip
        results.append(result)
    print(json.dumps({"clips": args.clips, "seconds": args.seconds, "results": results}))


if __name__ == "__main__":
    main()
