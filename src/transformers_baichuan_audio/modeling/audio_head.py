"""The audio head of Baichuan-Audio: a small causal "depth" transformer over the codebook positions of one frame.

For one audio frame the head runs over ``num_codebooks`` (8) positions:

* position 0 is the LLM's final (RMSNorm-ed) hidden state ``h``,
* position ``k`` (1..7) is ``sum_{i<k} audio_embed[i](code_i)``: the cumulative sum of the SHARED LLM audio
  embedding tables of the codes already chosen for this frame.

Each of the ``num_hidden_layers`` layers computes (quirks of the original ``CasualDepthTransformerLayer`` kept)::

    a = SelfAttention(RMSNorm1(x))        # causal, q/k/v/out projections with bias
    r = RMSNorm2(x + a)                   # the NORMALISED tensor becomes the residual stream
    out = r + FFN_l(r)                    # FFN_l: position-specific, GELU, no biases

followed by a final RMSNorm (``norm``) and one classifier per codebook, ``heads[i]`` reading position ``i``
(``codebook_sizes[i] + 1`` classes; class ``codebook_sizes[i]`` is end-of-audio).

The position-specific feed-forward is stored as a ``ModuleList`` (one entry per codebook position) of bias-free
``fc1`` (hidden -> intermediate) / ``fc2`` (intermediate -> hidden) ``nn.Linear`` pairs, so that every weight is a
plain Linear (PEFT-targetable). The original stores them fused in ``linear1.weight`` (viewed as
(intermediate, positions, hidden)) and ``linear2.weight`` (viewed as (hidden, positions, intermediate)); its
``linear1.bias`` / ``linear2.bias`` parameters exist but are never used, so they are not represented here.

Two ways to run it:

* :meth:`BaichuanAudioHead.forward`: the full 8-position pass with teacher forcing (training, scoring);
* :meth:`BaichuanAudioHead.step` (+ :meth:`BaichuanAudioHead.decode_frame`): one codebook position at a time with a
  small per-frame KV cache, for generation. It gives the same logits as the full pass (the head is causal), without
  the original's 8 full recomputations per frame. The cache is a :class:`transformers.DynamicCache` (default) or a
  preallocated :class:`transformers.StaticCache` of ``num_codebooks`` positions reused frame after frame
  (``new_cache(static=True, ...)``): fixed shapes and addresses, for ``torch.compile`` / CUDA graphs
  (:meth:`BaichuanAudioHead.forward_position`, compiled by the speech loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, StaticCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..configuration import BaichuanAudioHeadConfig
from .layers import BaichuanRMSNorm, eager_attention_forward
from .placement import to_module_device


def _embedding_tables(audio_embed) -> Sequence[nn.Embedding]:
    """The per-codebook embedding tables of ``audio_embed`` (a ``BaichuanAudioEmbeddings`` or a sequence of tables)."""
    return audio_embed.embeddings if hasattr(audio_embed, "embeddings") else audio_embed


def _embed_codes(table: nn.Embedding, codes: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``table(codes)`` on the table's device, returned on ``like``'s device (the tables may live elsewhere)."""
    return table(to_module_device(codes, table)).to(like.device)


