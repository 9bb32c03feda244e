"""Flow matching of code2wav: the causal prenet (prior ``mu``), the causal U-Net estimator and the Euler CFM sampler.

Semantics follow the original ``FlowmatchingPrenet`` / ``ConditionalDecoder`` / ``ConditionalCFM`` (Baichuan-Omni
remote code, itself CosyVoice/Matcha derived), re-written in plain torch:

* prenet: nearest interpolation to the target length, ``in_mlp`` (Linear -> SiLU -> Linear), causal RMSNorm
  Whisper layers, final RMSNorm, bias-free projection to the mel bins (zeros at padded frames);
* estimator: a 1-D U-Net on ``[x | mu]`` (B, 2 * n_mels, T): a sinusoidal time embedding + MLP, causal resnet blocks
  (causal k=3 conv, LayerNorm over channels, Mish), transformer blocks whose self-attention uses the static chunk
  mask (full attention inside a chunk of ``static_chunk_size`` frames, every earlier chunk visible), causal convs in
  place of the down/up samplers at the last level;
* sampler: ``t`` on a cosine grid, Euler steps, classifier-free guidance ``v = (1 + r) v(x, mu) - r v(x, 0)``.

With one U-Net level (the released model and the tiny config) every convolution of the U-Net is causal and its
attention is chunk-causal, so frames of chunk ``c`` depend only on inputs of chunks ``<= c`` (what the streaming
decoder relies on; inner levels would add a non-causal stride-2 conv and chunks of ``2 * static_chunk_size``
frames). The prenet layers and the U-Net modules take an optional :class:`~.streaming_state.StreamingCache`: the
input is then one chunk (an aligned ``static_chunk_size`` chunk for the U-Net) and the causal state of the earlier
chunks (conv left context, attention keys / values) comes from the cache
(:attr:`BaichuanAudioFlowEstimator.streamable`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .layers import (
    BaichuanRMSNorm,
    BaichuanWhisperLayer,
    build_attention_mask,
    eager_attention_forward,
)
from .streaming_state import StreamingCache

logger = logging.get_logger(__name__)

# ----------------------------------------------------------------------------------------------------------- prenet


def whisper_layers(config, num, d_model, heads, ffn_dim, activation, norm_type, eps) -> nn.ModuleList:
    """``num`` causal :class:`BaichuanWhisperLayer` (reconstruction decoder: LayerNorm; prenet: RMSNorm)."""
    return nn.ModuleList(
        [
            BaichuanWhisperLayer(
                config, d_model, heads, ffn_dim, activation=activation, is_causal=True, norm_type=norm_type, eps=eps
            )
            for _ in range(num)
        ]
    )


class BaichuanAudioFlowPrenet(nn.Module):
    """Causal prenet: reconstruction-decoder hidden states (B, T, d_model) -> prior ``mu`` (B, T', n_mels).

    ``T' = int(T * prenet_target_mel_length_scale_ratio)`` (1.0 in the released model: the interpolation is the
    identity). The original also registers a sinusoidal buffer that its forward never uses; it is not kept here.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config  # the code2wav config (attention implementation); sizes from its flow_matching_config
        fm = config.flow_matching_config
        self.length_scale = fm.prenet_target_mel_length_scale_ratio
        d = fm.prenet_d_model
        self.in_mlp = nn.Sequential(nn.Linear(fm.prenet_in_dim, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
        self.layers = whisper_layers(
            config,
            fm.prenet_nlayers,
            d,
            fm.prenet_attention_heads,
            fm.prenet_ffn_dim,
            fm.prenet_activation_function,
            "rms",
            1e-6,
        )
        self.final_norm = BaichuanRMSNorm(d, eps=1e-6)
        self.out_proj = nn.Linear(d, fm.prenet_out_dim, bias=False)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return (lengths.float() * self.length_scale).to(torch.int64)

    def forward(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states (B, T, d_model) (padded rows ignored), lengths (B,) -> (mu (B, T', n_mels), lengths')."""
        out_lengths = self.output_lengths(lengths)
        hidden_states = hidden_states[:, : int(lengths.max())]
        target = int(out_lengths.max())
        if target != hidden_states.shape[1]:
            hidden_states = F.interpolate(hidden_states.float().transpose(1, 2), size=target, mode="nearest")
            hidden_states = hidden_states.transpose(1, 2).to(self.out_proj.weight.dtype)
        hidden_states = self.in_mlp(hidden_states)
        valid = torch.arange(target, device=hidden_states.device)[None, :] < out_lengths[:, None]
        mask = build_attention_mask(valid, target, causal=True)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask)
        hidden_states = torch.where(valid[..., None], hidden_states, 0.0)
        return self.out_proj(self.final_norm(hidden_states)), out_lengths


# --------------------------------------------------------------------------------------------------------- U-Net


class CausalConv1d(nn.Conv1d):
    """Conv1d (stride 1) left-padded with ``kernel_size - 1`` zeros: output ``t`` sees inputs ``<= t``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor, cache: StreamingCache | None = None) -> torch.Tensor:
        """``cache``: the left context is the end of the previous chunk's input instead of zeros."""
        if cache is not None:
            return super().forward(cache.left_context(self, x, self.kernel_size[0] - 1))
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class CausalBlock1D(nn.Module):
    """``Mish(LayerNorm_channels(CausalConv(x * mask))) * mask``."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.conv = CausalConv1d(dim, dim_out, 3)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: StreamingCache | None = None) -> torch.Tensor:
        h = self.conv(x * mask, cache)
        h = self.norm(h.transpose(1, 2)).transpose(1, 2)
        return F.mish(h) * mask


class CausalResnetBlock1D(nn.Module):
    """Two causal blocks with the time embedding added in between, plus a 1x1 residual projection."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int):
        super().__init__()
        self.block1 = CausalBlock1D(dim, dim_out)
        self.block2 = CausalBlock1D(dim_out, dim_out)
        self.time_proj = nn.Linear(time_emb_dim, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, time_emb: torch.Tensor, cache: StreamingCache | None = None
    ) -> torch.Tensor:
        h = self.block1(x, mask, cache)
        h = h + self.time_proj(F.mish(time_emb)).unsqueeze(-1)
        h = self.block2(h, mask, cache)
        return h + self.res_conv(x * mask)


class BaichuanAudioUNetAttention(nn.Module):
    """Multi-head self-attention of the U-Net transformer blocks (q/k/v without bias, output with bias), through the
    attention interface. ``inner = heads * head_dim`` may differ from the block width."""

    def __init__(self, config, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scaling = head_dim**-0.5
        self.is_causal = False
        inner = num_heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: StreamingCache | None = None,
        chunk_size: int | None = None,
        **kwargs,
    ):
        """``chunk_size`` (no ``attention_mask``, every frame valid): the static chunk mask computed chunk by chunk,
        the queries of chunk ``c`` against the keys of chunks ``0..c`` only (the same sets the mask allows, without
        the work on masked pairs). ``flow_matching_config.num_decoding_left_chunks`` >= 0 bounds the earlier chunks
        seen here and in the streamed keys / values (``attention_mask`` carries it itself).

        ``cache``: the frames are the next aligned chunk(s) of a stream (a pass over several chunks attends chunk by
        chunk: each against the cached keys / values and its own, as the stream's chunk-at-a-time passes do)."""
        bsz, seq_len, _ = hidden_states.shape
        shape = (bsz, seq_len, self.num_heads, self.head_dim)
        query, key, value = (
            proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v)
        )
        fm = self.config.flow_matching_config
        left = fm.num_decoding_left_chunks
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )

        def attend(q, k, v, mask):
            out, _ = attention_interface(
                self, q, k, v, mask, dropout=0.0, scaling=self.scaling, is_causal=False, **kwargs
            )
            return out

        if cache is not None or (attention_mask is None and chunk_size and seq_len > chunk_size):
            step = fm.static_chunk_size if cache is not None else chunk_size
            pieces = []
            for start in range(0, seq_len, step):
                end = min(seq_len, start + step)
                if cache is not None:  # the kept keys / values of the earlier chunks, then this one's
                    k, v = cache.keys_values(self, key[:, :, start:end], value[:, :, start:end], left, step)
                else:
                    first = max(0, start - left * step) if left >= 0 else 0
                    k, v = key[:, :, first:end], value[:, :, first:end]
                pieces.append(attend(query[:, :, start:end], k, v, None))
            out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        else:
            out = attend(query, key, value, attention_mask)
        return self.to_out(out.reshape(bsz, seq_len, self.num_heads * self.head_dim))


#: The matcha feed-forward activations the original accepts (``FeedForward(activation_fn=...)``).
UNET_FEED_FORWARD_ACTIVATIONS = ("gelu", "gelu-approximate", "geglu", "geglu-approximate", "snakebeta")


class BaichuanAudioUNetFeedForward(nn.Module):
    """``proj_in`` (dim -> 4 dim) with the activation, then ``proj_out`` (4 dim -> dim); the activations of the
    original's matcha ``FeedForward``:

    * ``gelu`` / ``gelu-approximate``: GELU (exact / tanh) of the projection;
    * ``geglu``: the projection is 2 x 4 dim wide, ``h * gelu(gate)`` of its two halves;
    * ``geglu-approximate``: ``h * sigmoid(1.702 h)`` (diffusers' ``ApproximateGELU``);
    * ``snakebeta``: ``h + sin(h e^alpha)^2 / (e^beta + 1e-9)`` with per-channel log-scale ``alpha`` / ``beta``.
    """

    def __init__(self, dim: int, act_fn: str):
        super().__init__()
        if act_fn not in UNET_FEED_FORWARD_ACTIVATIONS:
            raise ValueError(
                f"U-Net feed-forward: unsupported act_fn {act_fn!r} (expected one of {UNET_FEED_FORWARD_ACTIVATIONS})"
            )
        self.act_fn = act_fn
        inner = 4 * dim
        self.proj_in = nn.Linear(dim, 2 * inner if act_fn == "geglu" else inner)
        if act_fn == "snakebeta":
            self.alpha = nn.Parameter(torch.zeros(inner))
            self.beta = nn.Parameter(torch.zeros(inner))
        self.proj_out = nn.Linear(inner, dim)

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        if self.act_fn == "gelu":
            return F.gelu(h)
        if self.act_fn == "gelu-approximate":
            return F.gelu(h, approximate="tanh")
        if self.act_fn == "geglu":
            h, gate = h.chunk(2, dim=-1)
            return h * F.gelu(gate)
        if self.act_fn == "geglu-approximate":
            return h * torch.sigmoid(1.702 * h)
        return h + (1.0 / (torch.exp(self.beta) + 1e-9)) * torch.sin(h * torch.exp(self.alpha)).pow(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.activate(self.proj_in(x)))


class BaichuanAudioUNetTransformerBlock(GradientCheckpointingLayer):
    """Pre-norm block: ``x + attn(LN(x))`` then ``x + ff(LN(x))`` on (B, T, C)."""

    def __init__(self, config, dim: int):
        super().__init__()
        fm = config.flow_matching_config
        self.norm1 = nn.LayerNorm(dim)
        self.attn = BaichuanAudioUNetAttention(config, dim, fm.num_heads, fm.attention_head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = BaichuanAudioUNetFeedForward(dim, fm.act_fn)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: StreamingCache | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), attention_mask, cache, chunk_size)
        return hidden_states + self.ff(self.norm3(hidden_states))


