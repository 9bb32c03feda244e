"""Training recipes of Baichuan-Audio as code: which parameters train in each stage, and the LoRA SFT config.

==================  =================================================================================================
recipe              trainable parameters (names relative to ``BaichuanAudioForConditionalGeneration``)
==================  =================================================================================================
stage 1             ``model.audio_embed.*`` and ``audio_head.*`` (the LLM is frozen) -- paper section 3.3.1
stage 2             everything except ``model.language_model.embed_tokens.*`` (text embedding), ``lm_head.*``,
                    ``model.audio_tokenizer.*`` and ``code2wav.*``
LoRA SFT            LoRA adapters on the LLM projections only (``q/k/v/o_proj``, ``gate/up/down_proj`` of
                    ``model.language_model.layers.*``, selected by :data:`LLM_LORA_TARGET_REGEX`), plus optionally the
                    audio head and/or the audio embedding tables as fully trained ``modules_to_save``
==================  =================================================================================================

The audio tokenizer and code2wav are always frozen (the tokenizer runs under ``no_grad`` anyway). Stage recipes
act on ``requires_grad`` in place and return the sorted trainable names; :func:`lora_sft_config` returns a
``peft.LoraConfig`` for ``get_peft_model`` / TRL's ``peft_config=``.
"""

from __future__ import annotations

from torch import nn

#: LoRA targets: the projections of the Qwen2 decoder layers, and nothing in the audio tokenizer / head / code2wav.
#: PEFT matches a string ``target_modules`` with ``re.fullmatch`` against the full module name.
LLM_LORA_TARGET_REGEX = (
    r"(?:.*\.)?model\.language_model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
)
STAGE1_TRAINABLE_PREFIXES = ("model.audio_embed.", "audio_head.")
STAGE2_FROZEN_PREFIXES = ("model.language_model.embed_tokens.", "lm_head.", "model.audio_tokenizer.", "code2wav.")
ALWAYS_FROZEN_PREFIXES = ("model.audio_tokenizer.", "code2wav.")


def _set_trainable(model: nn.Module, predicate) -> list[str]:
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(bool(predicate(name)))
        if param.requires_grad:
            names.append(name)
    return sorted(names)


def apply_stage1(model: nn.Module) -> list[str]:
    """Stage 1: freeze everything but the audio embeddings and the audio head. Returns the trainable names."""
    return _set_trainable(model, lambda name: name.startswith(STAGE1_TRAINABLE_PREFIXES))


def apply_stage2(model: nn.Module) -> list[str]:
    """Stage 2: train everything except the text embedding, the LM head, the audio tokenizer and code2wav."""
    return _set_trainable(model, lambda name: not name.startswith(STAGE2_FROZEN_PREFIXES))


def apply_stage(model: nn.Module, stage: int) -> list[str]:
    """:func:`apply_stage1` or :func:`apply_stage2`."""
    if stage == 1:
        return apply_stage1(model)
    if stage == 2:
        return apply_stage2(model)
    raise ValueError(f"stage must be 1 or 2, got {stage}")


def audio_embed_module_names(num_codebooks: int) -> list[str]:
    """``modules_to_save`` names of the audio embedding tables (each ``nn.Embedding`` is wrapped on its own, so the
    audio head, which indexes the tables, sees the trained copies)."""
    return [f"model.audio_embed.embeddings.{i}" for i in range(num_codebooks)]


def lora_sft_config(
    r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    train_audio_head: bool = True,
    train_audio_embed: bool = False,
    num_codebooks: int = 8,
    **kwargs,
):
    """``peft.LoraConfig`` for speech SFT: LoRA on the LLM projections (:data:`LLM_LORA_TARGET_REGEX`), the audio
    head (``train_audio_head``) and the audio embedding tables (``train_audio_embed``, ``num_codebooks`` tables) fully
    trained and saved with the adapter. ``kwargs`` go to ``LoraConfig`` (e.g. ``use_rslora``)."""
    from peft import LoraConfig

    modules_to_save = (["audio_head"] if train_audio_head else []) + (
        audio_embed_module_names(num_codebooks) if train_audio_embed else []
    )
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=LLM_LORA_TARGET_REGEX,
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
        **kwargs,
    )


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Sorted names of the parameters with ``requires_grad``."""
    return sorted(name for name, param in model.named_parameters() if param.requires_grad)


def merge_lora(peft_model) -> nn.Module:
    """Merge the LoRA adapters into the base weights and unwrap (``modules_to_save`` copies replace the originals)."""
    return peft_model.merge_and_unload()


def load_lora(model: nn.Module, adapter_dir: str, merge: bool = False, is_trainable: bool = False):
    """Load a saved adapter (``PeftModel.save_pretrained`` / ``trainer.save_model`` output) onto a base model;
    ``merge=True`` returns the merged plain model."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)
    return merge_lora(peft_model) if merge else peft_model


__all__ = [
    "LLM_LORA_TARGET_REGEX",
    "STAGE1_TRAINABLE_PREFIXES",
    "STAGE2_FROZEN_PREFIXES",
    "apply_stage",
    "apply_stage1",
    "apply_stage2",
    "audio_embed_module_names",
    "lora_sft_config",
    "load_lora",
    "merge_lora",
    "trainable_parameter_names",
]
