"""Loading options for the released 10B model on one small GPU or several: quantisation and attention kernels.

Quantisation (bitsandbytes, optional: ``pip install bitsandbytes``; its kernels need a CUDA GPU):
:func:`quantization_config_for` builds the ``BitsAndBytesConfig`` that quantises the LLM's decoder layers ONLY::

    from transformers_baichuan_audio.modeling.big_model import quantization_config_for
    model = BaichuanAudioForConditionalGeneration.from_pretrained(
        path, quantization_config=quantization_config_for(4), dtype="auto", device_map="auto"
    )

A plain ``BitsAndBytesConfig(load_in_4bit=True)`` would also quantise every ``nn.Linear`` of the audio head, the
audio tokenizer and code2wav (transformers keeps only the LM head and the model's ``_keep_in_fp32_modules`` out,
and this model keeps code2wav in fp32 through ``_keep_in_fp32_modules_strict``, which bitsandbytes does not read).
The helper lists them in ``llm_int8_skip_modules`` (:data:`NOT_QUANTIZED`): the audio head (it picks the 8 codes of
every frame), the LM head, the audio tokenizer (its codes are discrete: a small error changes them), code2wav
(fp32 like the original) and the embeddings (never ``nn.Linear``, listed for clarity). :func:`quantized_module_names`
says which modules a config would replace, without loading anything.

Attention: every attention module of the model (LLM, audio head, audio tokenizer encoder, code2wav decoder /
prenet / U-Net) calls ``transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS`` with its sub-config's
``_attn_implementation``, so any implementation registered with ``transformers.AttentionInterface.register`` (or a
hub kernel through the ``kernels`` package) is used there. A NEW name also needs a mask function
(``transformers.AttentionMaskInterface.register(name, transformers.masking_utils.sdpa_mask)`` for sdpa-style masks):
without one transformers builds no mask for the LLM, which is wrong for its multi-token steps after cached positions
(the speech loop has such steps at every switch between text and audio). code2wav does not declare flash-attention support (its
attention takes 4-D padding / causal masks), so transformers refuses ``attn_implementation="flash_attention_2"`` for
the whole model; :func:`attn_implementation_for` gives the per-sub-config form that keeps code2wav on sdpa::

    model = BaichuanAudioForConditionalGeneration.from_pretrained(
        path, attn_implementation=attn_implementation_for("flash_attention_2"), dtype="auto"
    )
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BitsAndBytesConfig
from transformers.quantizers.base import get_keys_to_not_convert
from transformers.quantizers.quantizers_utils import should_convert_module

#: Modules of ``BaichuanAudioForConditionalGeneration`` that :func:`quantization_config_for` never quantises
#: (patterns as ``llm_int8_skip_modules`` reads them: a module path prefix or suffix).
NOT_QUANTIZED = ("lm_head", "audio_head", "code2wav", "model.audio_embed", "model.language_model.embed_tokens")
AUDIO_TOKENIZER = "model.audio_tokenizer"

#: Sub-configs of :class:`~..configuration.BaichuanAudioConfig` and whether their models declare flash attention.
_FLASH_CAPABLE = {"text_config": True, "audio_head_config": True, "audio_tokenizer_config": True}


def quantization_config_for(
    bits: int = 4,
    *,
    compute_dtype: torch.dtype = torch.bfloat16,
    double_quant: bool = True,
    quantize_audio_tokenizer: bool = False,
    **kwargs,
) -> BitsAndBytesConfig:
    """A ``BitsAndBytesConfig`` quantising the LLM decoder layers only (see the module docstring).

    Args:
        bits: 4 (NF4, ``bnb_4bit_compute_dtype=compute_dtype``, nested quantisation if ``double_quant``) or 8
            (LLM.int8()).
        quantize_audio_tokenizer: also quantise the audio tokenizer's encoder / bridge (saves about 1.2 GB at 4
            bits; its codes may then differ from the unquantised model's).
        kwargs: further ``BitsAndBytesConfig`` fields (e.g. ``llm_int8_enable_fp32_cpu_offload=True``).
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 (NF4) or 8 (LLM.int8()), got {bits!r}")
    skip = list(NOT_QUANTIZED) + ([] if quantize_audio_tokenizer else [AUDIO_TOKENIZER])
    skip += list(kwargs.pop("llm_int8_skip_modules", None) or [])
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip, **kwargs)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=double_quant,
        llm_int8_skip_modules=skip,
        **kwargs,
    )


def quantized_module_names(model: nn.Module, quantization_config: BitsAndBytesConfig) -> list[str]:
    """Names of the modules of ``model`` that loading with ``quantization_config`` replaces by bitsandbytes layers.

    transformers' rule: every module of type ``nn.Linear`` whose name no skip pattern matches
    (``transformers.quantizers.quantizers_utils.should_convert_module``); the patterns are ``llm_int8_skip_modules``
    (when None: transformers' defaults, ``transformers.quantizers.base.get_keys_to_not_convert``); transformers
    also skips a model's ``_keep_in_fp32_modules``, which this model leaves empty (it keeps code2wav in fp32 through
    the strict variant). Works on a model built on the meta device.
    """
    skip = quantization_config.llm_int8_skip_modules
    # without explicit skips transformers keeps its defaults out: the output embeddings, tied and last modules
    skip = list(get_keys_to_not_convert(model) if skip is None else skip)
    return [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and should_convert_module(name, skip)
    ]


def attn_implementation_for(implementation: str) -> dict[str, str]:
    """``attn_implementation`` per sub-config: ``implementation`` for the LLM, the audio head and the audio
    tokenizer; code2wav keeps ``"sdpa"`` for flash-attention implementations (it does not declare them), else gets
    ``implementation`` too. Pass the result to ``from_pretrained(..., attn_implementation=...)``."""
    flash = "flash" in implementation
    out = {"": implementation, **dict.fromkeys(_FLASH_CAPABLE, implementation)}
    out["code2wav_config"] = "sdpa" if flash else implementation
    return out


__all__ = [
    "NOT_QUANTIZED",
    "AUDIO_TOKENIZER",
    "quantization_config_for",
    "quantized_module_names",
    "attn_implementation_for",
]
