"""Memory per GPU of each training recipe, from parameter counts and optimizer state (no GPU needed).

:func:`parameter_counts` builds the model on the ``meta`` device (no memory) and counts the parameters that train
in stage 1, stage 2 and LoRA SFT (:mod:`.recipes`). :func:`memory_per_gpu` turns them into bytes per GPU for data
parallel (every GPU holds everything) and FSDP / ZeRO-3 (weights, gradients and optimizer state divided by the
number of GPUs, plus the largest unit gathered at a time), in two precision regimes:

* ``"bf16"`` -- weights in bf16 (2 B), gradients of the trainable weights in bf16 (2 B), AdamW's two moments in the
  weights' dtype (4 B): what ``examples/train_stage.py --bf16`` runs (it loads the model in bf16);
* ``"mixed"`` -- fp32 master weights of the trainable parameters (4 B) + fp32 gradients (4 B) + fp32 AdamW moments
  (8 B), the frozen ones in bf16 (2 B): FSDP / DeepSpeed mixed precision with an fp32 model.

Parameters the model keeps in fp32 whatever the dtype (code2wav, the RVQ codebooks) count 4 B and are frozen.
Activations are NOT included (they depend on batch and sequence length); with ``--gradient_checkpointing`` they are
about ``layers x tokens x hidden x 2 B`` for the saved layer inputs plus one layer's working set.
"""

from __future__ import annotations

GIB = 1024**3
#: bytes per trainable / frozen parameter in each regime: (weights, gradients, optimizer state) for trainable ones.
REGIMES = {"bf16": {"trainable": 2 + 2 + 4, "frozen": 2}, "mixed": {"trainable": 4 + 4 + 8, "frozen": 2}}


def parameter_counts(config=None, lora_r: int = 16) -> dict[str, dict[str, int]]:
    """``{recipe: {"trainable": n, "frozen": n, "fp32_frozen": n}}`` for ``"stage1"``, ``"stage2"`` and
    ``"lora"`` (LoRA rank ``lora_r`` on the LLM projections + the audio head trained in full, the defaults of
    :func:`.recipes.lora_sft_config`), plus ``"largest_unit"`` (parameters of the largest FSDP unit). ``config``:
    a ``BaichuanAudioConfig``; default ``BaichuanAudioConfig()``, the released 10B model."""
    import re

    import torch

    from ..configuration import BaichuanAudioConfig
    from ..modeling.baichuan_audio import BaichuanAudioForConditionalGeneration
    from .distributed import fsdp_wrap_classes
    from .recipes import LLM_LORA_TARGET_REGEX, apply_stage1, apply_stage2

    config = BaichuanAudioConfig() if config is None else config
    with torch.device("meta"):
        model = BaichuanAudioForConditionalGeneration(config)
    fp32 = {n for n, _ in model.named_parameters() if n.startswith("code2wav.") or ".codebook" in n}

    def count(trainable: set[str], extra_trainable: int = 0) -> dict[str, int]:
        sizes = dict((n, p.numel()) for n, p in model.named_parameters())
        return {
            "trainable": sum(sizes[n] for n in trainable) + extra_trainable,
            "frozen": sum(v for n, v in sizes.items() if n not in trainable and n not in fp32),
            "fp32_frozen": sum(sizes[n] for n in fp32 if n not in trainable),
        }

    result = {"stage1": count(set(apply_stage1(model))), "stage2": count(set(apply_stage2(model)))}
    lora_extra = 0
    for name, module in model.named_modules():
        if re.fullmatch(LLM_LORA_TARGET_REGEX, name):
            lora_extra += lora_r * (module.in_features + module.out_features)
    result["lora"] = count({n for n, _ in model.named_parameters() if n.startswith("audio_head.")}, lora_extra)
    units = set(fsdp_wrap_classes(model))
    largest = max(sum(p.numel() for p in m.parameters()) for m in model.modules() if type(m).__name__ in units)
    result["largest_unit"] = {"trainable": largest, "frozen": 0, "fp32_frozen": 0}
    return result


def memory_per_gpu(counts: dict[str, int], num_gpus: int, regime: str = "bf16", sharded: bool = True,
                   largest_unit: int = 0) -> float:  # fmt: skip
    """Bytes per GPU for one recipe's ``counts`` (an entry of :func:`parameter_counts`): everything divided by
    ``num_gpus`` when ``sharded`` (FSDP full shard / ZeRO-3) plus the ``largest_unit`` parameters gathered in bf16,
    else (data parallel) everything on every GPU. Activations excluded."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {sorted(REGIMES)}, got {regime!r}")
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    per = REGIMES[regime]
    total = counts["trainable"] * per["trainable"] + counts["frozen"] * per["frozen"] + counts["fp32_frozen"] * 4
    return total / num_gpus + 2 * largest_unit if sharded else float(total)


def memory_table(config=None, gpus=(1, 8, 16), lora_r: int = 16) -> list[dict]:
    """Rows ``{recipe, regime, parallel, gpus, gib, trainable, frozen}`` for every recipe x regime x (data parallel,
    FSDP at each of ``gpus``) -- the README's table (``benchmarks/training_memory.py`` prints it)."""
    counts = parameter_counts(config, lora_r=lora_r)
    largest = counts["largest_unit"]["trainable"]
    rows = []
    for recipe in ("stage1", "stage2", "lora"):
        c = counts[recipe]
        for regime in REGIMES:
            base = {"recipe": recipe, "regime": regime, "trainable": c["trainable"],
                    "frozen": c["frozen"] + c["fp32_frozen"]}  # fmt: skip
            rows.append({**base, "parallel": "ddp", "gpus": 1, "gib": memory_per_gpu(c, 1, regime, False) / GIB})
            for n in gpus:
                gib = memory_per_gpu(c, n, regime, True, largest) / GIB
                rows.append({**base, "parallel": "fsdp", "gpus": n, "gib": gib})
    return rows


__all__ = ["GIB", "REGIMES", "memory_per_gpu", "memory_table", "parameter_counts"]
