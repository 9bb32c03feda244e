"""Benchmark of ``baichuan-audio serve`` (the OpenAI-compatible server with dynamic batching). Not a test.

In one process: a uvicorn server on loopback serving ``--model`` (default ``tiny-random``: random weights, no
download) and the official ``openai`` client. The same ``--requests`` spoken-answer chat requests (distinct text
questions, ``modalities: ["text", "audio"]``, wav answers, greedy) are run

* sequentially through ``SpeechChat.answer`` (batch-1 ``generate`` + code2wav decode, no HTTP): the baseline;
* through the server at each ``--concurrency`` level (that many clients at once; the server batches requests that
  arrive within ``--batch-window-ms`` into one ``generate``, up to ``--max-batch-size`` rows);
* generation alone, without HTTP and without code2wav: ``generate`` of each prompt in turn
  (``generate_sequential``) against one left-padded batched ``generate`` of all of them (``generate_batched``): the
  ceiling of what batching saves on the LLM + audio head; speech seconds there are code frames / 12.5.

In the served figures each request's speech is decoded by code2wav (not batched): in its own consumer thread with
``--decode-priority overlap`` (the server's default), or in the batcher's thread between generation steps with
``inline``; the served gain is bounded by the decode share of a request.

``--size 0.5b`` serves, instead of ``--model``, the random 0.5B-class model of ``bench_generation.py`` (real-size
audio tokenizer, audio head and code2wav) built in this process, with its offline byte-level tokenizer; random
weights, so each answer is forced into one spoken phrase: ``--text-tokens`` text tokens, then ``--audio-frames``
code frames (no ``<audiogen_end>`` before them).

Each configuration runs ``--rounds`` times, alternating (other processes may load the machine), and the best round
is reported. Figures: requests/s, seconds of generated speech per second, and the gain over the sequential baseline
(requests/s ratio). The last output line is one JSON object. Example::

    python benchmarks/bench_serve.py --requests 8 --concurrency 1 4 8
    python benchmarks/bench_serve.py --size 0.5b --threads 2 --requests 4 --concurrency 4 --rounds 1 \
        --decode-priority inline
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile as sf
import torch


def random_half_billion(args):
    """(model, processor, generate kwargs) of ``--size 0.5b``: ``bench_generation.py``'s model and tokenizer, answers
    forced into ``--text-tokens`` text tokens and one phrase of ``--audio-frames`` frames."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_generation

    from transformers_baichuan_audio.tiny_random import restrict_text_head

    config = bench_generation.build_config(args.size)
    model = bench_generation.build_model(config, torch.float32, "cpu" if args.device == "auto" else args.device)
    processor = bench_generation.turn_processor(config)
    restrict_text_head(model, processor.tokenizer)
    kwargs = dict(
        do_sample=False,
        text_segment_max_new_tokens=args.text_tokens,
        audio_min_frames=args.audio_frames,
        audio_max_frames=args.audio_frames,
        max_rounds=1,
    )
    return model, processor, kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--batch-window-ms", type=float, default=20.0)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", choices=["0.5b"], default=None, help="serve bench_generation's random 0.5B model")
    parser.add_argument("--text-tokens", type=int, default=10, help="--size 0.5b: text tokens per answer")
    parser.add_argument("--audio-frames", type=int, default=30, help="--size 0.5b: code frames per answer")
    parser.add_argument("--decode-priority", choices=["overlap", "inline"], default="overlap")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import openai

    from transformers_baichuan_audio import loading
    from transformers_baichuan_audio.chat import SpeechChat
    from transformers_baichuan_audio.serving.app import build_app
    from transformers_baichuan_audio.serving.cli import serve_in_thread
    from transformers_baichuan_audio.serving.engine import ServingEngine
    from transformers_baichuan_audio.serving.limits import ServeLimits

    if args.size:
        model, processor, kwargs = random_half_billion(args)
        args.model = f"random-{args.size}"
    else:
        model, processor = loading.load_model_and_processor(args.model, device=args.device)
        kwargs = {**loading.generation_kwargs_for(args.model), "do_sample": False}
    chat = SpeechChat(model, processor, dict(kwargs))
    baseline = SpeechChat(model, processor, dict(kwargs))
    limits = ServeLimits(
        max_batch_size=args.max_batch_size, batch_window_ms=args.batch_window_ms, max_queue=4 * args.requests
    )
    engine = ServingEngine(chat, limits, decode_priority=args.decode_priority)
    server, thread, base_url = serve_in_thread(build_app(engine, args.model))
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=600)
    questions = [f"Question {i}: what is the weather like?" for i in range(args.requests)]

    def sequential() -> tuple[float, float]:
        start, audio = time.perf_counter(), 0.0
        for q in questions:
            out = baseline.answer([{"role": "user", "content": [{"type": "text", "text": q}]}])
            audio += 0.0 if out.audio is None else out.audio.numel() / 24000
        return time.perf_counter() - start, audio

    def one(q: str) -> float:
        r = client.chat.completions.create(
            model=args.model,
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"},
            messages=[{"role": "user", "content": q}],
        )
        wave, rate = sf.read(io.BytesIO(base64.b64decode(r.choices[0].message.audio.data)))
        return wave.shape[0] / rate

    def served(concurrency: int) -> tuple[float, float]:
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            audio = sum(pool.map(one, questions))
        return time.perf_counter() - start, audio

    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": q}]}],
            audio_output=True,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )["input_ids"][0]
        for q in questions
    ]
    gen_kwargs = dict(kwargs, output_audio=True, speech_mode="chat", tokenizer=processor.tokenizer)

    def frames_seconds(out) -> float:
        return sum(c.shape[0] for row in out.audio_codes for c in row) / 12.5  # 12.5 code frames per second

    def generate_sequential() -> tuple[float, float]:
        start, audio = time.perf_counter(), 0.0
        for ids in prompts:
            audio += frames_seconds(model.generate(ids[None].to(model.device), **gen_kwargs))
        return time.perf_counter() - start, audio

    def generate_batched() -> tuple[float, float]:
        width = max(ids.shape[0] for ids in prompts)
        batch = torch.full((len(prompts), width), int(model.config.pad_token_id), dtype=torch.long)
        mask = torch.zeros_like(batch)
        for r, ids in enumerate(prompts):
            batch[r, width - ids.shape[0] :], mask[r, width - ids.shape[0] :] = ids, 1
        start = time.perf_counter()
        out = model.generate(batch.to(model.device), attention_mask=mask.to(model.device), **gen_kwargs)
        return time.perf_counter() - start, frames_seconds(out)

    one(questions[0])  # warm-up (first-call allocations)
    configs = {
        "sequential": sequential,
        "generate_sequential": generate_sequential,
        "generate_batched": generate_batched,
        **{f"c{c}": (lambda c=c: served(c)) for c in args.concurrency},
    }
    best: dict[str, tuple[float, float]] = {}
    for round_ in range(args.rounds):
        for name, run in configs.items():
            before = engine.batcher.stats()["batches_run"]
            seconds, audio = run()
            batches = engine.batcher.stats()["batches_run"] - before
            print(f"round {round_} {name}: {seconds:.2f} s, {audio:.1f} s of speech, {batches} batched generate calls")
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, audio)
    server.should_exit = True
    thread.join(10)

    n = len(questions)
    result = {
        "benchmark": "serve",
        "model": args.model,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
        "requests": n,
        "rounds": args.rounds,
        "batch_window_ms": args.batch_window_ms,
        "max_batch_size": args.max_batch_size,
        "decode_priority": args.decode_priority,
    }
    for name, (seconds, audio) in best.items():
        result[f"{name}_requests_per_s"] = round(n / seconds, 3)
        result[f"{name}_audio_s_per_s"] = round(audio / seconds, 3)
        reference = "generate_sequential" if name == "generate_batched" else "sequential"
        if name != reference and name != "generate_sequential":
            result[f"{name}_gain_vs_{reference}"] = round(best[reference][0] / seconds, 3)
    for key, value in result.items():
        print(f"{key}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
