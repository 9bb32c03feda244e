"""Benchmark of Baichuan-Audio speech generation (random weights, no downloads). Not a test.

Sizes (``--size``):

* ``small``: ``BaichuanAudioConfig.tiny()``.
* ``0.5b``: LLM shaped like Qwen2.5-0.5B (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab
  152064, untied LM head); audio embeddings and audio head of the real structure at hidden 896 (3 layers, 7 heads of
  128, per-position FFN 1792); audio tokenizer and code2wav at their real sizes.
* ``real``: the released 10B configuration (``BaichuanAudioConfig()``); GPU only.

Measured (``--dtype`` fp32 / bf16 for the LLM and the audio head; code2wav runs in fp32):

* memory bandwidth of the machine (sum of a large tensor, same run);
* text tokens/s (``speech_mode="text"``, greedy, steady state after the first token);
* audio frames/s (``speech_mode="tts"``: a text prompt ending with ``<audiogen_start>``; end-of-audio suppressed so
  every run produces ``--frames`` frames), RTF = generation time / duration of the generated speech (12.5 frames/s);
* bytes of weights read per audio frame (LLM layers + the audio head's 8 incremental positions + 8 embedding rows;
  the text LM head is not run on audio steps) / time per frame, next to the measured bandwidth (the roofline);
* time to first audio chunk: from the ``generate`` call to the first waveform chunk out of the streamer (code2wav
  streaming decoder in the consuming thread), next to the bound ``25 frames x time per frame + one chunk decode``;
* ``--turn``: time to first audio of a whole speech-chat turn (issue 18): a synthetic user clip of
  ``--clip-seconds`` goes through :class:`~transformers_baichuan_audio.chat.SpeechChat` as the demo runs it (feature
  extraction, the real-size audio tokenizer, the chat prompt, prefill, a text phrase, ``<audiogen_start>``, audio
  frames, the streaming code2wav decoder), from the clip in hand to the first waveform samples, for the default
  chunk schedule (first chunk after 25 frames) and for a provisional first chunk (``--first-chunk-frames``). With
  random weights the phrase is forced: ``--turn-text-tokens`` text tokens (``text_segment_max_new_tokens``) then the
  switch, and no end-of-audio before the first chunk (``audio_min_frames``). The model then uses the special-token
  ids of the offline tiny-random tokenizer (``tiny_random_processor``: byte-level, so the text is noise);
* peak memory (CPU: max RSS; GPU: max allocated).

Decoding paths: ``--cache static`` preallocates the LLM cache (``StaticCache``); ``--compile`` (implies the static
cache) compiles the single-token LLM steps and the audio head's positions (see
``transformers_baichuan_audio.modeling.decode_steps``): on CUDA with ``CompileConfig()`` (CUDA graphs), on CPU with
inductor, frozen weights and its own C++ GEMV (``max_autotune`` with the ``CPP`` GEMM backend). Compilation happens
in the warm-up call (``warmup_s``); the eager loop's frames/s is measured first in the same process
(``eager_audio_frames_per_s``, ``speedup_vs_eager``).

The memory bandwidth is measured before and after the generation runs; the larger figure is the roofline.

The last output line is one JSON object with all figures. Example::

    python benchmarks/bench_generation.py --size 0.5b --dtype bf16 --frames 40
    python benchmarks/bench_generation.py --size 0.5b --compile
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time

import torch
from transformers import CompileConfig

from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration
from transformers_baichuan_audio.modeling.streamer import BaichuanAudioStreamer

QWEN25_05B = {
    "model_type": "qwen2",
    "vocab_size": 152064,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": False,
    "use_sliding_window": False,
}

SpeechModel = BaichuanAudioForConditionalGeneration


def build_config(size: str, **token_ids) -> BaichuanAudioConfig:
    """``token_ids``: special-token id overrides (``--turn``: those of the tiny-random tokenizer)."""
    text_ids = {k: token_ids[k] for k in ("eos_token_id", "pad_token_id") if k in token_ids}
    if size == "small":
        return BaichuanAudioConfig.tiny(**token_ids)
    if size == "0.5b":
        return BaichuanAudioConfig(
            text_config={**QWEN25_05B, **text_ids},
            audio_head_config={"num_attention_heads": 7, "intermediate_size": 1792},
            **token_ids,
        )
    if size == "real":
        return BaichuanAudioConfig(text_config=text_ids, **token_ids) if token_ids else BaichuanAudioConfig()
    raise ValueError(size)


def turn_processor():
    """The offline tiny-random processor and its special-token ids as config overrides."""
    from transformers_baichuan_audio.configuration import TOKEN_ID_FIELDS
    from transformers_baichuan_audio.tiny_random import tiny_random_processor

    processor = tiny_random_processor()
    tok = processor.tokenizer
    ids = {name: processor.special_token_ids[name] for name in TOKEN_ID_FIELDS}
    ids.update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return processor, ids


def bench_turn(model, processor, clip_seconds: float, text_tokens: int, first_chunk_frames: int | None) -> dict:
    """One speech-chat turn from a user clip to the first waveform samples (the rest of the turn is cancelled)."""
    import numpy as np

    from transformers_baichuan_audio.chat import SpeechChat

    frames = 26  # one frame past the default first chunk
    caps = dict(
        DECODE_KWARGS,
        do_sample=False,
        repetition_penalty=1.0,
        audio_repetition_penalty=1.0,
        text_segment_max_new_tokens=text_tokens,
        max_new_tokens=text_tokens + 4,
        audio_min_frames=frames,
        audio_max_frames=frames,
        max_rounds=1,
    )
    chat = SpeechChat(model, processor, caps, first_chunk_frames=first_chunk_frames)
    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * clip_seconds)) / 16000
    clip = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    t0 = time.perf_counter()
    messages = [chat.user_message(audio=(16000, clip))]
    result: dict = {}
    for event in chat.stream_turn(messages):
        if event.kind == "audio":
            result["first_audio_s"] = time.perf_counter() - t0
            result["first_audio_samples"] = int(event.audio.numel())
            break  # leaving the stream stops the turn
    return result


def build_model(config: BaichuanAudioConfig, dtype: torch.dtype, device: str):
    with torch.device(device):
        model = SpeechModel._from_config(config, dtype=dtype)
    model.eval()
    if getattr(model, "code2wav", None) is not None:
        model.code2wav.float()
    if getattr(model.model, "audio_tokenizer", None) is not None:
        model.model.audio_tokenizer.float()
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_gemv_bandwidth(device: str, dtype: torch.dtype, gib: float) -> float:
    """Bytes/s of weights streamed by batch-1 matrix-vector products (a stack of 896x4864 matrices, LLM-MLP sized,
    together ``gib`` GiB so nothing stays in cache): what eager decode can reach with torch's own kernels (MKL runs
    this GEMV on one thread), next to the ``sum`` bandwidth of :func:`measure_bandwidth`. The compiled path uses
    inductor's GEMV instead and can exceed it."""
    rows, cols = 4864, 896
    count = max(1, int(gib * 2**30) // (rows * cols * torch.finfo(dtype).bits // 8))
    weights = [torch.randn(rows, cols, device=device).to(dtype) for _ in range(count)]
    x = torch.randn(1, cols, device=device).to(dtype)
    best = float("inf")
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        for w in weights:
            x @ w.T
        sync(device)
        best = min(best, time.perf_counter() - t)
    return sum(w.numel() * w.element_size() for w in weights) / best


def measure_bandwidth(device: str, gib: float) -> float:
    """Bytes/s of reading a large fp32 tensor (best of 5 sums)."""
    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32, device=device)
    x.sum()
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        x.sum()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def weight_bytes_per_frame(model) -> int:
    """Weights read by one audio frame: LLM layers + final norm, one row of each audio embedding table, and for each
    of the audio head's codebook positions its attention / norms, its own FFN and its classifier."""
    lm = model.model.language_model
    total = sum(p.numel() * p.element_size() for n, p in lm.named_parameters() if not n.startswith("embed_tokens"))
    hidden = model.config.text_config.hidden_size
    element = lm.norm.weight.element_size()
    head = model.audio_head
    total += head.num_codebooks * hidden * element  # embedding rows of the fed frame
    for position in range(head.num_codebooks):
        for layer in head.layers:
            for module in (layer.input_layernorm, layer.self_attn, layer.post_attention_layernorm, layer.mlp[position]):
                total += sum(p.numel() * p.element_size() for p in module.parameters())
        total += sum(
            p.numel() * p.element_size() for p in (*head.norm.parameters(), *head.heads[position].parameters())
        )
    return total