class BaichuanAudioUNetStage(nn.Module):
    """One U-Net level: resnet block, transformer blocks, then an optional resampler (``sampler``)."""

    def __init__(self, config, dim: int, dim_out: int, time_dim: int, sampler: nn.Module | None):
        super().__init__()
        self.config = config
        self.resnet = CausalResnetBlock1D(dim, dim_out, time_dim)
        self.transformer_blocks = nn.ModuleList(
            [BaichuanAudioUNetTransformerBlock(config, dim_out) for _ in range(config.flow_matching_config.n_blocks)]
        )
        self.sampler = sampler

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        time_emb: torch.Tensor,
        chunk_size: int,
        cache: StreamingCache | None = None,
        dense: bool = False,
    ) -> torch.Tensor:
        """``cache``: x is one aligned attention chunk; it sees all of itself and every earlier chunk (no mask; or
        the ``num_decoding_left_chunks`` before it).
        ``dense``: every frame of every row is valid: the chunk mask is applied chunk by chunk, without a mask."""
        x = self.resnet(x, mask, time_emb, cache)
        attn_mask, chunked = None, None
        if cache is None and dense:
            chunked = chunk_size if chunk_size > 0 else None
        elif cache is None:
            left = self.config.flow_matching_config.num_decoding_left_chunks
            attn_mask = build_attention_mask(mask[:, 0].bool(), x.shape[-1], chunk_size=chunk_size, left_chunks=left)
        h = x.transpose(1, 2)
        for block in self.transformer_blocks:
            h = block(h, attn_mask, cache, chunked)
        return h.transpose(1, 2)

    def resample(self, x: torch.Tensor, cache: StreamingCache | None = None) -> torch.Tensor:
        return self.sampler(x) if cache is None else self.sampler(x, cache)


