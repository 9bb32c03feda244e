"""Benchmark of streaming code2wav: time per streamed chunk for phrases of several lengths, streaming vs one-shot
decode, first-chunk latency; the incremental path (default) and, optionally, the prefix re-decode reference.

Random weights, ``--size small`` (the tiny test config, default) or ``real`` (the released code2wav's sizes,
403 M parameters). For each phrase length of ``--seconds`` (default 4 8 16 32 s of audio, 12.5 code frames/s),
random codes are pushed frame by frame through ``streaming_decoder(...)`` (as the generation loop pushes them) and
each push that returns a chunk is timed (the mel of the completed U-Net chunk(s) + the vocoder's window), ``finish``
separately; then the one-shot ``decode`` of the same phrase, in the same run. Each measurement is repeated
``--repeats`` times (phrase lengths interleaved per repeat, so each sees the same machine load) and the minimum is
reported. Per phrase:

* ``chunk_seconds``: compute seconds of each returned chunk; ``last_over_first_chunk`` (1.0 = flat cost per chunk,
  the target is <= 1.2 at 32 s), ``max_over_first_chunk`` and ``last_over_second_chunk`` (the first chunk vocodes
  80 mel frames with no left context, the later ones 100 with context on both sides: from the second on, every
  chunk does the same work);
* ``first_chunk_seconds`` / ``first_chunk_after_frames`` / ``first_chunk_audio_seconds``: first-chunk latency,
  compute only (in a live stream add the time to generate ``first_chunk_after_frames`` frames);
* ``stream_seconds`` (every push + finish), ``stream_rtf`` (audio seconds per compute second: > 1 is faster than
  real time), ``one_shot_seconds``, ``one_shot_rtf`` and ``stream_over_one_shot`` (target <= 1.2);
  ``stream_minor_faults`` / ``one_shot_minor_faults``: pages first touched (mapped) during the stream / decode.

``--first-chunk-frames N`` (N < 25) also times a stream whose first chunk is provisional (after N frames; see
``modeling/code2wav_streaming.py``). ``--reference`` also times the prefix re-decode path (quadratic: slow at real
size). ``--left-chunks N [N ...]`` also times, per N, the bounded-context policy
``flow_matching_config.num_decoding_left_chunks = N`` (each U-Net chunk attends to the N chunks before it instead of
every earlier one): its stream against its own one-shot decode (``left_chunks_N``), and its one-shot mel against
the default's (same codes and noise): ``mel_error_max`` / ``mel_error_rms`` beside ``mel_range`` (random weights: a
measure of how far the policy moves this model, not of how it sounds with the released weights). ``--state-pool``
also times the stream on a ``StreamingStatePool`` that an untimed stream of a phrase of the same length has filled
(``warm_pool``: a turn's later phrase, up to the length of its longest earlier one; the default ``incremental`` is
a turn's first phrase, every state page new). ``--chunk-frames N [N ...]`` also times, per N, the schedule
``chunk_frames=N`` (a chunk returned every N frames: the U-Net chunks since the last one decoded in one pass, larger
products), with ``--state-pool`` also on a filled pool (``warm_pool_chunk_frames_N``). ``--flops`` also counts, in one more untimed stream and one-shot
decode per phrase length and variant (not ``warm_pool``: the same work as ``incremental``; not ``reference``), the
floating-point work of each returned chunk (``torch.utils.flop_counter`` with the CPU attention kernel counted,
``flop_count.py``): ``chunk_gflop``, ``flops_last_over_first_chunk`` and ``flops_last_over_second_chunk`` beside the
time ratios (what any implementation of the same mel computes: a time ratio cannot fall below its FLOP ratio unless
the chunks run at different efficiencies), ``one_shot_gflop`` and ``stream_over_one_shot_flops``. The last line
printed is one JSON object.

    python benchmarks/bench_code2wav_streaming.py --threads 1                       # small config, 4..32 s
    python benchmarks/bench_code2wav_streaming.py --size real --threads 1 --repeats 1 --seconds 4 8 16 32
    python benchmarks/bench_code2wav_streaming.py --size real --threads 2 --repeats 1 --left-chunks 1 2
    python benchmarks/bench_code2wav_streaming.py --size real --threads 2 --repeats 2 --seconds 8 16 --state-pool
    python benchmarks/bench_code2wav_streaming.py --size real --threads 2 --repeats 2 --seconds 8 --state-pool --chunk-frames 50
    python benchmarks/bench_code2wav_streaming.py --size real --threads 2 --repeats 1 --seconds 32 --left-chunks 1 --flops
    python benchmarks/bench_code2wav_streaming.py --size real --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import time

import torch
from flop_count import flop_counter

from transformers_baichuan_audio.configuration import BaichuanAudioCode2WavConfig, BaichuanAudioConfig
from transformers_baichuan_audio.modeling.code2wav import BaichuanAudioCode2Wav
from transformers_baichuan_audio.modeling.streaming_state import StreamingStatePool


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def minor_faults() -> int:
    """Minor page faults of this process so far (pages mapped at their first touch; Linux / macOS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def stream_times(model, codes, noise, steps, device, **decoder_kwargs):
    """([(frames pushed, seconds, samples) of each push that returned a chunk], seconds of finish, total seconds,
    minor page faults of the whole stream)."""
    faults = minor_faults()
    stream = model.streaming_decoder(noise=noise, num_steps=steps, **decoder_kwargs)
    chunks, total = [], 0.0
    for i in range(codes.shape[0]):
        _sync(device)
        start = time.perf_counter()
        out = stream.push(codes[i : i + 1])
        _sync(device)
        elapsed = time.perf_counter() - start
        total += elapsed
        if out.numel():
            chunks.append((i + 1, elapsed, out.numel()))
    _sync(device)
    start = time.perf_counter()
    stream.finish()
    _sync(device)
    finish_s = time.perf_counter() - start
    return chunks, finish_s, total + finish_s, minor_faults() - faults


def one_shot_time(model, codes, noise, steps, device) -> tuple[float, torch.Tensor, int]:
    """(seconds, mel (n_mels, T), minor page faults) of the one-shot decode."""
    faults = minor_faults()
    _sync(device)
    start = time.perf_counter()
    out = model.decode(codes, noise=noise[..., : 4 * codes.shape[0] - 1], num_steps=steps)
    _sync(device)
    return time.perf_counter() - start, out.mel[0], minor_faults() - faults


def stream_flops(model, codes, noise, steps, **decoder_kwargs) -> tuple[list[float], float]:
    """(GFLOP of each push that returned a chunk, GFLOP of the whole stream incl. ``finish``), untimed."""
    stream = model.streaming_decoder(noise=noise, num_steps=steps, **decoder_kwargs)
    chunks, total = [], 0.0
    for i in range(codes.shape[0]):
        with flop_counter() as counter:
            out = stream.push(codes[i : i + 1])
        total += counter.get_total_flops() / 1e9
        if out.numel():
            chunks.append(counter.get_total_flops() / 1e9)
    with flop_counter() as counter:
        stream.finish()
    return chunks, total + counter.get_total_flops() / 1e9


def one_shot_flops(model, codes, noise, steps) -> float:
    """GFLOP of the one-shot decode."""
    with flop_counter() as counter:
        model.decode(codes, noise=noise[..., : 4 * codes.shape[0] - 1], num_steps=steps)
    return counter.get_total_flops() / 1e9


def flop_summary(chunks: list[float], total: float, one_shot: float) -> dict:
    """The FLOP counterparts of :func:`summarise`'s ratios."""
    return {
        "chunk_gflop": [round(c, 2) for c in chunks],
        "flops_last_over_first_chunk": round(chunks[-1] / chunks[0], 3),
        "flops_last_over_second_chunk": round(chunks[-1] / chunks[1], 3) if len(chunks) > 2 else None,
        "stream_gflop": round(total, 2),
        "one_shot_gflop": round(one_shot, 2),
        "stream_over_one_shot_flops": round(total / one_shot, 3),
    }


@contextlib.contextmanager
def left_chunks(model, n: int):
    """``flow_matching_config.num_decoding_left_chunks = n`` inside the block."""
    fm = model.config.flow_matching_config
    before, fm.num_decoding_left_chunks = fm.num_decoding_left_chunks, n
    try:
        yield
    finally:
        fm.num_decoding_left_chunks = before


def summarise(runs, sampling_rate: int, audio_seconds: float, one_shot_s: float) -> dict:
    """Minimum over repeats of each chunk / finish / total, and the derived ratios."""
    chunks = [min(r[0][i][1] for r in runs) for i in range(len(runs[0][0]))]
    first_frames, _, first_samples = runs[0][0][0]
    total = min(r[2] for r in runs)
    return {
        "chunk_seconds": [round(c, 4) for c in chunks],
        "chunk_after_frames": [c[0] for c in runs[0][0]],
        "first_chunk_seconds": round(chunks[0], 4),
        "first_chunk_after_frames": first_frames,
        "first_chunk_audio_seconds": round(first_samples / sampling_rate, 3),
        "last_over_first_chunk": round(chunks[-1] / chunks[0], 3),
        "max_over_first_chunk": round(max(chunks) / chunks[0], 3),
        "last_over_second_chunk": round(chunks[-1] / chunks[1], 3) if len(chunks) > 2 else None,
        "finish_seconds": round(min(r[1] for r in runs), 4),
        "stream_seconds": round(total, 4),
        "stream_rtf": round(audio_seconds / total, 3),
        "stream_over_one_shot": round(total / one_shot_s, 3),
        "stream_minor_faults": min(r[3] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=["small", "real"], default="small")
    parser.add_argument("--seconds", type=float, nargs="+", default=[4.0, 8.0, 16.0, 32.0], help="phrase lengths")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the config's 10)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--first-chunk-frames", type=int, default=None, help="also time a provisional first chunk")
    parser.add_argument("--reference", action="store_true", help="also time the prefix re-decode reference path")
    parser.add_argument("--state-pool", action="store_true", help="also time a stream on a filled state pool")
    parser.add_argument(
        "--chunk-frames", type=int, nargs="*", default=[], help="also time chunk_frames = N (a multiple of 25)"
    )
    parser.add_argument("--flops", action="store_true", help="also count the work of each chunk (untimed runs)")
    parser.add_argument(
        "--left-chunks", type=int, nargs="*", default=[], help="also time num_decoding_left_chunks = N (per N)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = BaichuanAudioCode2WavConfig() if args.size == "real" else BaichuanAudioConfig.tiny().code2wav_config
    torch.manual_seed(0)
    model = BaichuanAudioCode2Wav(config).eval().to(device)
    rate, hop = config.vocoder_config.sampling_rate, config.vocoder_config.hop_length
    # name -> (streaming decoder kwargs, num_decoding_left_chunks)
    default_left = config.flow_matching_config.num_decoding_left_chunks
    variants = {"incremental": ({"incremental": True}, default_left)}
    if args.first_chunk_frames is not None:
        variants["provisional_first"] = (
            {"incremental": True, "first_chunk_frames": args.first_chunk_frames},
            default_left,
        )
    if args.reference:
        variants["reference"] = ({"incremental": False}, default_left)
    if args.state_pool:
        variants["warm_pool"] = ({"incremental": True}, default_left)  # + a filled pool per phrase length
    for n in args.chunk_frames:
        variants[f"chunk_frames_{n}"] = ({"incremental": True, "chunk_frames": n}, default_left)
        if args.state_pool:
            variants[f"warm_pool_chunk_frames_{n}"] = ({"incremental": True, "chunk_frames": n}, default_left)
    for n in args.left_chunks:
        variants[f"left_chunks_{n}"] = ({"incremental": True}, n)
    lefts = sorted({left for _, left in variants.values()})

    g = torch.Generator().manual_seed(0)
    phrases = []
    for seconds in args.seconds:
        frames = max(1, round(seconds * 12.5))
        codes = torch.stack([torch.randint(0, s, (frames,), generator=g) for s in config.codebook_sizes], dim=1)
        noise = torch.randn(1, config.flow_matching_config.in_channels, 4 * frames, generator=g)
        phrases.append((seconds, codes.to(device), noise.to(device), (4 * frames - 1) * hop / rate))

    runs = {(p[0], name): [] for p in phrases for name in variants}
    one_shot = {(p[0], left): [] for p in phrases for left in lefts}
    one_shot_faults = {(p[0], left): [] for p in phrases for left in lefts}
    mels = {}
    pools: dict[float, StreamingStatePool] = {}

    def decoder_kwargs(name: str, seconds: float, codes, noise) -> dict:
        kwargs = dict(variants[name][0])
        if name.startswith("warm_pool"):
            if seconds not in pools:  # filled by an untimed stream of another phrase of this length
                pools[seconds] = StreamingStatePool()
                other = torch.stack(
                    [torch.randint(0, s, (codes.shape[0],), generator=g) for s in config.codebook_sizes], 1
                )
                stream_times(
                    model, other.to(device), noise, args.steps, device, incremental=True, state_pool=pools[seconds]
                )
            kwargs["state_pool"] = pools[seconds]
        return kwargs

    with torch.no_grad():
        warm = phrases[0]
        stream_times(model, warm[1][:26], warm[2], 1, device)  # warm-up: one chunk, one Euler step
        one_shot_time(model, warm[1][:26], warm[2], 1, device)
        for repeat in range(args.repeats):
            for seconds, codes, noise, _ in phrases:
                for name, (_, left) in variants.items():
                    with left_chunks(model, left):
                        kwargs = decoder_kwargs(name, seconds, codes, noise)
                        runs[(seconds, name)].append(stream_times(model, codes, noise, args.steps, device, **kwargs))
                for left in lefts:
                    with left_chunks(model, left):
                        seconds_taken, mels[(seconds, left)], faults = one_shot_time(
                            model, codes, noise, args.steps, device
                        )
                    one_shot[(seconds, left)].append(seconds_taken)
                    one_shot_faults[(seconds, left)].append(faults)
                print(f"  repeat {repeat + 1}/{args.repeats}: {seconds:g} s phrase done", flush=True)
        flops = {}
        counted = [n for n in variants if not n.startswith("warm_pool") and n != "reference"] if args.flops else []
        for seconds, codes, noise, _ in phrases:
            for name in counted:
                kwargs, left = variants[name]
                with left_chunks(model, left):
                    chunks, total = stream_flops(model, codes, noise, args.steps, **kwargs)
                    one_shot_work = one_shot_flops(model, codes, noise, args.steps)
                flops[(seconds, name)] = flop_summary(chunks, total, one_shot_work)

    result = {
        "benchmark": "code2wav_streaming",
        "machine": platform.node() or platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "size": args.size,
        "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "threads": torch.get_num_threads(),
        "euler_steps": args.steps or config.flow_matching_config.diffusion_steps,
        "repeats": args.repeats,
        "phrases": [],
    }
    for seconds, codes, _, audio_seconds in phrases:
        decode_s = min(one_shot[(seconds, default_left)])
        entry = {
            "phrase_seconds": seconds,
            "frames": codes.shape[0],
            "audio_seconds": round(audio_seconds, 3),
            "one_shot_seconds": round(decode_s, 4),
            "one_shot_rtf": round(audio_seconds / decode_s, 3),
            "one_shot_minor_faults": min(one_shot_faults[(seconds, default_left)]),
        }
        exact = mels[(seconds, default_left)]
        for name, (_, left) in variants.items():
            own_s = min(one_shot[(seconds, left)])
            entry[name] = summarise(runs[(seconds, name)], rate, audio_seconds, own_s)
            entry[name].update(flops.get((seconds, name), {}))
            if left != default_left:
                error = mels[(seconds, left)] - exact
                entry[name].update(
                    one_shot_seconds=round(own_s, 4),
                    mel_error_max=round(error.abs().max().item(), 5),
                    mel_error_rms=round(error.square().mean().sqrt().item(), 5),
                    mel_range=round((exact.max() - exact.min()).item(), 3),
                )
        result["phrases"].append(entry)
        for name in variants:
            r = entry[name]
            own_s = r.get("one_shot_seconds", decode_s)
            error = f"; mel error {r['mel_error_max']} max / {r['mel_error_rms']} rms" if "mel_error_max" in r else ""
            print(
                f"{seconds:5g} s {name:17s}: first chunk {r['first_chunk_seconds']} s after {r['first_chunk_after_frames']}"
                f" frames ({r['first_chunk_audio_seconds']} s audio); chunks {r['chunk_seconds']} s; last/first "
                f"{r['last_over_first_chunk']}, max/first {r['max_over_first_chunk']}; stream {r['stream_seconds']} s"
                f" (RTF {r['stream_rtf']}) = {r['stream_over_one_shot']}x one-shot {own_s:.3f} s{error}; "
                f"{r['stream_minor_faults']} page faults (one-shot {entry['one_shot_minor_faults']})"
            )
            if "chunk_gflop" in r:
                print(
                    f"{'':9s}{'':17s}  work: chunks {r['chunk_gflop']} GFLOP; last/first {r['flops_last_over_first_chunk']}"
                    f"; stream {r['stream_gflop']} = {r['stream_over_one_shot_flops']}x one-shot {r['one_shot_gflop']} GFLOP"
                )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
