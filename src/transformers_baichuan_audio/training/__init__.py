"""Training Baichuan-Audio: the dataset format and collator (:mod:`.data`), the paper's recipes and LoRA SFT
(:mod:`.recipes`), TRL's trainer with the audio loss (:mod:`.trainer`, imports trl), audio-code pre-computation
(:mod:`.precompute`), and the example scripts' rows loader and argument parser (:mod:`.scripts`). Models come from
:func:`transformers_baichuan_audio.loading.load_model_and_processor` (``training=True``); the tiny random model for
smoke runs is ``tiny_random.build_tiny_random(training=True)``."""

from .data import IGNORE_INDEX, TASKS, BaichuanAudioCollator, row_segments
from .recipes import (
    LLM_LORA_TARGET_REGEX,
    apply_stage,
    apply_stage1,
    apply_stage2,
    load_lora,
    lora_sft_config,
    merge_lora,
    trainable_parameter_names,
)

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "BaichuanAudioCollator",
    "row_segments",
    "LLM_LORA_TARGET_REGEX",
    "apply_stage",
    "apply_stage1",
    "apply_stage2",
    "load_lora",
    "lora_sft_config",
    "merge_lora",
    "trainable_parameter_names",
]
