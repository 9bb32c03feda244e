"""Audio tokenizer encode throughput (seconds of audio per second), random weights.

Usage::

    python benchmarks/bench_audio_tokenizer.py                      # small config, CPU
    python benchmarks/bench_audio_tokenizer.py --device cuda        # real size (32 layers, d 1280) on GPU
    python benchmarks/bench_audio_tokenizer.py --size real --device cpu --seconds 30 --repeats 1   # slow

Times the model on precomputed features (encoder + bridge + RVQ) and, separately, the feature extractor (log-mel on
CPU). The last line of the output is one JSON object with the results.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from transformers import AutoModelForAudioTokenization

from transformers_baichuan_audio.configuration import BaichuanAudioTokenizerConfig
from transformers_baichuan_audio.processing.feature_extraction import BaichuanAudioFeatureExtractor

SMALL = {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 160}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["small", "real"], default=None, help="default: real on cuda, small on cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa / eager)")
    parser.add_argument("--batch", type=int, default=4, help="clips per call")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each clip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or ("real" if args.device.startswith("cuda") else "small")
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    config = BaichuanAudioTokenizerConfig(**(SMALL if size == "small" else {}))
    torch.manual_seed(0)
    model = AutoModelForAudioTokenization.from_config(config, attn_implementation=args.attn, dtype=dtype)
    model = model.to(args.device).eval()
    for stage in model.quantizer.codebooks:  # keep the codebooks in fp32, as from_pretrained does
        stage.embed.data = stage.embed.data.float()

    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal(int(args.seconds * 16000)) * 0.1).astype(np.float32) for _ in range(args.batch)]
    audio_seconds = args.batch * args.seconds

    fe = BaichuanAudioFeatureExtractor.from_tokenizer_config(model.config)
    t0 = time.perf_counter()
    feats = fe(clips, sampling_rate=16000)
    fe_time = time.perf_counter() - t0
    inputs = feats["input_features"].to(args.device, dtype)
    enc_len, bri_len = feats["encoder_length"].to(args.device), feats["bridge_length"].to(args.device)

    with torch.no_grad():
        for _ in range(args.warmup):
            model(inputs, enc_len, bri_len)
        _sync(args.device)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = model(inputs, enc_len, bri_len)
            _sync(args.device)
            times.append(time.perf_counter() - t0)
    best = min(times)
    result = {
        "benchmark": "audio_tokenizer_encode",
        "size": size,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": dtype_name,
        "attn_implementation": args.attn,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "clip_seconds": args.seconds,
        "pieces": int(inputs.shape[0]),
        "code_frames": int(out.audio_codes.shape[0]),
        "model_seconds_best": round(best, 4),
        "model_seconds_median": round(float(np.median(times)), 4),
        "model_audio_seconds_per_second": round(audio_seconds / best, 1),
        "feature_extraction_seconds": round(fe_time, 4),
        "feature_extraction_audio_seconds_per_second": round(audio_seconds / fe_time, 1),
        "end_to_end_audio_seconds_per_second": round(audio_seconds / (best + fe_time), 1),
    }
    print(f"encode {audio_seconds:.0f} s of audio: model {best:.3f} s, features {fe_time:.3f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