#: CPU capabilities (``torch.backends.cpu.get_cpu_capability()``) whose half-precision products torch runs far
#: slower than fp32: without AVX-512 there is no native bf16 / fp16 arithmetic (measured on an AVX2-only AMD EPYC
#: Zen 3, 2 threads: 2048 x 2048 bf16 matmul 0.3 GFLOP/s against 169 in fp32; a real-size 3.2 s code2wav decode with
#: ``compute_dtype="bfloat16"`` 39.0 s against 5.56 s).
SLOW_HALF_PRECISION_CPU_CAPABILITIES = ("DEFAULT", "NO AVX", "AVX2")


def warn_if_slow_on_this_cpu(compute_dtype: torch.dtype) -> bool:
    """Warn (once per process) that a half-precision ``compute_dtype`` makes the CPU estimator slower, not faster,
    on a CPU without AVX-512 (:data:`SLOW_HALF_PRECISION_CPU_CAPABILITIES`). Returns whether this CPU is one."""
    capability = torch.backends.cpu.get_cpu_capability()
    slow = capability in SLOW_HALF_PRECISION_CPU_CAPABILITIES
    if slow:
        logger.warning_once(
            f"flow_matching_config.compute_dtype={str(compute_dtype).removeprefix('torch.')!r} on a CPU without "
            f"AVX-512 ({capability}): torch's {compute_dtype} products are far slower than fp32 here (a real-size bf16 "
            "decode took about 7x longer); set compute_dtype=None on this machine"
        )
    return slow


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of the flow time ``t`` (scalar or (B,)) -> (B, dim): ``[sin | cos]`` of ``scale * t``."""
    if t.ndim < 1:
        t = t.unsqueeze(0)
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    emb = scale * t.unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat((emb.sin(), emb.cos()), dim=-1)


class BaichuanAudioTimestepMLP(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class BaichuanAudioFlowEstimator(nn.Module):
    """The causal conditional U-Net ``v(x, mu, t)``: (B, n_mels, T) x2 -> (B, n_mels, T).

    Levels follow ``flow_matching_config.channels``; inner levels downsample with a stride-2 conv and upsample with a
    transposed conv (as the original), the last level uses a causal k=3 conv instead. The attention chunk is
    ``flow_matching_config.static_chunk_size`` frames at every level. ``config`` is the code2wav config.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        fm = config.flow_matching_config
        self.chunk_size = fm.static_chunk_size
        #: Single segments apply the chunk mask chunk by chunk (False: the masked attention over every frame pair,
        #: as padded batches use; kept for comparison in benchmarks/bench_code2wav.py).
        self.chunked_attention = True
        n_mels = fm.in_channels
        in_ch = 2 * n_mels + fm.spk_emb_dim
        channels = list(fm.channels)
        self.time_in_dim = in_ch
        time_dim = 4 * channels[0]
        self.time_mlp = BaichuanAudioTimestepMLP(in_ch, time_dim)

        self.down_blocks = nn.ModuleList()
        out_ch = in_ch
        for i, ch in enumerate(channels):
            prev, out_ch = out_ch, ch
            last = i == len(channels) - 1
            sampler = CausalConv1d(out_ch, out_ch, 3) if last else nn.Conv1d(out_ch, out_ch, 3, 2, 1)
            self.down_blocks.append(BaichuanAudioUNetStage(config, prev, out_ch, time_dim, sampler))
        self.mid_blocks = nn.ModuleList(
            [BaichuanAudioUNetStage(config, channels[-1], out_ch, time_dim, None) for _ in range(fm.num_mid_blocks)]
        )
        self.up_blocks = nn.ModuleList()
        rev = channels[::-1] + [channels[0]]
        for i in range(len(rev) - 1):
            last = i == len(rev) - 2
            ch = rev[i + 1]
            sampler = CausalConv1d(ch, ch, 3) if last else nn.ConvTranspose1d(ch, ch, 4, 2, 1)
            self.up_blocks.append(BaichuanAudioUNetStage(config, 2 * rev[i], ch, time_dim, sampler))
        self.final_block = CausalBlock1D(rev[-1], rev[-1])
        self.final_proj = nn.Conv1d(rev[-1], n_mels, 1)

    @property
    def streamable(self) -> bool:
        """Whether a :class:`~.streaming_state.StreamingCache` chunk-by-chunk forward is exact: one level (every conv
        causal, attention chunks aligned at every level) and a positive ``static_chunk_size``."""
        return len(self.down_blocks) == 1 and self.chunk_size > 0

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        cache: StreamingCache | None = None,
    ) -> torch.Tensor:
        """x, mu: (B, n_mels, T); mask: (B, 1, T) float (1 = valid); t: scalar flow time. Returns (B, n_mels, T).

        ``cache`` (only when :attr:`streamable`): x is the next ``static_chunk_size`` aligned chunk of a stream (or
        its shorter last chunk), all valid; the earlier chunks' state is read from and written to the cache.

        ``flow_matching_config.compute_dtype`` (e.g. ``"bfloat16"``) runs the U-Net under ``torch.autocast`` in that
        dtype (matmuls and convolutions; the Euler state stays in the weights' dtype): the fast path, not the
        parity-exact one (``benchmarks/bench_code2wav.py`` reports its speed and its mel error).
        """
        if cache is not None and not self.streamable:
            raise ValueError("this U-Net has inner levels (non-causal resampling): no chunk-by-chunk forward")
        out_dtype = x.dtype
        with self.compute_context(x.device):
            return self.estimate(x, mask, mu, t, cache).to(out_dtype)

    def compute_context(self, device: torch.device | None = None) -> contextlib.AbstractContextManager:
        """``torch.autocast`` in ``flow_matching_config.compute_dtype`` when it differs from the weights' dtype, else
        a no-op. :meth:`forward` enters it on every call; the samplers also enter it once around all their Euler
        steps, so that autocast casts each weight once per decode instead of once per step (its cache of cast
        weights lives until the outermost autocast exits; same numbers)."""
        weight = self.time_mlp.linear_1.weight
        compute_dtype = self.config.flow_matching_config.compute_dtype
        compute_dtype = getattr(torch, compute_dtype) if compute_dtype else weight.dtype
        if compute_dtype == weight.dtype:
            return contextlib.nullcontext()
        device_type = (device or weight.device).type
        if device_type == "cpu":
            warn_if_slow_on_this_cpu(compute_dtype)
        return torch.autocast(device_type, dtype=compute_dtype)

    def estimate(self, x, mask, mu, t, cache=None) -> torch.Tensor:
        """:meth:`forward` in the weights' dtype (or under the caller's autocast)."""
        chunk = self.chunk_size
        # Every frame valid (a single segment, the default batch-invariant decode): no attention mask at all.
        # (Under ``torch.compile`` the masked attention instead: one graph at any length, no data-dependent branch.)
        dense = self.chunked_attention and cache is None and not torch.compiler.is_compiling() and bool(mask.min() > 0)
        time_emb = self.time_mlp(timestep_embedding(t, self.time_in_dim).to(x.dtype))
        x = torch.cat([x, mu], dim=1)
        mask = mask.to(x.dtype)
        hiddens, masks = [], [mask]
        for stage in self.down_blocks:
            mask_down = masks[-1]
            x = stage(x, mask_down, time_emb, chunk, cache, dense)
            hiddens.append(x)
            x = stage.resample(x * mask_down, cache)
            masks.append(mask_down[:, :, ::2])
        masks = masks[:-1]
        mask_mid = masks[-1]
        for stage in self.mid_blocks:
            x = stage(x, mask_mid, time_emb, chunk, cache, dense)
        mask_up = mask
        for stage in self.up_blocks:
            mask_up = masks.pop()
            skip = hiddens.pop()
            x = torch.cat([x[:, :, : skip.shape[-1]], skip], dim=1)
            x = stage(x, mask_up, time_emb, chunk, cache, dense)
            x = stage.resample(x * mask_up, cache)
        x = self.final_block(x, mask_up, cache)
        return self.final_proj(x * mask_up) * mask


