"""Original LLM / audio-embedding / LM-head / audio-head weights -> :class:`BaichuanAudioForConditionalGeneration` keys."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..configuration import BaichuanAudioConfig

_LLM_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
_HEAD_LAYER_RENAMES = {
    "layernorm1.weight": "input_layernorm.weight",
    "layernorm2.weight": "post_attention_layernorm.weight",
    "self_attention.out_proj.weight": "self_attn.o_proj.weight",
    "self_attention.out_proj.bias": "self_attn.o_proj.bias",
}
#: Original keys dropped on purpose: the depth-transformer FFN biases exist in the checkpoint but the original forward
#: never uses them (adding them would change the outputs).
DROPPED_ORIGINAL_KEYS = (
    r"audio_head\.transformer_layers\.\d+\.linear1\.bias",
    r"audio_head\.transformer_layers\.\d+\.linear2\.bias",
)
_OWNED_PREFIXES = ("model.", "lm_head.", "audio_head.")
_QKV_BIAS_KEY = r"model\.layers\.\d+\.self_attn\.(W_pack|[qkv]_proj)\.bias"


def _split_rows(tensor: torch.Tensor, sizes: list[int], key: str) -> list[torch.Tensor]:
    if tensor.shape[0] != sum(sizes):
        raise ValueError(f"{key}: expected {sum(sizes)} rows to split into {sizes}, got shape {tuple(tensor.shape)}")
    return [t.clone() for t in torch.split(tensor, sizes, dim=0)]


def convert_original_model_weights(
    original: Mapping[str, torch.Tensor],
    config: BaichuanAudioConfig | None = None,
    *,
    qkv_bias: bool = True,
    norm_head: bool = False,
    tie_word_embeddings: bool = False,
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map the original ``OmniForCausalLM`` LLM / audio-embedding / LM-head / audio-head weights to this layout.

    Handles the original keys under ``model.``, ``lm_head.`` and ``audio_head.``; other keys (``audio_tokenizer.*``)
    are left to the tokenizer / code2wav converters. Keys of the result are relative to
    :class:`BaichuanAudioForConditionalGeneration`.

    * ``model.layers.{l}.self_attn.W_pack`` (fused q|k|v, with bias) is split by ``[q | kv | kv]`` widths
      (``num_attention_heads * head_dim`` / ``num_key_value_heads * head_dim`` of ``config.text_config``).
    * ``model.audio_embed_layers.{i}`` -> ``model.audio_embed.embeddings.{i}``; other ``model.*`` ->
      ``model.language_model.*``.
    * ``audio_head.transformer_layers.{l}.self_attention.in_proj_{weight,bias}`` -> ``q/k/v_proj``; ``linear1`` /
      ``linear2`` weights viewed as (I, P, H) / (H, P, I) are sliced per position into ``mlp.{p}.fc1`` / ``fc2``;
      ``headnorm`` -> ``norm``; ``heads.{i}`` unchanged. The unused ``linear1.bias`` / ``linear2.bias`` are dropped.

    * Separate ``self_attn.{q,k,v}_proj`` (original ``attention_qkv_pack=false``) keep their names.
    * ``qkv_bias=False`` (original ``attention_qkv_bias=false``, its default): Qwen2 always has q/k/v biases, so zero
      biases are written next to the weights (adding zero is exact).
    * ``norm_head=True`` (original ``use_norm_head``, its default): the original ``NormHead`` L2-normalises the rows of
      its weight on every call; the normalised rows are stored, so the plain linear LM head gives the same logits
      (normalised in float32, stored in the checkpoint's dtype; fine-tuning no longer renormalises).
    * ``tie_word_embeddings=True``: the LM head is the input embedding (``lm_head.weight`` is written from
      ``model.embed_tokens.weight``; a stored ``lm_head.weight`` is the same tensor and is dropped).

    With ``config`` every key converts on its own (shard by shard); without it, the split sizes are read from the
    shapes of sibling keys (``o_proj``, ``layernorm1``, ``linear1``), which must then be in ``original`` too.

    Returns:
        ``(converted, handled)``: the new state dict and the set of original keys consumed (converted or dropped).
    Raises:
        KeyError for an unknown key under the handled prefixes; ValueError for inconsistent shapes.
    """
    converted: dict[str, torch.Tensor] = {}
    handled: set[str] = set()
    for key, tensor in original.items():
        if not key.startswith(_OWNED_PREFIXES):
            continue
        if any(re.fullmatch(pattern, key) for pattern in DROPPED_ORIGINAL_KEYS):
            handled.add(key)
            continue
        if not qkv_bias and re.fullmatch(_QKV_BIAS_KEY, key):  # the original has no such parameter: never loaded
            handled.add(key)
            continue
        if key.startswith("model."):
            new = _convert_llm_key(key, tensor, original, config)
            if new is not None and not qkv_bias:
                new.update(_zero_qkv_biases(new))
            if key == "model.embed_tokens.weight" and tie_word_embeddings:
                new["lm_head.weight"] = _lm_head_weight(tensor, norm_head, copy=True)
        elif key == "lm_head.weight":
            new = {} if tie_word_embeddings else {"lm_head.weight": _lm_head_weight(tensor, norm_head)}
        else:
            new = _convert_head_key(key, tensor, original, config)
        if new is None:
            raise KeyError(f"unknown original key {key!r} (shape {tuple(tensor.shape)}) under {_OWNED_PREFIXES}")
        converted.update(new)
        handled.add(key)
    return converted, handled


