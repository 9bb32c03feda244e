"""Benchmark of code2wav: real-time factor of decoding and time to the first streamed chunk.

Random weights. ``--size small`` is the tiny test config (default on CPU); ``--size real`` the released model's
sizes (default with ``--device cuda``). Reports, for a phrase of ``--seconds`` of audio (12.5 code frames/s):

* one-shot ``decode``: seconds of audio per second of compute (RTF > 1 = faster than real time), and the split
  between the reconstruction decoder + prenet, flow matching and the vocoder;
* streaming (frames pushed one by one, as generated): time to the first waveform chunk (compute only: the 25
  frames are pushed back to back, so add 2 s of frame generation at 12.5 Hz in a live system), and the RTF of the
  whole stream.

Paths compared in the same run (``--paths``, alternating, best of ``--repeats``; issue 24):

* ``masked``: the U-Net attention masked over every frame pair (the path before issue 24; padded batches use it);
* ``exact`` (default): a single segment applies the static chunk mask chunk by chunk (same numbers up to roundoff);
* ``bf16``: ``flow_matching_config.compute_dtype="bfloat16"`` (U-Net under autocast; the fast path, not
  parity-exact: its mel and waveform error against ``exact`` are reported);
* ``compiled`` (opt-in): ``compile_estimator()`` (``torch.compile`` of the U-Net, dynamic shapes, one graph at any
  length; the traced U-Net uses the masked attention): its compile time (the first decode), speed and mel error
  against ``exact``.

The roofline: the decode's floating-point work (``torch.utils.flop_counter``: matmuls and convolutions; attention
is counted from its shapes) divided by the time, as a fraction of the fp32 (and bf16) GEMM rate of a large square
matmul measured in the same run. The decode is compute-bound on a CPU, so that fraction bounds what any fp32 path
can gain.

The last line printed is one JSON object.

    python benchmarks/bench_code2wav.py                      # small config, CPU
    python benchmarks/bench_code2wav.py --device cuda        # real size, GPU
    python benchmarks/bench_code2wav.py --size real --seconds 3.2 --threads 2 --no-stream   # issue 24's figure
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from flop_count import flop_counter

from transformers_baichuan_audio.configuration import BaichuanAudioCode2WavConfig, BaichuanAudioConfig
from transformers_baichuan_audio.modeling.code2wav import BaichuanAudioCode2Wav


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def gemm_rate(device: torch.device, dtype: torch.dtype, n: int = 2048) -> float:
    """FLOP/s of an n x n x n matmul (best of 5)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(5):
        _, t = _timed(lambda: a @ b, device)
        best = min(best, t)
    return 2 * n**3 / best


def decode_flops(model, codes) -> float:
    """Floating-point operations of one ``decode`` (matmuls, convolutions and attention; ``flop_count.py``)."""
    with flop_counter() as counter:
        model.decode(codes, generator=torch.Generator(codes.device).manual_seed(0))
    return float(counter.get_total_flops())


def set_path(model, path: str, compiled=None) -> None:
    model.estimator.chunked_attention = path != "masked"
    model.config.flow_matching_config.compute_dtype = "bfloat16" if path == "bf16" else None
    model.compiled_estimator = compiled if path == "compiled" else None


