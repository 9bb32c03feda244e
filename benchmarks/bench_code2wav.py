"""Benchmark of code2wav: real-time factor of decoding and time to the first streamed chunk.

Random weights. ``--size small`` is the tiny test config (default on CPU); ``--size real`` the released model's
sizes (default with ``--device cuda``). Reports, for a phrase of ``--seconds`` of audio (12.5 code frames/s):

* one-shot ``decode``: seconds of audio per second of compute (RTF > 1 = faster than real time), and the split
  between the reconstruction decoder + prenet, flow matching and the vocoder;
* streaming (frames pushed one by one, as generated): time to the first waveform chunk (compute only: the 25
  frames are pushed back to back, so add 2 s of frame generation at 12.5 Hz in a live system), and the RTF of the
  whole stream.

The last line printed is one JSON object.

    python benchmarks/bench_code2wav.py                      # small config, CPU
    python benchmarks/bench_code2wav.py --device cuda        # real size, GPU
"""

from __future__ import annotations

import argparse
import json
import time

import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=["small", "real"], default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the config's 10)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-stream", action="store_true")
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
        times = []
        for _ in range(args.repeats):
            _, t = _timed(lambda: model.decode(codes, num_steps=args.steps), device)
            times.append(t)
        decode_s = min(times)

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
