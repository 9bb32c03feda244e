"""Benchmark of the evaluation harness's batching: examples per second of ``asr`` (base ASR prompt) and ``spoken-qa``
S->T (text answers) at several ``--batch-size`` values, measured in one run (issue 20).

Synthetic clips of 1-4 s (speech-like tones, lengths spread so batches are left-padded), greedy decoding, the
tiny random model by default (``--model DIR`` for converted weights). The batch sizes are run alternately
(``--repeats`` rounds, best round kept per size) so that a load change on a shared machine hits them alike; the
process's CPU time is reported beside the wall time (less sensitive to other processes on a loaded machine). Also
reports how many outputs differ from batch size 1 (greedy: 0 expected, up to the audio tokenizer's original
batch-padding quirk, see the README).

The last line printed is one JSON object.

    python benchmarks/bench_eval.py                               # tiny-random, CPU
    python benchmarks/bench_eval.py --model DIR --device cuda --examples 64 --batch-sizes 1 8 32
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from transformers_baichuan_audio.chat import SpeechChat
from transformers_baichuan_audio.evaluation.tasks import answer_batch, transcribe_batch
from transformers_baichuan_audio.loading import generation_kwargs_for, load_model_and_processor


def clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = np.arange(int(rng.uniform(1.0, 4.0) * 16000)) / 16000
        f0 = rng.uniform(120, 260)
        out.append((0.2 * np.sin(2 * np.pi * f0 * t) * np.sin(2 * np.pi * 2.5 * t)).astype(np.float32))
    return out


def run_task(chat, name: str, waves: list[np.ndarray], batch: int) -> tuple[float, float, list[str]]:
    """Wall seconds, CPU seconds of this process (all threads) and the outputs of one pass over ``waves``."""
    start, cpu = time.perf_counter(), time.process_time()
    texts: list[str] = []
    for i in range(0, len(waves), batch):
        part = waves[i : i + batch]
        if name == "asr":
            texts += transcribe_batch(chat, part)
        else:
            texts += [a["text"] for a in answer_batch(chat, part, speak=False)]
    if chat.model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tasks", nargs="+", default=["asr", "spoken-qa"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, processor = load_model_and_processor(args.model, device=args.device)
    chat = SpeechChat(model, processor, dict(generation_kwargs_for(args.model), do_sample=False))
    waves = clips(args.examples)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "model": args.model,
        "examples": args.examples,
        "audio_s": sum(w.shape[0] for w in waves) / 16000,
    }
    for name in args.tasks:
        run_task(chat, name, waves[:2], 2)  # warm-up
        best = {b: float("inf") for b in args.batch_sizes}
        best_cpu = dict(best)
        outputs = {}
        for _ in range(args.repeats):
            for b in args.batch_sizes:
                seconds, cpu, texts = run_task(chat, name, waves, b)
                best[b], best_cpu[b] = min(best[b], seconds), min(best_cpu[b], cpu)
                outputs[b] = texts
        base = args.batch_sizes[0]
        rows = {}
        for b in args.batch_sizes:
            rows[b] = {
                "examples_per_s": args.examples / best[b],
                "speedup_vs_first": best[base] / best[b],
                "cpu_s_per_example": best_cpu[b] / args.examples,
                "cpu_speedup_vs_first": best_cpu[base] / best_cpu[b],
                "outputs_differing_from_first": sum(x != y for x, y in zip(outputs[b], outputs[base], strict=True)),
            }
            print(
                f"{name:9s} batch {b:3d}: {rows[b]['examples_per_s']:.2f} examples/s "
                f"({rows[b]['speedup_vs_first']:.2f}x batch {base}; CPU time {rows[b]['cpu_speedup_vs_first']:.2f}x), "
                f"{rows[b]['outputs_differing_from_first']} outputs differ"
            )
        report[name] = rows
    print(json.dumps(report))


if __name__ == "__main__":
    main()