def compare_paths(model, codes, device, paths, repeats, steps) -> dict:
    """Alternate the paths ``repeats`` times; best time of each, and the bf16 / compiled error against exact."""
    times = {p: [] for p in paths}
    outputs = {}
    result, compiled = {}, None
    if "compiled" in paths:
        compiled = model.compile_estimator()
        _, first = _timed(lambda: model.decode(codes, num_steps=steps), device)
        result["compiled_first_decode_seconds"] = round(first, 2)
    for _ in range(repeats):
        for path in paths:
            set_path(model, path, compiled)
            gen = torch.Generator(device).manual_seed(0)  # same CFM noise and NSF draws on every path
            out, t = _timed(lambda g=gen: model.decode(codes, num_steps=steps, generator=g), device)
            times[path].append(t)
            outputs[path] = out
    set_path(model, "exact")
    result.update({f"{p}_decode_seconds": round(min(v), 4) for p, v in times.items()})
    if "compiled" in paths and "exact" in paths:
        result["compiled_speedup_vs_exact"] = round(min(times["exact"]) / min(times["compiled"]), 3)
        mel_error = (outputs["compiled"].mel[0] - outputs["exact"].mel[0]).abs().max()
        result["compiled_vs_exact_max_abs_mel"] = float(mel_error)
    if "masked" in paths and "exact" in paths:
        result["exact_speedup_vs_masked"] = round(min(times["masked"]) / min(times["exact"]), 3)
        result["masked_vs_exact_max_abs_mel"] = float((outputs["masked"].mel[0] - outputs["exact"].mel[0]).abs().max())
    if "bf16" in paths:
        base = "exact" if "exact" in paths else paths[0]
        result["bf16_speedup_vs_exact"] = round(min(times[base]) / min(times["bf16"]), 3)
        if "masked" in paths:
            result["bf16_speedup_vs_masked"] = round(min(times["masked"]) / min(times["bf16"]), 3)
        mel, ref = outputs["bf16"].mel[0], outputs[base].mel[0]
        wave, ref_wave = outputs["bf16"].audio_values[0], outputs[base].audio_values[0]
        result["bf16_mel_max_abs_error"] = round(float((mel - ref).abs().max()), 5)
        result["bf16_mel_rms_error"] = round(float((mel - ref).pow(2).mean().sqrt()), 5)
        result["mel_range"] = round(float(ref.max() - ref.min()), 3)
        snr = 10 * torch.log10(ref_wave.pow(2).mean() / (wave - ref_wave).pow(2).mean().clamp_min(1e-30))
        result["bf16_waveform_snr_db"] = round(float(snr), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=["small", "real"], default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the config's 10)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument(
        "--paths",
        nargs="*",
        default=["masked", "exact", "bf16"],
        choices=["masked", "exact", "bf16", "compiled"],
        help="decode paths compared in the same run (see the module docstring)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = args.size or ("real" if device.type == "cuda" else "small")
    config = BaichuanAudioCode2WavConfig() if size == "real" else BaichuanAudioConfig.tiny().code2wav_config
    torch.manual_seed(0)
    model = BaichuanAudioCode2Wav(config).eval().to(device)
    frame_rate = config.sampling_rate / config.hop_length / 2 / config.avg_pooler  # 12.5 Hz
    frames = max(1, round(args.seconds * frame_rate))
    g = torch.Generator().manual_seed(0)
    codes = torch.stack([torch.randint(0, s, (frames,), generator=g) for s in config.codebook_sizes], dim=1).to(device)
    audio_seconds = (4 * frames - 1) * config.vocoder_config.hop_length / config.vocoder_config.sampling_rate

    with torch.no_grad():
        model.decode(codes[: min(frames, 8)], num_steps=1)  # warm-up
        paths = compare_paths(model, codes, device, args.paths, args.repeats, args.steps)
        decode_s = paths.get("exact_decode_seconds") or min(v for k, v in paths.items() if k.endswith("_seconds"))
        flops = (
            decode_flops(model, codes) if args.steps in (None, config.flow_matching_config.diffusion_steps) else None
        )
        fp32_rate = gemm_rate(device, torch.float32)
        bf16_rate = gemm_rate(device, torch.bfloat16)

        embeds, t_deq = _timed(lambda: model.dequantize(codes)[None], device)
        lengths = torch.tensor([frames], device=device)
        (hidden, hl), t_dec = _timed(lambda: model.decode_hidden(embeds, lengths), device)
        (mel, _), t_fm = _timed(lambda: model.flow_matching_mel(hidden, hl, num_steps=args.steps), device)
        _, t_voc = _timed(lambda: model.vocode(mel), device)

        result = {
            "benchmark": "code2wav",
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "size": size,
            "threads": torch.get_num_threads(),
            "euler_steps": args.steps or config.flow_matching_config.diffusion_steps,
            "frames": frames,
            "audio_seconds": round(audio_seconds, 3),
            "decode_seconds": round(decode_s, 4),
            "decode_rtf": round(audio_seconds / decode_s, 3),
            **paths,
            "decode_gflop": round(flops / 1e9, 1) if flops else None,
            "fp32_gemm_gflops": round(fp32_rate / 1e9, 1),
            "bf16_gemm_gflops": round(bf16_rate / 1e9, 1),
            "exact_fraction_of_fp32_gemm_peak": round(flops / decode_s / fp32_rate, 3) if flops else None,
            "exact_lower_bound_seconds_at_fp32_gemm_peak": round(flops / fp32_rate, 3) if flops else None,
            "stage_seconds": {
                "decoder": round(t_deq + t_dec, 4),
                "flow_matching": round(t_fm, 4),
                "vocoder": round(t_voc, 4),
            },
        }
        if not args.no_stream:
            stream = model.streaming_decoder(num_steps=args.steps)
            first, total_samples = None, 0
            _sync(device)
            start = time.perf_counter()
            for i in range(frames):
                chunk = stream.push(codes[i : i + 1])
                if chunk.numel() and first is None:
                    _sync(device)
                    first = (time.perf_counter() - start, i + 1, chunk.numel())
                total_samples += chunk.numel()
            total_samples += stream.finish().numel()
            _sync(device)
            stream_s = time.perf_counter() - start
            result.update(
                {
                    "stream_first_chunk_seconds": round(first[0], 4) if first else None,
                    "stream_first_chunk_after_frames": first[1] if first else None,
                    "stream_first_chunk_audio_seconds": round(first[2] / config.vocoder_config.sampling_rate, 3)
                    if first
                    else None,
                    "stream_seconds": round(stream_s, 4),
                    "stream_rtf": round(total_samples / config.vocoder_config.sampling_rate / stream_s, 3),
                }
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
