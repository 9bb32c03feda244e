"""Real-size loading checks on a GPU (random weights, no downloads): VRAM of bf16, 4-bit / 8-bit and offloaded loads,
and the speech loop's frames/s on each. Not a test.

The released configuration (``BaichuanAudioConfig()``, 10.36 G parameters) is built once with random weights on the
GPU (bf16, code2wav fp32) and its state dict moved to the cpu; every mode then loads it through
``from_pretrained(None, config=..., state_dict=...)``, i.e. the regular loading path with ``dtype`` /
``quantization_config`` / ``device_map`` (the path a converted checkpoint takes, without writing 21 GB to disk):

* ``bf16``: ``dtype=torch.bfloat16, device_map={"": 0}`` (code2wav and the RVQ codebooks stay fp32);
* ``4bit`` / ``8bit``: ``quantization_config=quantization_config_for(4 | 8)`` (bitsandbytes; LLM decoder layers only);
* ``offload``: ``device_map="auto"`` with ``max_memory={0: --gpu-budget, "cpu": ...}`` (the rest offloaded to the cpu,
  executing on the GPU).

Per mode: weights resident on the GPU after loading (``torch.cuda.memory_allocated``), then a TTS generation of
``--frames`` frames (greedy, end-of-audio suppressed): audio frames/s in the steady state, time to the first frame,
and the peak (``torch.cuda.max_memory_allocated``, reset after loading) with a KV cache of ``--prompt-len`` +
``--frames`` positions. The last line is one JSON object with every mode's figures.

Example (on a GPU; ``pip install bitsandbytes`` for the quantised modes; ``--estimate``: the weight bytes of each mode
from the module shapes, on any machine)::

    python benchmarks/bench_big_model.py --modes bf16 4bit offload --frames 100
    python benchmarks/bench_big_model.py --estimate
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration
from transformers_baichuan_audio.modeling.big_model import quantization_config_for, quantized_module_names

GIB = 2**30


def random_state_dict(config: BaichuanAudioConfig) -> dict[str, torch.Tensor]:
    """Random bf16 weights (code2wav and codebooks fp32) of the real-size model, on the cpu."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = BaichuanAudioForConditionalGeneration(config)
    model.to(torch.bfloat16)
    model.code2wav.float()
    for codebook in model.model.audio_tokenizer.quantizer.codebooks:
        codebook.float()
    state = {k: v.to("cpu", copy=True) for k, v in model.state_dict().items()}
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return state


def load(mode: str, config, state, gpu_budget_gib: float):
    kwargs = {"dtype": torch.bfloat16, "device_map": {"": 0}}
    if mode in ("4bit", "8bit"):
        kwargs["quantization_config"] = quantization_config_for(4 if mode == "4bit" else 8)
    elif mode == "offload":
        kwargs["device_map"] = "auto"
        kwargs["max_memory"] = {0: f"{gpu_budget_gib}GiB", "cpu": "120GiB"}
    elif mode != "bf16":
        raise ValueError(mode)
    model = BaichuanAudioForConditionalGeneration.from_pretrained(None, config=config, state_dict=dict(state), **kwargs)
    return model.eval()


def tts(model, config, prompt_len: int, frames: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 150000, (1, prompt_len), generator=g)
    ids[0, -1] = config.audiogen_start_token_id
    times: list[float] = []

    class Streamer:
        def put_text(self, row, tokens):
            pass

        def put_audio(self, row, frame):
            torch.cuda.synchronize()
            times.append(time.perf_counter())

        def end_segment(self, row):
            pass

        def end(self):
            pass

    kwargs = dict(output_audio=True, speech_mode="tts", do_sample=False, audio_repetition_penalty=1.0)
    kwargs.update(audio_min_frames=frames, audio_max_frames=frames)
    with torch.inference_mode():
        model.generate(ids.to("cuda"), **dict(kwargs, audio_min_frames=3, audio_max_frames=3))  # warm-up
        t0 = time.perf_counter()
        model.generate(ids.to("cuda"), streamer=Streamer(), **kwargs)
    steady = times[len(times) // 4 :]
    rate = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else None
    return {"frames": len(times), "audio_frames_per_s": rate, "first_frame_s": times[0] - t0 if times else None}


#: bytes per weight of a bitsandbytes-quantised ``nn.Linear``: NF4 (two weights a byte) with nested quantisation
#: (one 8-bit absmax per block of 64, one fp32 constant per 256 absmax values); LLM.int8() (a byte, and an fp32
#: scale per output row, counted per weight in :func:`estimate`)
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)


