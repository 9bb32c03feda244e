"""Benchmark of streaming code2wav: time per streamed chunk, incremental path vs the prefix re-decode reference.

Random weights, ``--size small`` (the tiny test config, default) or ``real``. A phrase of ``--seconds`` of audio
(12.5 code frames/s) is pushed frame by frame through ``streaming_decoder(incremental=...)`` for both paths, in the
same run; each push that completes a 25-frame (2 s) chunk is timed (mel chunk + the vocoder's window), and the
``finish`` call separately. Each path runs ``--repeats`` times, the minimum per chunk is reported. Reported:

* per-chunk seconds of both paths, the last chunk / first chunk ratio of each (1.0 = constant cost per chunk;
  the reference path grows with the prefix), the reference / incremental ratio per chunk and for the whole stream;
* the one-shot ``decode`` of the same phrase, and stream total / one-shot for both paths.

The last line printed is one JSON object.

    python benchmarks/bench_code2wav_streaming.py --seconds 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from transformers_baichuan_audio.configuration import BaichuanAudioCode2WavConfig, BaichuanAudioConfig
from transformers_baichuan_audio.modeling.code2wav import BaichuanAudioCode2Wav


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def stream_times(model, codes, noise, steps, incremental, device):
    """(seconds of each chunk-completing push, seconds of finish, total seconds) of one stream."""
    stream = model.streaming_decoder(noise=noise, num_steps=steps, incremental=incremental)
    chunk_s, total = [], 0.0
    for i in range(codes.shape[0]):
        _sync(device)
        start = time.perf_counter()
        out = stream.push(codes[i : i + 1])
        _sync(device)
        elapsed = time.perf_counter() - start
        total += elapsed
        if out.numel():
            chunk_s.append(elapsed)
    _sync(device)
    start = time.perf_counter()
    stream.finish()
    _sync(device)
    finish_s = time.perf_counter() - start
    return chunk_s, finish_s, total + finish_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=["small", "real"], default="small")
    parser.add_argument("--seconds", type=float, default=16.0)
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the config's 10)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = BaichuanAudioCode2WavConfig() if args.size == "real" else BaichuanAudioConfig.tiny().code2wav_config
    torch.manual_seed(0)
    model = BaichuanAudioCode2Wav(config).eval().to(device)
    frames = max(1, round(args.seconds * 12.5))
    g = torch.Generator().manual_seed(0)
    codes = torch.stack([torch.randint(0, s, (frames,), generator=g) for s in config.codebook_sizes], dim=1).to(device)
    noise = torch.randn(1, config.flow_matching_config.in_channels, 4 * frames, generator=g).to(device)
    audio_seconds = (4 * frames - 1) * config.vocoder_config.hop_length / config.vocoder_config.sampling_rate

    with torch.no_grad():
        stream_times(model, codes[:50], noise, 1, True, device)  # warm-up (both paths share the modules)
        stream_times(model, codes[:50], noise, 1, False, device)
        runs = {"incremental": [], "reference": []}
        for _ in range(args.repeats):  # interleaved, so both paths see the same machine load
            for name in runs:
                runs[name].append(stream_times(model, codes, noise, args.steps, name == "incremental", device))
        one_shot = []
        for _ in range(args.repeats):
            _sync(device)
            start = time.perf_counter()
            model.decode(codes, noise=noise[..., : 4 * frames - 1], num_steps=args.steps)
            _sync(device)
            one_shot.append(time.perf_counter() - start)
    decode_s = min(one_shot)

    result = {
        "benchmark": "code2wav_streaming",
        "machine": platform.node() or platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "size": args.size,
        "threads": torch.get_num_threads(),
        "euler_steps": args.steps or config.flow_matching_config.diffusion_steps,
        "frames": frames,
        "audio_seconds": round(audio_seconds, 3),
        "repeats": args.repeats,
        "one_shot_decode_seconds": round(decode_s, 4),
    }
    per_chunk = {}
    for name, rs in runs.items():
        chunks = [min(r[0][i] for r in rs) for i in range(len(rs[0][0]))]
        total = min(r[2] for r in rs)
        per_chunk[name] = chunks
        result[name] = {
            "chunk_seconds": [round(c, 4) for c in chunks],
            "finish_seconds": round(min(r[1] for r in rs), 4),
            "last_over_first_chunk": round(chunks[-1] / chunks[0], 3),
            "stream_seconds": round(total, 4),
            "stream_over_one_shot": round(total / decode_s, 3),
        }
    ref, inc = per_chunk["reference"], per_chunk["incremental"]
    result["reference_over_incremental_per_chunk"] = [round(r / i, 2) for r, i in zip(ref, inc, strict=True)]
    result["reference_over_incremental_stream"] = round(
        result["reference"]["stream_seconds"] / result["incremental"]["stream_seconds"], 3
    )
    for name in ("incremental", "reference"):
        r = result[name]
        print(
            f"{name:11s}: chunks {r['chunk_seconds']} s, last/first {r['last_over_first_chunk']}, "
            f"stream {r['stream_seconds']} s = {r['stream_over_one_shot']}x one-shot ({decode_s:.3f} s)"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