# ------------------------------------------------------------------------------------------------------- sampler


def flow_time_grid(num_steps: int, scheduler: str, device=None, dtype=torch.float32) -> torch.Tensor:
    """``num_steps + 1`` flow times in [0, 1]: linear, or cosine ``1 - cos(pi/2 * s)``."""
    t_span = torch.linspace(0, 1, num_steps + 1, device=device)
    if scheduler == "cosine":
        t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
    return t_span.to(dtype)


def euler_cfm_sample(
    estimator: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    mu: torch.Tensor,
    mask: torch.Tensor,
    num_steps: int,
    cfg_rate: float,
    scheduler: str = "cosine",
    batch_cfg: bool = True,
    callback: Callable[..., None] | None = None,
) -> torch.Tensor:
    """Euler integration of the conditional flow from ``noise`` (t=0) to the mel (t=1).

    Args:
        estimator: ``v(x, mask, mu, t)``.
        noise / mu: (B, n_mels, T); mask: (B, 1, T).
        cfg_rate: classifier-free guidance ``r``: ``v = (1 + r) v(x, mu) - r v(x, 0)`` (0 disables it).
        batch_cfg: run the conditional and unconditional passes as one batch of 2B (same numbers up to roundoff).
        callback: called as ``callback(step, t, x, v_cond, v_uncond)`` before each update (for inspection).
    Returns: (B, n_mels, T).
    """
    t_span = flow_time_grid(num_steps, scheduler, device=mu.device, dtype=mu.dtype)
    x = noise
    t, dt = t_span[0].clone(), t_span[1] - t_span[0]  # t not a view: a compiled estimator sees one kind of t
    zeros = torch.zeros_like(mu)
    for step in range(1, len(t_span)):
        v_uncond = None
        if cfg_rate > 0 and batch_cfg:
            both = estimator(torch.cat([x, x]), torch.cat([mask, mask]), torch.cat([mu, zeros]), t)
            v_cond, v_uncond = both.chunk(2)
        else:
            v_cond = estimator(x, mask, mu, t)
            if cfg_rate > 0:
                v_uncond = estimator(x, mask, zeros, t)
        if callback is not None:
            callback(step - 1, t, x, v_cond, v_uncond)
        v = v_cond if v_uncond is None else (1.0 + cfg_rate) * v_cond - cfg_rate * v_uncond
        x = x + dt * v
        t = t + dt
        if step < len(t_span) - 1:
            dt = t_span[step + 1] - t
    return x


__all__ = [
    "BaichuanAudioFlowPrenet",
    "BaichuanAudioFlowEstimator",
    "BaichuanAudioUNetAttention",
    "CausalConv1d",
    "euler_cfm_sample",
    "flow_time_grid",
    "whisper_layers",
    "timestep_embedding",
]
