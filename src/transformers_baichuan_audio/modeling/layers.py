"""Building blocks shared by the audio tokenizer and code2wav: sinusoids, RMSNorm, masks, and the Whisper-style
pre-norm transformer layer (attention with ``k_proj`` without bias) used by the encoder, the reconstruction
decoder and the flow-matching prenet.

Attention goes through the transformers attention interface (``eager`` / ``sdpa`` / others registered), with
boolean masks (``True`` = attend) built by :func:`build_attention_mask`. The original packs variable-length
sequences for flash-attn varlen; a key-padding mask gives the same result on padded batches (padded query rows
attend to the valid keys and are zeroed by the caller).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .streaming_state import StreamingCache


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's sinusoidal table (length, channels): ``[sin | cos]`` halves."""
    if channels % 2 != 0:
        raise ValueError(f"sinusoids need an even number of channels, got {channels}")
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled_time = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class BaichuanRMSNorm(nn.Module):
    """RMSNorm computed in fp32, as the original (``weight * x / rms(x)``)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states.to(torch.float32) * torch.rsqrt(variance + self.variance_epsilon)
        return (self.weight.to(torch.float32) * hidden_states).to(input_dtype)


def lengths_to_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, T) boolean mask, True on valid positions."""
    if max_length is None:
        max_length = int(lengths.max()) if lengths.numel() else 0
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def build_attention_mask(
    valid: torch.Tensor | None,
    seq_len: int,
    *,
    causal: bool = False,
    chunk_size: int | None = None,
    device: torch.device | None = None,
    past_length: int = 0,
    left_chunks: int = -1,
) -> torch.Tensor | None:
    """Boolean (B or 1, 1, T, past_length + T) attention mask, True = attend.

    Args:
        valid: (B, T) key-validity mask (None: every position is valid).
        causal: each query attends to keys at or before it.
        chunk_size: static chunk mask (each query attends to every key of its own chunk and of earlier chunks);
            takes the place of ``causal`` when given.
        past_length: causal only: ``past_length`` cached keys precede the T queries (all visible to them).
        left_chunks: with ``chunk_size``: the earlier chunks visible to a query, -1 (default) all of them, else the
            ``left_chunks`` before its own.
    Returns None when nothing is masked (lets SDPA pick its fastest kernel).
    """
    if valid is not None:
        device = valid.device
    mask = None
    if chunk_size is not None and chunk_size > 0:
        pos = torch.arange(seq_len, device=device) // chunk_size
        mask = pos[None, :] <= pos[:, None]
        if left_chunks >= 0:
            mask = mask & (pos[None, :] >= pos[:, None] - left_chunks)
    elif causal:
        pos = torch.arange(seq_len, device=device)
        mask = torch.arange(past_length + seq_len, device=device)[None, :] <= pos[:, None] + past_length
    if mask is not None:
        mask = mask[None, None]
    # Traced by torch.compile: the key mask always (no data-dependent branch).
    if valid is not None and (torch.compiler.is_compiling() or not bool(valid.all())):
        key_mask = valid[:, None, None, :]
        mask = key_mask if mask is None else (mask & key_mask)
    return mask


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
):
    """Plain softmax attention; accepts boolean (True = attend) or additive masks."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
        else:
            attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class BaichuanWhisperAttention(nn.Module):
    """Whisper-style multi-head attention (q/v/out with bias, k without), through the attention interface.

    ``config`` is the sub-config whose ``_attn_implementation`` selects the kernel.
    """

    def __init__(self, config, embed_dim: int, num_heads: int, is_causal: bool = False, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.config = config
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = is_causal
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=True)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=True)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=True)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: StreamingCache | None = None,
        **kwargs,
    ):
        """``cache``: keys / values of earlier frames are prepended (give the mask over all of them)."""
        bsz, seq_len, _ = hidden_states.shape
        shape = (bsz, seq_len, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if cache is not None:
            key, value = cache.keys_values(self, key, value)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=self.is_causal and attention_mask is None,
            **kwargs,
        )
        attn_output = attn_output.reshape(bsz, seq_len, self.embed_dim).contiguous()
        return self.out_proj(attn_output), attn_weights


class BaichuanWhisperLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer of the original ``OmniWhisperTransformerLayer``.

    ``norm_type`` is ``"layer"`` (LayerNorm with affine, encoder / decoder) or ``"rms"`` (RMSNorm, prenet).
    """

    def __init__(
        self,
        config,
        d_model: int,
        num_heads: int,
        ffn_dim: int,
        activation: str = "gelu",
        is_causal: bool = False,
        norm_type: str = "layer",
        eps: float = 1e-5,
    ):
        super().__init__()
        self.self_attn = BaichuanWhisperAttention(config, d_model, num_heads, is_causal=is_causal)
        if norm_type == "layer":
            self.self_attn_layer_norm = nn.LayerNorm(d_model, eps=eps)
            self.final_layer_norm = nn.LayerNorm(d_model, eps=eps)
        elif norm_type == "rms":
            self.self_attn_layer_norm = BaichuanRMSNorm(d_model, eps=eps)
            self.final_layer_norm = BaichuanRMSNorm(d_model, eps=eps)
        else:
            raise ValueError(f"unknown norm_type {norm_type!r}")
        self.activation_fn = ACT2FN[activation]
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        residual = hidden_states
        hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, _ = self.self_attn(hidden_states, attention_mask, **kwargs)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = self.fc2(self.activation_fn(self.fc1(hidden_states)))
        hidden_states = residual + hidden_states
        if hidden_states.dtype in (torch.float16, torch.bfloat16):
            clamp_value = torch.finfo(hidden_states.dtype).max - 1000
            hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
        return hidden_states


__all__ = [
    "sinusoids",
    "BaichuanRMSNorm",
    "lengths_to_mask",
    "build_attention_mask",
    "eager_attention_forward",
    "BaichuanWhisperAttention",
    "BaichuanWhisperLayer",
]
