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
  streaming decoder on the generation thread, ``decode_priority="inline"``, as the chat engine's default), next to
  the bound ``25 frames x time per frame + one chunk decode``;
* ``--turn`` (``--turn-only``: nothing else): time to first audio of a whole speech-chat turn (issue 18), through
  the chat engine itself (:meth:`transformers_baichuan_audio.chat.SpeechChat.stream_turn`, as the demo and
  ``baichuan-audio chat`` run it): a synthetic 16 kHz user clip (``--clip-seconds``) in hand -> input checks, feature
  extraction and chat template -> the audio tokenizer (real size) -> LLM prefill -> a text phrase -> ``<audiogen_start>``
  -> audio frames -> the code2wav streaming decoder (``--turn-decode-priorities``, default ``inline``) -> the first
  waveform samples handed to the listener. Reported per stage (see :func:`bench_turn`), for the default chunk
  schedule (first chunk after 25 frames) and for a provisional first chunk (``--first-chunk-frames``), eager and,
  with ``--compile``, with the compiled decode steps (eager first in the same process; the compilation happens in a
  warm-up turn, ``turn_compiled_warmup_s``). Each path gets one warm-up turn first (the original demo's 62.9 s is
  warm too). The rest of the turn is cancelled after the first samples (the engine's stop event). With random
  weights the model would not switch to speech on its own, so the phrase is forced: exactly ``--turn-text-tokens``
  text tokens (``text_segment_max_new_tokens``; the LM head can only produce printable ASCII, as the tiny-random
  model's, so no end-of-text / early ``<audiogen_start>``), then the switch, and no end-of-audio before the first
  chunk (``audio_min_frames``). Sampling settings: the demo's defaults (seeded). The tokenizer is built offline
  (:func:`turn_processor`: byte-level, the Baichuan special tokens at the released ids, so the prompt is longer than
  the released tokenizer would make it: the voice prompt's 12 characters are 36 byte tokens). The phrase goes on
  past the first chunk (as in an answer that goes on);
  ``--turn-phrase-frames 26`` ends it right after the first chunk's frames. ``--turn-decode-priorities
  inline,first_chunk`` compares the streamer's decode priorities (``inline``, the engine's default: the generation
  thread decodes; the others decode in the consuming thread, with generation going on while the first chunk decodes
  (``overlap``) or waiting (``first_chunk``)). JSON keys
  ``turn_<eager|compiled>_<default|provisional>_<priority>_<figure>``, the best of ``--turn-repeats`` turns (all in
  ``*_all``). ``--turn-to-end`` lets each turn run to its end (the phrase's last samples) instead of stopping it at
  the first audio: ``last_audio_s`` (from the clip in hand to the last samples handed to the listener),
  ``audio_seconds`` and ``audio_events`` (events with samples; a consumer that catches up hands a phrase's queued
  frames to its decoder at once, so fewer events carry more samples) and ``decode_passes`` (pushes that returned
  samples, ``finish`` not counted);
* ``--layout-compare`` (nothing else): eager audio frames/s and text tokens/s with plain ``F.linear`` (as
  ``nn.Linear`` computes, the eager path before issue 24; keys ``row_major``) and in the row-block decode layout that ``generate``
  applies on CPUs (``transformers_baichuan_audio.modeling.decode_layout``), alternating, best of
  ``--layout-repeats``; and the GEMV bandwidth of both layouts (JSON keys ``layout_*``, ``gemv_*``);
* peak memory (CPU: max RSS; GPU: max allocated).

Decoding paths: ``--cache static`` preallocates the LLM cache (``StaticCache``); ``--compile`` (implies the static
cache) compiles the single-token LLM steps and the audio head's positions (see
``transformers_baichuan_audio.modeling.decode_steps``): on CUDA with ``CompileConfig()`` (CUDA graphs), on CPU with
plain inductor (``CompileConfig(dynamic=False, mode=None)``: the decode layout's row blocks compile to inductor's
own C++ GEMV loops). Compilation happens in the warm-up call (``warmup_s``); before each compiled audio run the
eager loop's (dynamic cache) is timed in the same process (``eager_audio_frames_per_s``, ``speedup_vs_eager``:
best against best; ``speedup_vs_eager_all``: run by run). ``--inductor-options`` passes inductor options (a JSON
object, ``CompileConfig.options``), e.g. ``'{"cpp_wrapper": true}'``. ``--full-guards`` (CPU) compiles with every
dynamo guard and inductor's input asserts, which the decode steps leave out by default (``compile_kwargs``): the
compiled path of before, for an A/B in alternating processes.

The memory bandwidth is measured before and after all generation runs and around each audio run (``--audio-repeats``
runs, the best kept); the largest figure is the roofline (``roofline_fraction``). A VM's bandwidth can drift by
tens of percent from minute to minute, so each audio run's fraction of the larger of its two adjacent probes is
also given (``adjacent_roofline_fraction``: the best run's; ``adjacent_roofline_fraction_all``).

The last output line is one JSON object with all figures. Example::

    python benchmarks/bench_generation.py --size 0.5b --dtype bf16 --frames 40
    python benchmarks/bench_generation.py --size 0.5b --threads 2 --compile --no-first-audio --audio-repeats 3
    python benchmarks/bench_generation.py --size 0.5b --threads 2 --turn-only --compile
    python benchmarks/bench_generation.py --size 0.5b --threads 2 --layout-compare
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, CompileConfig

from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.cpu_threads import release_openmp_workers
from transformers_baichuan_audio.modeling.decode_layout import blocked_linear, remove_decode_layout
from transformers_baichuan_audio.modeling.streamer import BaichuanAudioStreamer
from transformers_baichuan_audio.tiny_random import restrict_text_head, tiny_tokenizer

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


def build_config(size: str) -> BaichuanAudioConfig:
    if size == "small":
        return BaichuanAudioConfig.tiny()
    if size == "0.5b":
        return BaichuanAudioConfig(
            text_config=dict(QWEN25_05B), audio_head_config={"num_attention_heads": 7, "intermediate_size": 1792}
        )
    if size == "real":
        return BaichuanAudioConfig()
    raise ValueError(size)


def build_model(config: BaichuanAudioConfig, dtype: torch.dtype, device: str):
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    if getattr(model, "code2wav", None) is not None:
        model.code2wav.float()
    if getattr(model.model, "audio_tokenizer", None) is not None:
        model.model.audio_tokenizer.float()
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_gemv_bandwidth(device: str, dtype: torch.dtype, gib: float, row_blocks: bool = False) -> float:
    """Bytes/s of weights streamed by batch-1 matrix-vector products (a stack of 4864x896 matrices, LLM-MLP sized,
    together ``gib`` GiB so nothing stays in cache): what eager decode reaches with ``F.linear`` (MKL runs this GEMV
    on one thread), next to the ``sum`` bandwidth of :func:`measure_bandwidth`. ``row_blocks``: as the decode layout
    computes them, one row block per thread (``transformers_baichuan_audio.modeling.decode_layout``)."""
    rows, cols = 4864, 896
    count = max(1, int(gib * 2**30) // (rows * cols * torch.finfo(dtype).bits // 8))
    weights = [torch.randn(rows, cols, device=device).to(dtype) for _ in range(count)]
    x = torch.randn(1, cols, device=device).to(dtype)
    blocks = torch.get_num_threads()
    best = float("inf")
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        for w in weights:
            blocked_linear(x, w, None, blocks) if row_blocks else F.linear(x, w)
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


def json_object(text: str) -> dict:
    """argparse type of ``--inductor-options``: a JSON object."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def compile_config_for(device: str, options: dict | None = None) -> CompileConfig:
    """CUDA: transformers' default (``mode="reduce-overhead"``: CUDA graphs). CPU: plain inductor, fixed shapes
    (the decode layout's row blocks become inductor's own multi-threaded GEMV loops; see
    ``transformers_baichuan_audio.modeling.decode_layout``). ``options``: inductor options (``--inductor-options``)."""
    if device.startswith("cuda"):
        return CompileConfig(dynamic=False, options=options)
    return CompileConfig(dynamic=False, mode=None, options=options)


def keep_every_guard(guard_entries) -> list[bool]:
    """``guard_filter_fn`` of ``--full-guards``: dynamo's own guards, all of them."""
    return [True] * len(guard_entries)


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


@contextlib.contextmanager
def eager_decoding():
    """Within: generate calls decode eagerly with the dynamic cache (:data:`DECODE_KWARGS` emptied, then restored)."""
    kept = dict(DECODE_KWARGS)
    DECODE_KWARGS.clear()
    try:
        yield
    finally:
        DECODE_KWARGS.update(kept)


def bench_audio_runs(model, config, args, frames) -> tuple[dict, dict]:
    """``--audio-repeats`` audio runs of the configured path, each between two bandwidth probes and, with
    ``--compile``, right after an eager run (the baseline, alternating). Returns the best run (:func:`bench_audio`'s
    keys) with the larger of its two adjacent probes, every run's frames/s and larger probe (``*_all``), and the
    eager baseline (best, ``*_all``; empty without ``--compile``)."""
    runs, eager_rates, adjacent = [], [], []
    for _ in range(args.audio_repeats):
        if args.compile:
            with eager_decoding():
                eager_rates.append(
                    bench_audio(model, config, args.device, args.prompt_len, frames)["audio_frames_per_s"]
                )
            print(f"eager baseline: {eager_rates[-1]:.2f} frames/s")
        before = measure_bandwidth(args.device, args.bandwidth_gib)
        runs.append(bench_audio(model, config, args.device, args.prompt_len, frames))
        adjacent.append(max(before, measure_bandwidth(args.device, args.bandwidth_gib)))
        rate = runs[-1]["audio_frames_per_s"]
        print(
            f"audio: {rate:.2f} frames/s, RTF {runs[-1]['rtf']:.3f} (adjacent bandwidth {adjacent[-1] / 1e9:.1f} GB/s)"
        )
    rates = [run["audio_frames_per_s"] for run in runs]
    best = max(range(len(runs)), key=rates.__getitem__)
    audio = {
        **runs[best],
        "adjacent_bandwidth_bytes_per_s": adjacent[best],
        "audio_frames_per_s_all": rates,
        "adjacent_bandwidth_bytes_per_s_all": adjacent,
    }
    baseline = {}
    if eager_rates:
        baseline = {"eager_audio_frames_per_s": max(eager_rates), "eager_audio_frames_per_s_all": eager_rates}
    return audio, baseline


def bench_first_audio(model, config, device, prompt_len, frames) -> dict:
    if getattr(model, "code2wav", None) is None:
        return {}
    ids = prompt_ids(config, prompt_len, device, audiogen=True)
    # as SpeechChat's turns: code2wav on the generation thread, this thread's OpenMP workers let go (cpu_threads)
    streamer = BaichuanAudioStreamer(code2wav=model.code2wav, timeout=3600, decode_priority="inline")
    release_openmp_workers()
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


def turn_processor(config):
    """A ``BaichuanAudioProcessor`` for ``config``, offline: the tiny-random byte-level tokenizer with
    ``<|endoftext|>`` and the Baichuan special tokens at the config's ids (the released vocabulary's)."""
    from transformers_baichuan_audio.configuration import TOKEN_ID_FIELDS
    from transformers_baichuan_audio.processing.feature_extraction import BaichuanAudioFeatureExtractor
    from transformers_baichuan_audio.processing.processor import SPECIAL_TOKENS, BaichuanAudioProcessor

    special_ids = {"<|endoftext|>": int(config.eos_token_id)}
    special_ids.update({SPECIAL_TOKENS[name[: -len("_id")]]: int(getattr(config, name)) for name in TOKEN_ID_FIELDS})
    return BaichuanAudioProcessor(BaichuanAudioFeatureExtractor(), tiny_tokenizer(special_ids))


def synthetic_clip(seconds: float, rate: int = 16000) -> np.ndarray:
    """A speech-like 16 kHz clip (a 120-180 Hz voiced tone with harmonics, syllable-rate envelope, noise; seeded)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    f0 = 150 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.2 * envelope * voiced + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


class TurnClock(threading.Event):
    """The stop event of :meth:`SpeechChat.stream_turn` that also notes when it is checked: the engine's streamer
    checks it once in every ``put_text`` (a text token) and ``put_audio`` (an audio frame), in the generation
    thread, so its check times are the producer-side times of the tokens and frames (in order)."""

    def __init__(self):
        super().__init__()
        self.checks: list[float] = []

    def is_set(self) -> bool:
        self.checks.append(time.perf_counter())
        return super().is_set()


@contextlib.contextmanager
def timed_decoder_pushes(code2wav):
    """While active, the streaming decoders made by ``code2wav.streaming_decoder`` note every ``push`` as
    ``(start, end, samples returned)`` in the yielded list (an instance attribute shadows the method)."""
    pushes: list[tuple[float, float, int]] = []
    make = code2wav.streaming_decoder

    def streaming_decoder(**kwargs):
        decoder = make(**kwargs)
        push = decoder.push

        def timed_push(codes):
            start = time.perf_counter()
            out = push(codes)
            pushes.append((start, time.perf_counter(), int(out.numel())))
            return out

        decoder.push = timed_push
        return decoder

    code2wav.streaming_decoder = streaming_decoder
    try:
        yield pushes
    finally:
        del code2wav.streaming_decoder


def bench_turn(
    model,
    processor,
    clip: np.ndarray,
    text_tokens: int,
    first_chunk_frames: int | None,
    phrase_frames: int = 0,
    decode_priority: str = "inline",
    state_pool=None,
    to_end: bool = False,
) -> dict:
    """One speech-chat turn through ``SpeechChat.stream_turn``, from the user's clip in hand to the first waveform
    samples the engine yields (the turn is then stopped). Stages, in seconds (they add up to ``first_audio_s``):

    * ``input_s``: the clip's checks (``user_message``), feature extraction, chat template, context check, the
      generation thread's start and ``generate``'s setup, up to the audio tokenizer's forward;
    * ``audio_encoding_s``: the audio tokenizer (encoder + bridge + RVQ) on the clip;
    * ``prefill_s``: the LLM over the whole prompt, LM head, first text token;
    * ``text_phrase_s``: the other ``text_tokens - 1`` text tokens;
    * ``frames_to_first_chunk_s``: the switch step (last token + ``<audiogen_start>``) and the frames up to the one
      that completes the first chunk (25, or ``first_chunk_frames``);
    * ``decoder_wait_s``: from that frame's emission to the consuming thread's push of it (the consumer catching up:
      the pushes of earlier frames, decoder set-up, queue);
    * ``first_chunk_decode_s``: the push that returns the first chunk (code2wav: decoder, flow matching, vocoder);
      with ``decode_priority="inline"`` (the engine's default) in the generation thread itself, with ``"overlap"``
      in the consuming thread while generation goes on (both share the cores), with ``"first_chunk"`` in the
      consuming thread while generation waits after at most one more frame;
    * ``to_listener_s``: phrase joining (``PhraseJoiner``) up to the yielded audio event.

    ``phrase_frames``: the spoken phrase's length (0: 100 frames past the first chunk, so generation goes on while
    the first chunk is decoded, as in an answer that goes on; a phrase that ends right after the first chunk's
    frames leaves the cores to the decoder sooner). ``state_pool``: the chat's streaming state kept across turns
    (``--keep-stream-state``; None: a pool per turn). ``to_end``: the turn goes on to its end (``last_audio_s``,
    ``audio_seconds``, ``audio_events``, ``decode_passes``; see the module docstring).
    """
    from transformers_baichuan_audio.chat import SpeechChat

    default_chunk = model.code2wav.streaming_decoder().frames_per_chunk
    chunk_frames = first_chunk_frames or default_chunk
    audio_frames = phrase_frames or max(chunk_frames, default_chunk) + 100
    if audio_frames <= max(chunk_frames, default_chunk):
        raise ValueError(f"the phrase must be longer than the first chunks' {max(chunk_frames, default_chunk)} frames")
    caps = dict(
        DECODE_KWARGS,
        text_segment_max_new_tokens=text_tokens,
        audio_min_frames=audio_frames,
        audio_max_frames=audio_frames,
        max_rounds=1,
    )
    chat = SpeechChat(
        model,
        processor,
        caps,
        first_chunk_frames=first_chunk_frames,
        decode_priority=decode_priority,
        state_pool=state_pool,
    )
    clock, encoding, text = TurnClock(), [], []
    tokenizer = model.model.audio_tokenizer
    hooks = [
        tokenizer.register_forward_pre_hook(lambda *_: encoding.append(time.perf_counter())),
        tokenizer.register_forward_hook(lambda *_: encoding.append(time.perf_counter())),
    ]
    first = samples = last = None
    total_samples = audio_events = 0
    try:
        with timed_decoder_pushes(model.code2wav) as pushes:
            t0 = time.perf_counter()
            messages = [chat.user_message(audio=(16000, clip))]
            turn = chat.stream_turn(messages, stop=clock)
            try:
                for event in turn:
                    if event.kind == "text":
                        text.append(event.text)
                    elif event.kind == "audio" and event.audio.numel():
                        last = time.perf_counter()
                        if first is None:
                            first, samples = last, int(event.audio.numel())
                        total_samples += int(event.audio.numel())
                        audio_events += 1
                        if not to_end:
                            break
            finally:
                turn.close()  # stops the generation thread at its next token / frame and joins it
    finally:
        for hook in hooks:
            hook.remove()
    prompt = processor.apply_chat_template(
        messages, audio_output=True, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )["input_ids"]
    result = {
        "first_audio_s": None if first is None else first - t0,
        "first_audio_samples": samples,
        "prompt_tokens": int(prompt.shape[-1]),
        "prompt_audio_frames": int((prompt == model.config.audio_pad_token_id).sum()),
        "text": "".join(text),
    }
    chunk_pushes = [p for p in pushes if p[2] > 0]
    if to_end:
        result.update(
            last_audio_s=None if last is None else last - t0,
            audio_seconds=total_samples / model.code2wav.config.vocoder_config.sampling_rate,
            audio_events=audio_events,
            decode_passes=len(chunk_pushes),
        )
    if first is None or len(clock.checks) < text_tokens + chunk_frames or not encoding or not chunk_pushes:
        return result  # no stage split (the turn ended early, or the engine's streamer changed)
    text_times, frame_times = clock.checks[:text_tokens], clock.checks[text_tokens:]
    chunk_frame = frame_times[chunk_frames - 1]
    push_start, push_end, _ = chunk_pushes[0]
    stages = {
        "input_s": encoding[0] - t0,
        "audio_encoding_s": encoding[1] - encoding[0],
        "prefill_s": text_times[0] - encoding[1],
        "text_phrase_s": text_times[-1] - text_times[0],
        "frames_to_first_chunk_s": chunk_frame - text_times[-1],
        "decoder_wait_s": push_start - chunk_frame,
        "first_chunk_decode_s": push_end - push_start,
        "to_listener_s": first - push_end,
    }
    result.update(stages)
    result["text_tokens_per_s"] = steady_rate(text_times)
    result["audio_frames_per_s"] = steady_rate(frame_times[:chunk_frames])
    result["frames_at_first_audio"] = sum(1 for t in frame_times[:audio_frames] if t <= first)
    return result


TURN_STAGES = (
    "input_s",
    "audio_encoding_s",
    "prefill_s",
    "text_phrase_s",
    "frames_to_first_chunk_s",
    "decoder_wait_s",
    "first_chunk_decode_s",
    "to_listener_s",
)


def turn_settings(args) -> dict:
    return {
        "turn_clip_seconds": args.clip_seconds,
        "turn_text_tokens": args.turn_text_tokens,
        "turn_first_chunk_frames": args.first_chunk_frames,
        "turn_repeats": args.turn_repeats,
        "turn_phrase_frames": args.turn_phrase_frames,
        "turn_decode_priorities": args.turn_decode_priorities,
        "turn_keep_stream_state": args.keep_stream_state,
        "turn_to_end": args.turn_to_end,
    }


def bench_turns(model, processor, args, path: str) -> dict:
    """Warm-up turn, then ``--turn-repeats`` turns per chunk schedule (default, provisional) and decode priority
    (``--turn-decode-priorities``), alternating; figures of the turn with the smallest ``first_audio_s`` per
    schedule and priority, keyed ``turn_<path>_<schedule>_<priority>_<figure>``."""
    from transformers_baichuan_audio.modeling.streaming_state import StreamingStatePool

    clip = synthetic_clip(args.clip_seconds)
    pool = StreamingStatePool() if args.keep_stream_state else None  # the warm-up turn fills it
    t = time.perf_counter()
    bench_turn(model, processor, clip, args.turn_text_tokens, None, args.turn_phrase_frames, state_pool=pool)
    out = {f"turn_{path}_warmup_s": time.perf_counter() - t}
    print(f"turn warm-up ({path}): {out[f'turn_{path}_warmup_s']:.1f} s")
    schedules = [("default", None)]
    if args.first_chunk_frames:
        schedules.append(("provisional", args.first_chunk_frames))
    cases = [(name, frames, priority) for name, frames in schedules for priority in args.turn_decode_priorities]
    runs: dict[tuple, list[dict]] = {case: [] for case in cases}
    for _ in range(args.turn_repeats):
        for name, first_chunk_frames, priority in cases:
            runs[name, first_chunk_frames, priority].append(
                bench_turn(
                    model,
                    processor,
                    clip,
                    args.turn_text_tokens,
                    first_chunk_frames,
                    args.turn_phrase_frames,
                    priority,
                    pool,
                    args.turn_to_end,
                )
            )
    for (name, first_chunk_frames, priority), case_runs in runs.items():
        best = min(case_runs, key=lambda r: r["first_audio_s"] if r["first_audio_s"] is not None else float("inf"))
        best["first_audio_s_all"] = [r["first_audio_s"] for r in case_runs]
        out.update({f"turn_{path}_{name}_{priority}_{k}": v for k, v in best.items()})
        stages = ", ".join(f"{k[:-2]} {best[k]:.2f}" for k in TURN_STAGES if k in best)
        chunk = first_chunk_frames or "25"
        print(
            f"turn {path}, first chunk after {chunk} frames, decode priority {priority}: first audio "
            f"{best['first_audio_s']:.2f} s ({stages})"
        )
        if args.turn_to_end:
            ends = ", ".join(f"{r['last_audio_s']:.2f}" for r in case_runs if r.get("last_audio_s") is not None)
            print(
                f"  to the end: last audio {ends} s ({best['audio_seconds']:.2f} s of audio in "
                f"{best['audio_events']} events, {best['decode_passes']} decode passes)"
            )
    return out


def bench_layouts(model, config, args, frames: int, tokens: int) -> dict:
    """``--layout-compare``: eager audio frames/s and text tokens/s with plain ``F.linear`` (as ``nn.Linear``
    computes; the eager path before issue 24) and in the decode layout (the default of ``generate`` on CPUs),
    alternating, best of ``--layout-repeats`` each; plus the GEMV bandwidth of both layouts."""
    dtype = next(model.parameters()).dtype
    result = {
        "gemv_row_major_bytes_per_s": measure_gemv_bandwidth(args.device, dtype, args.bandwidth_gib),
        "gemv_row_blocks_bytes_per_s": measure_gemv_bandwidth(args.device, dtype, args.bandwidth_gib, True),
    }
    best: dict[str, dict[str, float]] = {"row_major": {}, "decode": {}}
    with torch.inference_mode():
        model.generate(prompt_ids(config, 8, args.device, True), decode_layout=False, **tts_kwargs(3))  # warm-up
        for _ in range(args.layout_repeats):
            for layout in ("row_major", "decode"):
                if layout == "row_major":
                    remove_decode_layout(model)
                DECODE_KWARGS["decode_layout"] = layout == "decode"
                audio = bench_audio(model, config, args.device, args.prompt_len, frames)["audio_frames_per_s"]
                text = bench_text(model, config, args.device, args.prompt_len, tokens)["text_tokens_per_s"]
                print(f"{layout}: {audio:.2f} audio frames/s, {text:.2f} text tokens/s", flush=True)
                kept = best[layout]
                kept["audio_frames_per_s"] = max(kept.get("audio_frames_per_s", 0.0), audio)
                kept["text_tokens_per_s"] = max(kept.get("text_tokens_per_s", 0.0), text)
    DECODE_KWARGS.pop("decode_layout", None)
    for layout, figures in best.items():
        result.update({f"layout_{layout}_{k}": v for k, v in figures.items()})
    for figure in ("audio_frames_per_s", "text_tokens_per_s"):
        result[f"layout_speedup_{figure}"] = best["decode"][figure] / best["row_major"][figure]
    return result


def describe_device(cpu: bool) -> str:
    return f"cpu x{torch.get_num_threads()} threads" if cpu else torch.cuda.get_device_name()


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
    parser.add_argument(
        "--no-first-audio",
        action="store_true",
        help="skip the streamed time-to-first-audio run of the TTS prompt (not --turn)",
    )
    parser.add_argument("--cache", choices=["dynamic", "static"], default="dynamic", help="LLM KV cache")
    parser.add_argument("--static-len", type=int, default=512, help="static cache length (positions)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode steps (static cache)")
    parser.add_argument(
        "--inductor-options",
        type=json_object,
        default=None,
        help="--compile: inductor options, a JSON object (CompileConfig.options), e.g. '{\"cpp_wrapper\": true}'",
    )
    parser.add_argument(
        "--audio-repeats", type=int, default=1, help="audio runs (each between bandwidth probes; the best is kept)"
    )
    parser.add_argument("--turn", action="store_true", help="also time to first audio of a whole speech-chat turn")
    parser.add_argument("--turn-only", action="store_true", help="only the speech-chat turn (implies --turn)")
    parser.add_argument("--clip-seconds", type=float, default=3.0, help="--turn: the user's clip (16 kHz)")
    parser.add_argument("--turn-text-tokens", type=int, default=8, help="--turn: text tokens before the switch")
    parser.add_argument(
        "--first-chunk-frames", type=int, default=10, help="--turn: the provisional first chunk (0: none)"
    )
    parser.add_argument(
        "--turn-phrase-frames", type=int, default=0, help="--turn: frames of the spoken phrase (0: it goes on)"
    )
    parser.add_argument(
        "--keep-stream-state",
        action="store_true",
        help="--turn: one streaming-state pool for every turn (SpeechChat(state_pool=...)), filled by the warm-up turn",
    )
    parser.add_argument("--turn-repeats", type=int, default=1, help="--turn: turns per schedule (the best is kept)")
    parser.add_argument(
        "--turn-to-end",
        action="store_true",
        help="--turn: run each turn to its end (time to the last audio, events, decode passes), not to first audio",
    )
    parser.add_argument(
        "--turn-decode-priorities",
        type=lambda v: v.split(","),
        default=["inline"],
        help="--turn: comma-separated decode priorities of the engine's streamer "
        "(inline, overlap, first_chunk, always)",
    )
    parser.add_argument(
        "--layout-compare",
        action="store_true",
        help="only eager frames/s and tokens/s with plain F.linear vs the decode layout (alternating)",
    )
    parser.add_argument(
        "--full-guards",
        action="store_true",
        help="--compile: keep every dynamo guard and inductor's size asserts (the steps' default drops some)",
    )
    parser.add_argument("--layout-repeats", type=int, default=2, help="--layout-compare: runs per layout")
    args = parser.parse_args()
    args.turn = args.turn or args.turn_only
    if args.compile or args.cache == "static":
        DECODE_KWARGS.update(cache_implementation="static", static_cache_max_len=args.static_len)
    if args.compile:
        options = args.inductor_options
        if args.full_guards:  # the compiled path before: every dynamo guard, inductor's input asserts
            if args.device.startswith("cuda"):
                raise SystemExit("--full-guards: CPU only (torch.compile takes no options with a CUDA-graph mode)")
            options = {"guard_filter_fn": keep_every_guard, "size_asserts": True, **(options or {})}
        DECODE_KWARGS["compile_config"] = compile_config_for(args.device, options)
    if args.size == "real" and not args.device.startswith("cuda"):
        raise SystemExit("--size real needs a GPU")
    cpu = not args.device.startswith("cuda")
    frames = args.frames or {"small": 200, "0.5b": 40 if cpu else 300, "real": 40 if cpu else 300}[args.size]
    tokens = args.text_tokens or {"small": 100, "0.5b": 20 if cpu else 200, "real": 20 if cpu else 200}[args.size]
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = build_config(args.size)
    t = time.perf_counter()
    model = build_model(config, dtype, args.device)
    build_s = time.perf_counter() - t
    print(f"built {args.size} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params) in {build_s:.1f} s")
    processor = None
    if args.turn:
        if getattr(model, "code2wav", None) is None:
            raise SystemExit("--turn needs a model with code2wav")
        processor = turn_processor(config)
        restrict_text_head(model, processor.tokenizer)
    if args.turn_only:
        main_turn_only(args, model, processor, cpu)
        return
    if args.layout_compare:
        result = {"size": args.size, "dtype": args.dtype, "device": describe_device(cpu), "frames": frames}
        result.update(bench_layouts(model, config, args, frames, tokens))
        print(json.dumps(result))
        return
    bandwidth = measure_bandwidth(args.device, args.bandwidth_gib)
    print(f"memory bandwidth: {bandwidth / 1e9:.1f} GB/s")
    gemv_bandwidth = measure_gemv_bandwidth(args.device, dtype, args.bandwidth_gib)
    print(f"gemv weight bandwidth: {gemv_bandwidth / 1e9:.1f} GB/s")

    with torch.inference_mode():
        if args.compile:  # the eager loop (dynamic cache), same process, is the baseline of the compiled one
            with eager_decoding():
                model.generate(prompt_ids(config, 8, args.device, True), **tts_kwargs(3))
        t = time.perf_counter()
        model.generate(prompt_ids(config, 8, args.device, True), **tts_kwargs(3))  # warm-up (and compilation)
        warmup_s = time.perf_counter() - t
        print(f"warm-up{' (compilation)' if args.compile else ''}: {warmup_s:.1f} s")
        text = bench_text(model, config, args.device, args.prompt_len, tokens)
        print(f"text: {text['text_tokens_per_s']:.2f} tokens/s")
        audio, baseline = bench_audio_runs(model, config, args, frames)
        first = {} if args.no_first_audio else bench_first_audio(model, config, args.device, args.prompt_len, frames)
    turn = {}
    if args.turn:
        turn = {**turn_settings(args), **bench_turns(model, processor, args, "compiled" if args.compile else "eager")}

    bandwidth_after = measure_bandwidth(args.device, args.bandwidth_gib)
    print(f"memory bandwidth after the runs: {bandwidth_after / 1e9:.1f} GB/s")
    bandwidth = max(bandwidth, bandwidth_after, *audio["adjacent_bandwidth_bytes_per_s_all"])
    bytes_per_frame = weight_bytes_per_frame(model)
    achieved = bytes_per_frame / audio["audio_time_per_frame_s"]
    result = {
        "size": args.size,
        "dtype": args.dtype,
        "device": describe_device(cpu),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "cache": DECODE_KWARGS.get("cache_implementation", "dynamic"),
        "compiled": args.compile,
        "inductor_options": args.inductor_options,
        "full_guards": args.full_guards,
        "warmup_s": warmup_s,
        **text,
        **audio,
        "weight_bytes_per_frame": bytes_per_frame,
        "achieved_bytes_per_s": achieved,
        "bandwidth_bytes_per_s": bandwidth,
        "roofline_fraction": achieved / bandwidth,
        "adjacent_roofline_fraction": achieved / audio["adjacent_bandwidth_bytes_per_s"],
        "adjacent_roofline_fraction_all": [
            rate * bytes_per_frame / probe
            for rate, probe in zip(
                audio["audio_frames_per_s_all"], audio["adjacent_bandwidth_bytes_per_s_all"], strict=True
            )
        ],
        "gemv_bandwidth_bytes_per_s": gemv_bandwidth,
        "gemv_roofline_fraction": achieved / gemv_bandwidth,
        "roofline_frames_per_s": bandwidth / bytes_per_frame,
        **first,
        **turn,
        "peak_memory_gib": peak_memory(args.device),
    }
    if baseline:
        result.update(baseline, speedup_vs_eager=audio["audio_frames_per_s"] / baseline["eager_audio_frames_per_s"])
        pairs = zip(audio["audio_frames_per_s_all"], baseline["eager_audio_frames_per_s_all"], strict=True)
        result["speedup_vs_eager_all"] = [fast / slow for fast, slow in pairs]
    if first.get("time_to_first_audio_chunk_s") is not None:
        bound = first["frames_per_decoder_chunk"] * audio["audio_time_per_frame_s"] + first["chunk_decode_s"]
        result["first_audio_bound_s"] = bound
        result["first_audio_over_bound"] = first["time_to_first_audio_chunk_s"] / bound
    print(json.dumps(result))


def main_turn_only(args, model, processor, cpu: bool) -> None:
    """``--turn-only``: the speech-chat turns alone; with ``--compile`` the eager turns first, then the compiled
    ones (compilation in their warm-up turn)."""
    result = {
        "size": args.size,
        "dtype": args.dtype,
        "device": describe_device(cpu),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        **turn_settings(args),
    }
    decode_kwargs = dict(DECODE_KWARGS)
    if args.compile:
        DECODE_KWARGS.clear()
        result.update(bench_turns(model, processor, args, "eager"))
        DECODE_KWARGS.update(decode_kwargs)
    result.update(bench_turns(model, processor, args, "compiled" if args.compile else "eager"))
    result["peak_memory_gib"] = peak_memory(args.device)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