def estimate(meta_model) -> dict:
    """Weight bytes (GiB) of each mode from the module shapes alone (cpu, nothing allocated): bf16 with code2wav and
    the RVQ codebooks fp32 (as ``from_pretrained(dtype=torch.bfloat16)`` keeps them), and the 4-bit / 8-bit loads
    of :func:`quantization_config_for` (quantised linears as above, the rest as in bf16). KV cache and activations
    come on top (``generate_peak_gib`` of a GPU run)."""
    fp32 = ("code2wav.", "model.audio_tokenizer.quantizer.")
    bf16_bytes = {n: p.numel() * (4 if n.startswith(fp32) else 2) for n, p in meta_model.named_parameters()}
    total = sum(bf16_bytes.values())
    out = {"bf16_gib": total / GIB}
    for bits in (4, 8):
        names = quantized_module_names(meta_model, quantization_config_for(bits))
        saved = 0.0
        for name in names:
            module = meta_model.get_submodule(name)
            weights = module.weight.numel()
            per_weight = NF4_BYTES if bits == 4 else 1 + 4 / module.in_features
            saved += bf16_bytes[name + ".weight"] - weights * per_weight
        out[f"{bits}bit_gib"] = (total - saved) / GIB
    parts = ("model.language_model", "model.audio_tokenizer", "model.audio_embed", "lm_head", "audio_head", "code2wav")
    out["bf16_parts_gib"] = {
        part: sum(b for n, b in bf16_bytes.items() if n.startswith(part + ".")) / GIB for part in parts
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--estimate", action="store_true", help="only the weight bytes per mode, from the shapes (cpu)")
    parser.add_argument("--modes", nargs="+", default=["bf16", "4bit", "8bit", "offload"])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--gpu-budget-gib", type=float, default=12.0, help="max_memory of GPU 0 in the offload mode")
    args = parser.parse_args()
    config = BaichuanAudioConfig()
    with torch.device("meta"):  # module names and shapes only
        meta_model = BaichuanAudioForConditionalGeneration(config)
    estimated = estimate(meta_model)
    print(f"estimated weights: {json.dumps(estimated)}", flush=True)
    if args.estimate:
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_big_model.py needs a CUDA GPU (--estimate runs anywhere)")
    t = time.perf_counter()
    state = random_state_dict(config)
    results = {"device": torch.cuda.get_device_name(), "build_s": time.perf_counter() - t, "estimated": estimated}
    results["modes"] = {}
    print(f"random real-size weights built in {results['build_s']:.1f} s", flush=True)
    for mode in args.modes:
        if mode in ("4bit", "8bit"):
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                results["modes"][mode] = {"skipped": "bitsandbytes is not installed"}
                print(f"{mode}: skipped (bitsandbytes is not installed)", flush=True)
                continue
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            model = load(mode, config, state, args.gpu_budget_gib)
        except Exception as error:  # report and go on with the next mode
            results["modes"][mode] = {"error": f"{type(error).__name__}: {error}"[:500]}
            print(f"{mode}: load failed: {error}", flush=True)
            continue
        entry = {"load_s": time.perf_counter() - t, "weights_gib": torch.cuda.memory_allocated() / GIB}
        entry["load_peak_gib"] = torch.cuda.max_memory_allocated() / GIB
        if mode in ("4bit", "8bit"):
            expected = set(quantized_module_names(meta_model, quantization_config_for(4 if mode == "4bit" else 8)))
            replaced = {n for n, m in model.named_modules() if type(m).__module__.startswith("bitsandbytes")}
            entry["quantized_modules"] = len(replaced)
            entry["quantized_as_planned"] = replaced == expected
        if mode == "offload":
            device_map = getattr(model, "hf_device_map", {})
            entry["offloaded"] = sorted(k for k, v in device_map.items() if v in ("cpu", "disk"))[:40]
        torch.cuda.reset_peak_memory_stats()
        try:
            entry.update(tts(model, config, args.prompt_len, args.frames))
        except Exception as error:
            entry["generate_error"] = f"{type(error).__name__}: {error}"[:500]
        entry["generate_peak_gib"] = torch.cuda.max_memory_allocated() / GIB
        results["modes"][mode] = entry
        print(f"{mode}: {json.dumps(entry)}", flush=True)
        del model
    print(json.dumps(results))


if __name__ == "__main__":
    main()
