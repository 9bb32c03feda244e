"""Grouped-query attention of single-token decode steps without copying the KV cache, also inside ``torch.compile``.

The LLM (Qwen2) has fewer key/value heads than query heads (0.5B: 14 query heads on 2 KV heads; 7B: 28 on 4). For a
masked attention transformers' ``sdpa`` repeats every KV head for its query heads (``repeat_kv``), a copy of the
whole cache per layer and step; eagerly, a single query token is packed instead (the query heads of one KV head as
that head's query rows, ``pack_gqa``), but not while ``torch.compile`` traces. With a static cache (the compiled
decode steps) every step then copies the whole preallocated length: measured on a 2-core AMD EPYC (Zen 3, AVX2) VM,
fp32, 2 threads, 6 Qwen2.5-0.5B-shaped layers, one compiled step: 10.8 ms with a 128-position static cache, 33.2 ms
with 4096 positions (eager 19.3 ms), 13.4 ms with 4096 positions packed as here.

:func:`grouped_decode_sdpa` (registered with ``transformers.AttentionInterface`` and ``AttentionMaskInterface`` as
:data:`GROUPED_DECODE_SDPA`, with ``sdpa``'s masks) packs a single query token under compile too, and hands every other
call (several query tokens, no grouping, a per-head mask, dropout, ``output_attentions``) to the registered ``sdpa``
function unchanged. The same products in another grouping: results equal ``sdpa``'s up to float rounding.

A static cache is as long as the longest sequence it was made for (``static_cache_max_len``), and the attention of a
compiled step (fixed shapes) reads all of it, the empty slots masked. On a CPU the flash kernel's time grows with
that length: 284 us per layer at 4096 positions against 45 us over the 128 that a short conversation fills (one
query token, 14 heads on 2 KV heads of 64, measured on the VM above). From :data:`FILLED_PREFIX_MIN_KEYS` keys on,
the compiled CPU step therefore attends through :func:`filled_prefix_sdpa`, an opaque op (``torch.library``) that
reads the last attended position off the mask when it runs and hands ``sdpa`` only the filled prefix of the cache
(rounded up to :data:`FILLED_PREFIX_ROUND` positions): the masked slots it leaves out would add exact zeros, so the
result is the full attention's up to float rounding (the CPU kernel's key block size depends on the key count; the
0.5B-shaped step below gave the same bits). Six 0.5B-shaped layers, one
compiled step with 100 positions filled, alternating in one process: 12.2 -> 10.5 ms at 4096 positions, 10.6 ->
10.2 at 2048, but 9.8 -> 10.0 at 1024 (the op's own cost, ~35 us a layer, outweighs what it saves), so shorter
caches keep the in-graph kernel. GPUs keep it too (the op reads the mask on the host).

:func:`use_grouped_decode_attention` switches a model that uses ``sdpa`` to it (the compiled decode steps do;
``save_pretrained`` does not write the implementation to ``config.json``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

#: The name :func:`grouped_decode_sdpa` is registered under.
GROUPED_DECODE_SDPA = "baichuan_audio_grouped_sdpa"


#: Key length (static cache positions) from which the compiled CPU step attends over the filled prefix only.
FILLED_PREFIX_MIN_KEYS = 2048

#: The filled prefix is rounded up to a multiple of this many positions.
FILLED_PREFIX_ROUND = 128


def filled_length(mask: torch.Tensor) -> int:
    """One past the last position any row of the boolean ``mask`` (..., K) attends, rounded up to a multiple of
    :data:`FILLED_PREFIX_ROUND` (at most K; K when no position is attended)."""
    keys = mask.shape[-1]
    attended = mask.reshape(-1, keys).any(0).nonzero()
    if attended.numel() == 0:
        return keys
    last = int(attended[-1, 0]) + 1
    return min(keys, -(-last // FILLED_PREFIX_ROUND) * FILLED_PREFIX_ROUND)


@torch.library.custom_op("baichuan_audio::filled_prefix_sdpa", mutates_args=())
def filled_prefix_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """``F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)`` with a boolean ``mask``
    (..., K), computed over the first :func:`filled_length` keys only (the rest are masked: they add nothing)."""
    keys = filled_length(mask)
    return F.scaled_dot_product_attention(
        query, key[..., :keys, :], value[..., :keys, :], attn_mask=mask[..., :keys], scale=scale
    )


@filled_prefix_sdpa.register_fake
def _filled_prefix_sdpa_fake(query, key, value, mask, scale):
    return query.new_empty(*query.shape[:-1], value.shape[-1])


def grouped_decode_sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature (``query`` (B, H, q, D), ``key`` / ``value`` (B, H_kv, K, D)):
    returns (B, q, H, D) and no weights. One query token with grouped KV heads and a mask shared by all heads: one
    ``scaled_dot_product_attention`` over the KV heads, each with its query heads as rows (compiled on a CPU with at
    least :data:`FILLED_PREFIX_MIN_KEYS` keys: over their filled prefix, :func:`filled_prefix_sdpa`); else
    ``sdpa``."""
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    if (
        length != 1
        or kv_heads == heads
        or heads % kv_heads
        or (attention_mask is not None and (attention_mask.dim() != 4 or attention_mask.shape[1] != 1))
        or dropout
        or kwargs.get("output_attentions")
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
    ):
        return ALL_ATTENTION_FUNCTIONS["sdpa"](
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    if (
        attention_mask is not None
        and attention_mask.dtype == torch.bool
        and key.shape[2] >= FILLED_PREFIX_MIN_KEYS
        and key.device.type == "cpu"
        and torch.compiler.is_compiling()
    ):
        scale = dim**-0.5 if scaling is None else scaling
        out = torch.ops.baichuan_audio.filled_prefix_sdpa(grouped, key, value, attention_mask, scale)
    else:
        out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2), None


AttentionInterface.register(GROUPED_DECODE_SDPA, grouped_decode_sdpa)
AttentionMaskInterface.register(GROUPED_DECODE_SDPA, sdpa_mask)


def use_grouped_decode_attention(model) -> bool:
    """Switch ``model`` (a transformers model, e.g. the LLM) from ``sdpa`` to :data:`GROUPED_DECODE_SDPA` with its
    public ``set_attn_implementation``. Other implementations, and modules without that method, are left as they
    are. Returns whether it uses it now."""
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation == "sdpa" and callable(getattr(model, "set_attn_implementation", None)):
        model.set_attn_implementation(GROUPED_DECODE_SDPA)
        implementation = model.config._attn_implementation
    return implementation == GROUPED_DECODE_SDPA


__all__ = [
    "FILLED_PREFIX_MIN_KEYS",
    "FILLED_PREFIX_ROUND",
    "GROUPED_DECODE_SDPA",
    "filled_length",
    "filled_prefix_sdpa",
    "grouped_decode_sdpa",
    "use_grouped_decode_attention",
]