def _zero_qkv_biases(converted: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero ``q/k/v_proj.bias`` for the q/k/v weights among ``converted`` (an original without qkv biases)."""
    return {
        key[: -len("weight")] + "bias": tensor.new_zeros(tensor.shape[0])
        for key, tensor in converted.items()
        if re.search(r"self_attn\.[qkv]_proj\.weight$", key)
    }


def _lm_head_weight(tensor: torch.Tensor, norm_head: bool, copy: bool = False) -> torch.Tensor:
    if norm_head:  # what the original NormHead computes on every call
        return torch.nn.functional.normalize(tensor.float()).to(tensor.dtype)
    return tensor.clone() if copy else tensor


def _lookup(original: Mapping[str, torch.Tensor], key: str, needed_for: str) -> torch.Tensor:
    if key not in original:
        raise KeyError(
            f"{needed_for}: pass `config` to size the split, or convert it together with {key!r} (its shape is used)"
        )
    return original[key]


def _convert_llm_key(key, tensor, original, config) -> dict[str, torch.Tensor] | None:
    if m := re.fullmatch(r"model\.audio_embed_layers\.(\d+)\.weight", key):
        return {f"model.audio_embed.embeddings.{m.group(1)}.weight": tensor}
    if key in ("model.embed_tokens.weight", "model.norm.weight"):
        return {"model.language_model." + key[len("model.") :]: tensor}
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
    if m is None:
        return None
    layer, rest = m.groups()
    prefix = f"model.language_model.layers.{layer}."
    if rest in _LLM_LAYER_RENAMES:
        return {prefix + _LLM_LAYER_RENAMES[rest]: tensor}
    if re.fullmatch(r"self_attn\.[qkv]_proj\.(weight|bias)", rest):  # original attention_qkv_pack=false
        return {prefix + rest: tensor}
    if rest in ("self_attn.W_pack.weight", "self_attn.W_pack.bias"):
        if config is not None:
            text = config.text_config
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            q_width, kv_width = text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim
            if tensor.shape[0] != q_width + 2 * kv_width:
                raise ValueError(
                    f"{key}: shape {tuple(tensor.shape)} does not match text_config (q {q_width}, kv {kv_width})"
                )
        else:  # q width = input width of o_proj
            q_width = _lookup(original, f"model.layers.{layer}.self_attn.o_proj.weight", key).shape[1]
            kv_width = (tensor.shape[0] - q_width) // 2
        q, k, v = _split_rows(tensor, [q_width, kv_width, kv_width], key)
        suffix = rest.rsplit(".", 1)[1]
        return {f"{prefix}self_attn.{name}_proj.{suffix}": t for name, t in zip("qkv", (q, k, v))}
    return None


def _convert_head_key(key, tensor, original, config) -> dict[str, torch.Tensor] | None:
    if key == "audio_head.headnorm.weight":
        return {"audio_head.norm.weight": tensor}
    if re.fullmatch(r"audio_head\.heads\.\d+\.(weight|bias)", key):
        return {key: tensor}
    m = re.fullmatch(r"audio_head\.transformer_layers\.(\d+)\.(.+)", key)
    if m is None:
        return None
    layer, rest = m.groups()
    prefix = f"audio_head.layers.{layer}."
    if rest in _HEAD_LAYER_RENAMES:
        return {prefix + _HEAD_LAYER_RENAMES[rest]: tensor}
    if rest in ("self_attention.in_proj_weight", "self_attention.in_proj_bias"):
        hidden = tensor.shape[0] // 3
        q, k, v = _split_rows(tensor, [hidden, hidden, hidden], key)
        suffix = "weight" if rest.endswith("weight") else "bias"
        return {f"{prefix}self_attn.{name}_proj.{suffix}": t for name, t in zip("qkv", (q, k, v))}
    if rest in ("linear1.weight", "linear2.weight"):
        layer_prefix = f"audio_head.transformer_layers.{layer}."
        if config is not None:
            positions = config.num_codebooks
        elif rest == "linear1.weight":  # (I, P * H) with H the width of layernorm1
            positions = tensor.shape[1] // _lookup(original, layer_prefix + "layernorm1.weight", key).shape[0]
        else:  # (H, P * I) with I the rows of linear1
            positions = tensor.shape[1] // _lookup(original, layer_prefix + "linear1.weight", key).shape[0]
        if tensor.shape[1] % positions != 0:
            raise ValueError(f"{key}: shape {tuple(tensor.shape)} is not split into {positions} positions")
        # linear1 (I, P * H) -> (I, P, H): position p is fc1.weight (I, H);
        # linear2 (H, P * I) -> (H, P, I): position p is fc2.weight (H, I).
        per_position = tensor.reshape(tensor.shape[0], positions, -1).unbind(dim=1)
        name = "fc1" if rest == "linear1.weight" else "fc2"
        return {f"{prefix}mlp.{p}.{name}.weight": w.contiguous().clone() for p, w in enumerate(per_position)}
    return None


__all__ = ["convert_original_model_weights", "DROPPED_ORIGINAL_KEYS"]