class TimingStreamer(BaichuanAudioStreamer):
    """Records the producer-side time of every text token / audio frame."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.text_times: list[float] = []
        self.frame_times: list[float] = []

    def put_text(self, row, token_ids):
        self.text_times.append(time.perf_counter())
        super().put_text(row, token_ids)

    def put_audio(self, row, codes):
        self.frame_times.append(time.perf_counter())
        super().put_audio(row, codes)


def steady_rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


def prompt_ids(config, length: int, device: str, audiogen: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 150000, (1, length), generator=g)
    if audiogen:
        ids[0, -1] = config.audiogen_start_token_id
    return ids.to(device)


def bench_text(model, config, device, prompt_len, tokens) -> dict:
    streamer = TimingStreamer()
    ids = prompt_ids(config, prompt_len, device, audiogen=False)
    kwargs = dict(output_audio=True, speech_mode="text", do_sample=False, repetition_penalty=1.0, **DECODE_KWARGS)
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=tokens, eos_token_id=[-1], streamer=streamer, **kwargs)
    total = time.perf_counter() - t0
    return {
        "text_tokens": len(streamer.text_times),
        "text_tokens_per_s": steady_rate(streamer.text_times),
        "text_time_to_first_token_s": streamer.text_times[0] - t0 if streamer.text_times else None,
        "text_total_s": total,
    }


#: Decoding-path arguments of every generate call (set in main from --cache / --compile).
DECODE_KWARGS: dict = {}


def compile_config_for(device: str) -> CompileConfig:
    """CUDA: transformers' default (``mode="reduce-overhead"``: CUDA graphs). CPU: inductor with frozen weights and
    its C++ GEMM template (multi-threaded GEMV; MKL's batch-1 GEMV runs on one thread)."""
    if device.startswith("cuda"):
        return CompileConfig(dynamic=False)
    options = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
    return CompileConfig(dynamic=False, mode=None, options=options)


def tts_kwargs(frames: int) -> dict:
    return dict(
        **DECODE_KWARGS,
        output_audio=True,
        speech_mode="tts",
        do_sample=False,
        audio_repetition_penalty=1.0,
        audio_min_frames=frames,
        audio_max_frames=frames,
    )


def bench_audio(model, config, device, prompt_len, frames) -> dict:
    streamer = TimingStreamer()
    ids = prompt_ids(config, prompt_len, device, audiogen=True)
    t0 = time.perf_counter()
    out = model.generate(ids, streamer=streamer, **tts_kwargs(frames))
    total = time.perf_counter() - t0
    rate = steady_rate(streamer.frame_times)
    frame_rate = config.audio_tokenizer_config.frame_rate
    return {
        "audio_frames": int(out.audio_codes[0][0].shape[0]),
        "audio_frames_per_s": rate,
        "audio_time_per_frame_s": 1.0 / rate,
        "audio_first_frame_s": streamer.frame_times[0] - t0,
        "audio_total_s": total,
        "rtf": frame_rate / rate,  # seconds of compute per second of speech (codes only)
    }


def bench_first_audio(model, config, device, prompt_len, frames) -> dict:
    if getattr(model, "code2wav", None) is None:
        return {}
    ids = prompt_ids(config, prompt_len, device, audiogen=True)
    streamer = BaichuanAudioStreamer(code2wav=model.code2wav, timeout=3600)
    result: dict = {}
    t0 = time.perf_counter()

    def produce():
        with torch.inference_mode():  # as the caller (grad mode is per thread; compiled graphs are guarded on it)
            model.generate(ids, streamer=streamer, **tts_kwargs(frames))

    thread = threading.Thread(target=produce)
    thread.start()
    samples = 0
    for event in streamer:
        if event.waveform is not None and event.waveform.numel():
            if "first" not in result:
                result["first"] = time.perf_counter() - t0
            samples += event.waveform.numel()
    thread.join()
    total = time.perf_counter() - t0

    # One chunk decode, alone: push frames_per_chunk random frames into a fresh streaming decoder.
    decoder = model.code2wav.streaming_decoder()
    per_chunk = decoder.frames_per_chunk
    sizes = torch.tensor(config.codebook_sizes)
    codes = (torch.rand(per_chunk, len(sizes)) * sizes).long().to(model.code2wav.device)
    for i in range(per_chunk - 1):
        decoder.push(codes[i : i + 1])
    sync(device)
    t = time.perf_counter()
    decoder.push(codes[per_chunk - 1 :])
    sync(device)
    chunk_decode = time.perf_counter() - t
    sampling_rate = config.code2wav_config.vocoder_config.sampling_rate
    return {
        "time_to_first_audio_chunk_s": result.get("first"),
        "frames_per_decoder_chunk": per_chunk,
        "chunk_decode_s": chunk_decode,
        "streamed_total_s": total,
        "streamed_audio_s": samples / sampling_rate,
        "rtf_with_decode": total / (samples / sampling_rate) if samples else None,
    }


def peak_memory(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["small", "0.5b", "real"], default="small")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=None, help="audio frames per run (default by size)")
    parser.add_argument("--text-tokens", type=int, default=None)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--bandwidth-gib", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--no-first-audio", action="store_true", help="skip the streamed time-to-first-audio run")
    parser.add_argument("--cache", choices=["dynamic", "static"], default="dynamic", help="LLM KV cache")
    parser.add_argument("--static-len", type=int, default=512, help="static cache length (positions)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode steps (static cache)")
    parser.add_argument("--turn", action="store_true", help="time to first audio of a whole speech-chat turn")
    parser.add_argument("--clip-seconds", type=float, default=3.0, help="--turn: the user clip")
    parser.add_argument("--turn-text-tokens", type=int, default=8, help="--turn: text tokens before the switch")
    parser.add_argument("--first-chunk-frames", type=int, default=10, help="--turn: the provisional first chunk")
    args = parser.parse_args()
    if args.compile or args.cache == "static":
        DECODE_KWARGS.update(cache_implementation="static", static_cache_max_len=args.static_len)
    if args.compile:
        DECODE_KWARGS["compile_config"] = compile_config_for(args.device)
    if args.size == "real" and not args.device.startswith("cuda"):
        raise SystemExit("--size real needs a GPU")
    cpu = not args.device.startswith("cuda")
    frames = args.frames or {"small": 200, "0.5b": 40 if cpu else 300, "real": 40 if cpu else 300}[args.size]
    tokens = args.text_tokens or {"small": 100, "0.5b": 20 if cpu else 200, "real": 20 if cpu else 200}[args.size]
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    processor, token_ids = turn_processor() if args.turn else (None, {})
    config = build_config(args.size, **token_ids)
    t = time.perf_counter()
    model = build_model(config, dtype, args.device)
    build_s = time.perf_counter() - t
    print(f"built {args.size} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params) in {build_s:.1f} s")
    bandwidth = measure_bandwidth(args.device, args.bandwidth_gib)
    print(f"memory bandwidth: {bandwidth / 1e9:.1f} GB/s")
    gemv_bandwidth = measure_gemv_bandwidth(args.device, dtype, args.bandwidth_gib)
    print(f"gemv weight bandwidth: {gemv_bandwidth / 1e9:.1f} GB/s")

    with torch.inference_mode():
        baseline = {}
        if args.compile:  # the eager loop (dynamic cache), same process, as the baseline of the compiled one
            decode_kwargs = dict(DECODE_KWARGS)
            DECODE_KWARGS.clear()
            model.generate(prompt_ids(config, 8, args.device, True), **tts_kwargs(3))
            eager = bench_audio(model, config, args.device, args.prompt_len, frames)
            DECODE_KWARGS.update(decode_kwargs)
            baseline = {"eager_audio_frames_per_s": eager["audio_frames_per_s"]}
            print(f"eager baseline: {eager['audio_frames_per_s']:.2f} frames/s")
        t = time.perf_counter()
        model.generate(prompt_ids(config, 8, args.device, True), **tts_kwargs(3))  # warm-up (and compilation)
        warmup_s = time.perf_counter() - t
        print(f"warm-up{' (compilation)' if args.compile else ''}: {warmup_s:.1f} s")
        text = bench_text(model, config, args.device, args.prompt_len, tokens)
        print(f"text: {text['text_tokens_per_s']:.2f} tokens/s")
        audio = bench_audio(model, config, args.device, args.prompt_len, frames)
        print(f"audio: {audio['audio_frames_per_s']:.2f} frames/s, RTF {audio['rtf']:.3f}")
        first = {} if args.no_first_audio else bench_first_audio(model, config, args.device, args.prompt_len, frames)
        turn = {}
        if args.turn:
            bench_turn(model, processor, args.clip_seconds, args.turn_text_tokens, None)  # warm-up turn
            for name, schedule in (("default", None), ("provisional", args.first_chunk_frames)):
                figures = bench_turn(model, processor, args.clip_seconds, args.turn_text_tokens, schedule)
                turn.update({f"turn_{name}_{k}": v for k, v in figures.items()})
                print(f"turn ({name} first chunk): first audio {figures.get('first_audio_s', float('nan')):.2f} s")
            turn.update(turn_clip_seconds=args.clip_seconds, turn_text_tokens=args.turn_text_tokens,
                        turn_first_chunk_frames=args.first_chunk_frames)  # fmt: skip

    bandwidth_after = measure_bandwidth(args.device, args.bandwidth_gib)
    print(f"memory bandwidth after the runs: {bandwidth_after / 1e9:.1f} GB/s")
    bandwidth = max(bandwidth, bandwidth_after)
    bytes_per_frame = weight_bytes_per_frame(model)
    achieved = bytes_per_frame / audio["audio_time_per_frame_s"]
    result = {
        "size": args.size,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name() if not cpu else f"cpu x{torch.get_num_threads()} threads",
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "cache": DECODE_KWARGS.get("cache_implementation", "dynamic"),
        "compiled": args.compile,
        "warmup_s": warmup_s,
        **text,
        **audio,
        "weight_bytes_per_frame": bytes_per_frame,
        "achieved_bytes_per_s": achieved,
        "bandwidth_bytes_per_s": bandwidth,
        "roofline_fraction": achieved / bandwidth,
        "gemv_bandwidth_bytes_per_s": gemv_bandwidth,
        "gemv_roofline_fraction": achieved / gemv_bandwidth,
        "roofline_frames_per_s": bandwidth / bytes_per_frame,
        **first,
        **turn,
        "peak_memory_gib": peak_memory(args.device),
    }
    if baseline:
        result.update(baseline, speedup_vs_eager=audio["audio_frames_per_s"] / baseline["eager_audio_frames_per_s"])
    if first.get("time_to_first_audio_chunk_s") is not None:
        bound = first["frames_per_decoder_chunk"] * audio["audio_time_per_frame_s"] + first["chunk_decode_s"]
        result["first_audio_bound_s"] = bound
        result["first_audio_over_bound"] = first["time_to_first_audio_chunk_s"] / bound
    print(json.dumps(result))


if __name__ == "__main__":
    main()