class BaichuanAudioHeadAttention(nn.Module):
    """Causal multi-head self-attention over the codebook positions (the original ``nn.MultiheadAttention``, with its
    fused ``in_proj`` split into ``q_proj`` / ``k_proj`` / ``v_proj``; all four projections have a bias)."""

    def __init__(self, config: BaichuanAudioHeadConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = 1
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def forward(self, hidden_states: torch.Tensor, cache: Cache | None = None, position_offset: int = 0, **kwargs):
        """hidden_states (N, q, H) for the positions ``position_offset .. position_offset+q-1``; ``cache`` holds
        positions ``0 .. position_offset-1`` (a static cache may hold more slots: only the valid ones are read)."""
        bsz, q_len, _ = hidden_states.shape
        shape = (bsz, q_len, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
            # A StaticCache returns all its slots: keep the filled ones (a no-op view for a DynamicCache).
            key, value = key[:, :, : position_offset + q_len], value[:, :, : position_offset + q_len]
        kv_len = key.shape[2]

        implementation = self.config._attn_implementation or "sdpa"
        attention_mask = None
        if q_len > 1 and "flash" not in implementation:
            # Causal with the queries at the end of the key sequence (they follow the cached positions).
            q_pos = torch.arange(kv_len - q_len, kv_len, device=hidden_states.device)
            attention_mask = torch.arange(kv_len, device=hidden_states.device)[None, :] <= q_pos[:, None]
            attention_mask = attention_mask[None, None]
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        dropout, causal = (self.attention_dropout if self.training else 0.0), q_len > 1
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling, is_causal=causal, **kwargs
        )
        attn_output = attn_output.reshape(bsz, q_len, self.hidden_size).contiguous()
        return self.o_proj(attn_output), attn_weights


class BaichuanAudioHeadPositionFFN(nn.Module):
    """The feed-forward of ONE codebook position: ``fc2(act(fc1(x)))``, no biases (as the original computes it)."""

    def __init__(self, config: BaichuanAudioHeadConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn(self.fc1(hidden_states)))


class BaichuanAudioHeadLayer(GradientCheckpointingLayer):
    """One depth-transformer layer (the original ``CasualDepthTransformerLayer``)."""

    def __init__(self, config: BaichuanAudioHeadConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = BaichuanAudioHeadAttention(config, layer_idx)
        self.post_attention_layernorm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = nn.ModuleList([BaichuanAudioHeadPositionFFN(config) for _ in range(config.num_codebooks)])

    def forward(
        self, hidden_states: torch.Tensor, cache: Cache | None = None, position_offset: int = 0, **kwargs
    ) -> torch.Tensor:
        """hidden_states (N, q, H) at codebook positions ``position_offset .. position_offset+q-1``."""
        attn_output, _ = self.self_attn(
            self.input_layernorm(hidden_states), cache=cache, position_offset=position_offset, **kwargs
        )
        residual = self.post_attention_layernorm(hidden_states + attn_output)
        ffn_output = torch.stack(
            [self.mlp[position_offset + j](residual[:, j]) for j in range(residual.shape[1])], dim=1
        )
        return residual + ffn_output


class BaichuanAudioHead(nn.Module):
    """Depth transformer + ``num_codebooks`` classifiers predicting the codes of one audio frame.

    Args:
        config: :class:`BaichuanAudioHeadConfig` (hidden size = LLM hidden size, one entry of ``codebook_sizes``
            per codebook).
    """

    def __init__(self, config: BaichuanAudioHeadConfig):
        super().__init__()
        self.config = config
        self.num_codebooks = config.num_codebooks
        self.layers = nn.ModuleList([BaichuanAudioHeadLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.heads = nn.ModuleList([nn.Linear(config.hidden_size, size + 1) for size in config.codebook_sizes])

    # ----------------------------------------------------------------------------------------------- inputs
    def embed_positions(self, hidden: torch.Tensor, codes: torch.Tensor, audio_embed) -> torch.Tensor:
        """Inputs of the 8 positions, (N, num_codebooks, H): ``[h, e0(c0), e0(c0)+e1(c1), ...]``.

        Args:
            hidden: (N, H) LLM final hidden states.
            codes: (N, num_codebooks) codes of the frame (teacher forcing); the last column is never read.
            audio_embed: ``BaichuanAudioEmbeddings`` (or the sequence of its ``nn.Embedding`` tables).
        """
        tables = _embedding_tables(audio_embed)
        code_embeds = torch.stack(
            [_embed_codes(tables[i], codes[..., i], hidden) for i in range(self.num_codebooks - 1)], 1
        )
        prefix_sums = torch.cumsum(code_embeds, dim=1).to(hidden.dtype)
        return torch.cat([hidden.reshape(-1, 1, hidden.shape[-1]), prefix_sums], dim=1)

    # ----------------------------------------------------------------------------------------------- full pass
    def forward(self, hidden: torch.Tensor, codes: torch.Tensor, audio_embed, **kwargs) -> list[torch.Tensor]:
        """Full teacher-forced pass over the 8 codebook positions.

        Args:
            hidden: (N, H) LLM final hidden states (``last_hidden_state`` rows).
            codes: (N, num_codebooks) codes of the frame to score (position k sees codes 0..k-1).
            audio_embed: the shared LLM audio embeddings (``BaichuanAudioEmbeddings``).
        Returns:
            list of ``num_codebooks`` logits, entry i of shape (N, codebook_sizes[i] + 1).
        """
        hidden_states = self.embed_positions(hidden, codes, audio_embed)
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        hidden_states = self.norm(hidden_states)
        return [head(hidden_states[:, i]) for i, head in enumerate(self.heads)]

    # ----------------------------------------------------------------------------------------------- incremental
    def new_cache(
        self,
        static: bool = False,
        batch_size: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Cache:
        """An empty per-frame KV cache for :meth:`step` (at most ``num_codebooks`` positions).

        ``static=False``: a :class:`~transformers.DynamicCache`, one per frame. ``static=True``: a
        :class:`~transformers.StaticCache` of ``num_codebooks`` slots for ``batch_size`` rows, allocated now (fixed
        addresses, as CUDA graphs need) in ``dtype`` / ``device`` (default: the head's); reuse it for every frame of
        that batch size (:meth:`decode_frame` resets it).
        """
        if not static:
            return DynamicCache()
        if batch_size is None:
            raise ValueError("new_cache(static=True) needs the batch_size")
        weight = self.norm.weight
        cache = StaticCache(config=self.config, max_cache_len=self.num_codebooks)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cache.early_initialization(
            batch_size,
            self.config.num_attention_heads,
            head_dim,
            dtype or weight.dtype,
            torch.device(device) if device is not None else weight.device,
        )
        return cache

    def step(self, inputs_embeds: torch.Tensor, codebook_idx: int, cache: Cache) -> torch.Tensor:
        """Run ONE codebook position and return its logits.

        Args:
            inputs_embeds: (N, H) input of position ``codebook_idx``: the LLM hidden state for position 0, else the
                cumulative code embedding (see :meth:`next_inputs`).
            codebook_idx: position to run; must equal the number of positions already in ``cache``.
            cache: the frame's cache from :meth:`new_cache` (updated in place).
        Returns:
            (N, codebook_sizes[codebook_idx] + 1) logits.
        """
        held = int(cache.get_seq_length())
        if held != codebook_idx:
            raise ValueError(
                f"audio head step: codebook {codebook_idx} requested but the cache holds {held} positions; run the "
                "positions of a frame in order, with a fresh (or reset) cache per frame"
            )
        return self.forward_position(inputs_embeds, codebook_idx, cache)

    def forward_position(self, inputs_embeds: torch.Tensor, codebook_idx: int, cache: Cache) -> torch.Tensor:
        """:meth:`step` without the cache-length check (no host synchronisation): the function that the speech
        loop compiles (one graph per codebook position, see :mod:`.decode_steps`)."""
        hidden_states = inputs_embeds.reshape(-1, 1, inputs_embeds.shape[-1])
        for layer in self.layers:
            hidden_states = layer(hidden_states, cache=cache, position_offset=codebook_idx)
        hidden_states = self.norm(hidden_states)
        return self.heads[codebook_idx](hidden_states[:, 0])

    def next_inputs(
        self, prefix_sum: torch.Tensor | None, codes: torch.Tensor, codebook_idx: int, audio_embed
    ) -> torch.Tensor:
        """Input of position ``codebook_idx + 1`` once code ``codebook_idx`` is chosen.

        ``prefix_sum`` is the input of position ``codebook_idx`` for ``codebook_idx >= 1`` and ``None`` for 0.
        """
        embedding = _embed_codes(_embedding_tables(audio_embed)[codebook_idx], codes, codes)
        return embedding if prefix_sum is None else prefix_sum + embedding.to(prefix_sum.device)

    def decode_frame(
        self,
        hidden: torch.Tensor,
        audio_embed,
        select: Callable[[int, torch.Tensor], torch.Tensor],
        cache: Cache | None = None,
        step: Callable[[torch.Tensor, int, Cache], torch.Tensor] | None = None,
    ) -> tuple[torch.LongTensor, list[torch.Tensor]]:
        """Predict the codes of one frame, codebook by codebook, with a per-frame KV cache.

        Args:
            hidden: (N, H) LLM final hidden states.
            audio_embed: the shared LLM audio embeddings.
            select: ``select(codebook_idx, logits) -> (N,) codes``, e.g. argmax or sampling with logits processors.
            cache: a reusable cache from ``new_cache(static=True, batch_size=N)`` (reset here); default a fresh
                ``DynamicCache``.
            step: the per-position function, ``step(inputs, codebook_idx, cache) -> logits``; default :meth:`step`
                (e.g. a compiled :meth:`forward_position`).
        Returns:
            codes (N, num_codebooks) and the list of raw logits of each codebook.
        """
        if cache is None:
            cache = self.new_cache()
        else:
            cache.reset()
        step = step or self.step
        inputs, prefix_sum = hidden, None
        codes, all_logits = [], []
        for i in range(self.num_codebooks):
            logits = step(inputs, i, cache)
            code = select(i, logits)
            codes.append(code)
            all_logits.append(logits)
            if i + 1 < self.num_codebooks:
                prefix_sum = self.next_inputs(prefix_sum, code, i, audio_embed).to(hidden.dtype)
                inputs = prefix_sum
        return torch.stack(codes, dim=-1), all_logits


__all__ = ["BaichuanAudioHead", "BaichuanAudioHeadLayer", "BaichuanAudioHeadAttention", "BaichuanAudioHeadPositionFFN"]
