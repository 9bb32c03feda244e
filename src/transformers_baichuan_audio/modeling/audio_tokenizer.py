"""Baichuan-Audio audio tokenizer: 128-bin log-mel (100 fps) -> 12.5 Hz frames of 8 residual-VQ codes.

Pipeline (shapes with the released sizes: d_model 1280, avg_pooler 4, 8 codebooks):

* :class:`BaichuanAudioEncoder` (Whisper-large-v3 shaped): conv1 (k3) + GELU, conv2 (k3, stride 2) + GELU, sinusoidal
  positions, pre-LN layers with a key-padding mask (the original packs the valid frames for flash-attn varlen: the
  same numbers), final LayerNorm; frames beyond ``encoder_length`` are zeroed. (B, 128, T) -> (B, ceil(T/2), 1280).
* :class:`BaichuanAudioBridge`: gated 4x conv downsampler ``LayerNorm(down(silu(gate(x)) * up(x)) + concat4(x))``.
  (B, T_enc, 1280) -> (B, ceil(T_enc/4), 5120).
* :class:`BaichuanAudioResidualVQ`: 8 nearest-neighbour stages in fp32 on the valid frames -> codes (N, 8).

Batching quirk of the original (reproduced by default): the conv stem runs on the right-zero-padded batch, so for a
piece with an odd number of valid mel frames ``L`` the last valid conv2 frame reads the conv1 output at frame ``L``,
which is ``gelu(conv1(...))`` of the padding when the piece is shorter than the batch, but conv2's zero padding when
the piece is alone. A piece's last code frame can therefore depend on what it is batched with (fixture contexts
``long`` / ``batch3``). ``batch_invariant=True`` zeroes the conv1 output beyond each piece's valid frames, which gives
every piece the codes it gets when encoded alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_utils import PreTrainedAudioTokenizerBase
from transformers.utils import ModelOutput

from ..configuration import BaichuanAudioTokenizerConfig
from .layers import BaichuanWhisperLayer, build_attention_mask, lengths_to_mask, sinusoids
from .placement import loaded_weights, module_device

# ------------------------------------------------------------------------------------------------------ outputs


@dataclass
class BaichuanAudioTokenizerOutput(ModelOutput):
    r"""Output of :meth:`BaichuanAudioTokenizerModel.forward`.

    Args:
        audio_codes (`torch.LongTensor` of shape `(sum(bridge_length), num_codebooks)`):
            RVQ codes of the valid frames of every piece, pieces concatenated in batch order (packed, as the original).
        bridge_length (`torch.LongTensor` of shape `(batch,)`): code frames per piece.
        encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch, T_enc, d_model)`):
            encoder output, zero beyond ``encoder_length``.
        bridge_hidden_states (`torch.FloatTensor` of shape `(batch, ceil(T_enc / avg_pooler), d_model * avg_pooler)`):
            bridge output (input of the RVQ), padded positions included as computed.
    """

    audio_codes: torch.LongTensor | None = None
    bridge_length: torch.LongTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    bridge_hidden_states: torch.FloatTensor | None = None


# ------------------------------------------------------------------------------------------------------ modules


def _conv_stem_range(encoder_length: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest mel length giving ``encoder_length`` frames after the (odd-kernel, ``k // 2``-padded)
    conv stem: ``[(e - 1) * stride + 1, e * stride]``."""
    return (encoder_length - 1) * stride + 1, encoder_length * stride


def infer_feature_length(input_features: torch.Tensor, encoder_length: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """Valid mel frames of right-zero-padded pieces: one past the last frame with a non-zero bin, clipped to the
    range compatible with ``encoder_length``. (A valid log-mel frame is all zero only if every bin equals exactly
    1e-4 of power; padding frames are exactly zero.)"""
    nonzero = (input_features != 0).any(dim=1)  # (B, T)
    positions = torch.arange(1, input_features.shape[-1] + 1, device=input_features.device)
    last = (nonzero * positions).amax(dim=-1)
    low, high = _conv_stem_range(encoder_length.to(last.device), stride)
    return torch.minimum(torch.maximum(last, low), high.clamp(max=input_features.shape[-1]))


class BaichuanAudioEncoder(nn.Module):
    """Whisper-style encoder of the original ``OmniAudioEncoder`` (``audio_tokenizer.audio_model``)."""

    def __init__(self, config: BaichuanAudioTokenizerConfig):
        super().__init__()
        self.config = config
        pad = config.kernel_size // 2
        self.conv1 = nn.Conv1d(config.num_mel_bins, config.d_model, kernel_size=config.kernel_size, padding=pad)
        self.conv2 = nn.Conv1d(
            config.d_model, config.d_model, kernel_size=config.kernel_size, stride=config.stride_size, padding=pad
        )
        self.embed_scale = config.d_model**0.5 if config.scale_embedding else 1.0
        # Deterministic table, regenerated (not loaded): the original's persistent copy is dropped on conversion.
        self.register_buffer(
            "positional_embedding", sinusoids(config.max_source_positions, config.d_model), persistent=False
        )
        self.layers = nn.ModuleList(
            BaichuanWhisperLayer(
                config,
                config.d_model,
                config.encoder_attention_heads,
                config.encoder_ffn_dim,
                activation=config.activation_function,
                eps=config.layer_norm_eps,
            )
            for _ in range(config.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(
        self,
        input_features: torch.Tensor,
        encoder_length: torch.Tensor,
        feature_length: torch.Tensor | None = None,
        batch_invariant: bool = False,
    ) -> torch.Tensor:
        """(B, num_mel_bins, T) right-zero-padded features -> (B, T_enc, d_model), zero beyond ``encoder_length``.

        ``batch_invariant``: zero the conv1 output at frames >= ``feature_length`` (inferred from the zero padding
        when not given) so each piece gets the result it has alone (see the module docstring).
        """
        hidden = input_features.to(self.conv1.weight.dtype)
        hidden = nn.functional.gelu(self.conv1(hidden))
        if batch_invariant:
            if feature_length is None:
                feature_length = infer_feature_length(input_features, encoder_length, self.config.stride_size)
            valid_in = lengths_to_mask(feature_length.to(hidden.device), hidden.shape[-1])
            hidden = hidden * valid_in[:, None, :].to(hidden.dtype)
        hidden = nn.functional.gelu(self.conv2(hidden)).transpose(1, 2) * self.embed_scale  # (B, T_enc, d)
        seq_len = hidden.shape[1]
        if seq_len > self.positional_embedding.shape[0]:
            raise ValueError(
                f"{seq_len} encoder frames exceed the {self.positional_embedding.shape[0]} positions of one "
                f"{self.config.max_audio_seconds} s piece; split the audio with the feature extractor"
            )
        positions = self.positional_embedding[:seq_len].to(hidden.device)
        hidden = (hidden.float() + positions).to(hidden.dtype)

        valid = lengths_to_mask(encoder_length.to(hidden.device), seq_len)
        if "flash" in (self.config._attn_implementation or ""):
            # flash kernels take the (B, T) padding mask and run varlen on the valid frames, like the original
            attention_mask = None if bool(valid.all()) else valid.to(torch.int32)
        else:
            attention_mask = build_attention_mask(valid, seq_len)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask)
        hidden = self.layer_norm(hidden)
        return hidden * valid[..., None].to(hidden.dtype)


class BaichuanAudioBridge(nn.Module):
    """Gated-conv 4x downsampler of the original ``OmniAudioVQBridgeTokenizer`` (without the RVQ / proj_decoder)."""

    def __init__(self, config: BaichuanAudioTokenizerConfig):
        super().__init__()
        self.avg_pooler = config.avg_pooler
        width = config.bridge_dim
        self.gate_proj = nn.Conv1d(config.d_model, width, config.avg_pooler, config.avg_pooler, bias=False)
        self.up_proj = nn.Conv1d(config.d_model, width, config.avg_pooler, config.avg_pooler, bias=False)
        self.down_proj = nn.Linear(width, width, bias=False)
        self.act_fn = ACT2FN["silu"]
        self.layer_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, T_enc, d) -> (B, ceil(T_enc / avg_pooler), d * avg_pooler); the time axis is zero-padded to a multiple
        of ``avg_pooler`` and the residual concatenates each group of ``avg_pooler`` consecutive frames."""
        batch, length, dim = hidden_states.shape
        remainder = length % self.avg_pooler
        if remainder:
            hidden_states = nn.functional.pad(hidden_states, (0, 0, 0, self.avg_pooler - remainder))
        gate = self.grouped_conv(self.gate_proj, hidden_states)
        up = self.grouped_conv(self.up_proj, hidden_states)
        residual = hidden_states.reshape(batch, -1, dim * self.avg_pooler)
        return self.layer_norm(self.down_proj(self.act_fn(gate) * up) + residual)

    def grouped_conv(self, conv: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """``conv`` (kernel = stride = ``avg_pooler``, no padding) of (B, T, d) frames (T a multiple of
        ``avg_pooler``) -> (B, T / avg_pooler, width).

        A plain ``nn.Conv1d`` is computed as what it is, one product per group of ``avg_pooler`` frames: a GEMM of
        the (d, k)-flattened groups with the (width, d, k) weight viewed as (width, d k), the same dot products as
        the conv (float roundoff apart). oneDNN's conv re-lays out the weight (5120 x 1280 x 4, 105 MB) on every
        call: for a 3 s clip on the project's 2-core CPU the two convs took 534 ms of the tokenizer's 2.2 s, and
        the GEMMs take ~30 ms. Anything else (a subclass, a PEFT adapter wrapping the conv) is called as a module;
        offloaded weights (accelerate) are loaded for the product.
        """
        if type(conv) is not nn.Conv1d:
            return conv(hidden_states.transpose(1, 2)).transpose(1, 2)
        batch, length, dim = hidden_states.shape
        k = self.avg_pooler
        groups = hidden_states.reshape(batch, length // k, k, dim).transpose(2, 3).reshape(batch, length // k, dim * k)
        with loaded_weights(conv):  # read outside the conv's forward: load it if accelerate offloaded it
            return nn.functional.linear(groups, conv.weight.reshape(conv.out_channels, dim * k), conv.bias)


class BaichuanAudioCodebook(nn.Module):
    """One RVQ stage's code vectors: ``embed`` (codebook_size, dim), fp32, frozen."""

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.embed = nn.Parameter(torch.empty(codebook_size, dim, dtype=torch.float32), requires_grad=False)


#: Rows of a codebook squared at a time on a CPU (:func:`squared_norms`): 1.3 MB of scratch at the released width.
SQUARED_NORM_BLOCK_ROWS = 64


def squared_norms(codebook: torch.Tensor) -> torch.Tensor:
    """``codebook.pow(2).sum(-1)`` (C,), the same per-row sums (bit-identical, tested). On a CPU computed in blocks of
    :data:`SQUARED_NORM_BLOCK_ROWS` rows through one scratch buffer: the whole (C, dim) square is a fresh 168 MB for
    the released first stage, whose pages are new on every call (glibc maps an allocation that size afresh each
    time), and faulting them in took 0.14-0.32 s of a 3 s clip's 2.2 s encode on the project's CPU (blocks: 26 ms
    for all 8 stages)."""
    if codebook.device.type != "cpu" or codebook.shape[0] <= SQUARED_NORM_BLOCK_ROWS:
        return codebook.pow(2).sum(-1)
    out = codebook.new_empty(codebook.shape[0])
    scratch = codebook.new_empty(SQUARED_NORM_BLOCK_ROWS, codebook.shape[1])
    for start in range(0, codebook.shape[0], SQUARED_NORM_BLOCK_ROWS):
        block = codebook[start : start + SQUARED_NORM_BLOCK_ROWS]
        square = torch.pow(block, 2, out=scratch[: block.shape[0]])
        torch.sum(square, dim=-1, out=out[start : start + block.shape[0]])
    return out


class BaichuanAudioResidualVQ(nn.Module):
    """Residual VQ: ``len(codebook_sizes)`` Euclidean nearest-neighbour stages, distances in fp32.

    ``codebooks[i].embed`` (codebook_sizes[i], d_model * avg_pooler) = the original ``vq_list.{i}.codebook.embed``.
    """

    def __init__(self, config: BaichuanAudioTokenizerConfig):
        super().__init__()
        self.codebooks = nn.ModuleList(BaichuanAudioCodebook(size, config.bridge_dim) for size in config.codebook_sizes)

    @property
    def num_codebooks(self) -> int:
        return len(self.codebooks)

    @staticmethod
    def _distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """Euclidean distances (N, C) with the original's formula ``sqrt(max(|x|^2 + |c|^2 - 2 x.c, 0))``."""
        x_sq = x.pow(2).sum(-1, keepdim=True)
        c_sq = squared_norms(codebook)[None, :]
        return (x_sq + c_sq + (x @ codebook.T) * -2).clamp(min=0).sqrt()

    @torch.no_grad()
    def quantize(self, hidden_states: torch.Tensor) -> torch.LongTensor:
        """(N, dim) frames -> (N, num_codebooks) codes.

        Each stage picks the nearest code (first index on ties) of the fp32 residual; the residual is kept in the
        input dtype between stages, as the original does (a no-op in fp32).
        """
        residual = hidden_states
        codes = []
        for stage in self.codebooks:
            residual_fp32 = residual.float()
            with loaded_weights(stage):  # read outside a forward: load it if accelerate offloaded it
                codebook = stage.embed.float().to(residual_fp32.device)
            index = self._distances(residual_fp32, codebook).argmin(dim=-1)
            codes.append(index)
            residual = (residual_fp32 - codebook[index]).to(hidden_states.dtype)
        return torch.stack(codes, dim=-1)

    def dequantize(self, codes: torch.LongTensor) -> torch.FloatTensor:
        """(..., num_codebooks) codes -> (..., dim) fp32 sum of the selected code vectors.

        Summed from the last codebook down to the first, as the original ``decode``/``recover`` (fp32 addition is not
        associative: another order differs by ~1 ulp).
        """
        if codes.shape[-1] != self.num_codebooks:
            raise ValueError(f"expected {self.num_codebooks} codes per frame, got shape {tuple(codes.shape)}")
        total = None
        for i in range(self.num_codebooks - 1, -1, -1):
            with loaded_weights(self.codebooks[i]) as stage:
                vectors = stage.embed.float()[codes[..., i].to(stage.embed.device)]
            total = vectors if total is None else total + vectors
        return total


# -------------------------------------------------------------------------------------------------------- model


class BaichuanAudioTokenizerPreTrainedModel(PreTrainedAudioTokenizerBase):
    config: BaichuanAudioTokenizerConfig
    config_class = BaichuanAudioTokenizerConfig
    base_model_prefix = "audio_tokenizer"
    main_input_name = "input_features"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["BaichuanWhisperLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True  # (B, T) padding mask -> varlen; not exercised by the CPU test suite
    _supports_attention_backend = False
    _keep_in_fp32_modules_strict = ["quantizer"]

    @property
    def device(self) -> torch.device:
        """Where the model computes: the device of its first weight, skipping weights that accelerate offloaded
        (``device_map`` with "cpu" / "disk" entries; see :func:`.placement.module_device`)."""
        return module_device(self)

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, BaichuanAudioEncoder):
            init.copy_(module.positional_embedding, sinusoids(self.config.max_source_positions, self.config.d_model))
        elif isinstance(module, BaichuanAudioCodebook):
            init.normal_(module.embed, mean=0.0, std=1.0)


class BaichuanAudioTokenizerModel(BaichuanAudioTokenizerPreTrainedModel):
    r"""Standalone Baichuan-Audio tokenizer: log-mel pieces (or raw audio) -> RVQ codes, 12.5 frames/s.

    Submodules: ``encoder`` (:class:`BaichuanAudioEncoder`), ``bridge`` (:class:`BaichuanAudioBridge`),
    ``quantizer`` (:class:`BaichuanAudioResidualVQ`, kept in fp32). Codes convention: ``(frames, num_codebooks)``;
    code ``codebook_sizes[i]`` (the end-of-audio id of the LLM) is never produced here.

    Example::

        model = BaichuanAudioTokenizerModel.from_pretrained(tokenizer_dir)  # a saved standalone tokenizer
        # or the tokenizer part of a full Baichuan-Audio checkpoint (config = its ``audio_tokenizer_config``):
        model = BaichuanAudioTokenizerModel.from_pretrained(
            full_dir, key_mapping={r"^model\.audio_tokenizer\.": ""}
        )
        extractor = BaichuanAudioFeatureExtractor.from_tokenizer_config(model.config)
        features = extractor([wav_a, wav_b], sampling_rate=16000, return_tensors="pt")
        codes = model.encode(**features)  # list of (frames_i, 8) LongTensors, one per clip
        # the same in one call: transformers_baichuan_audio.audio_encoding.encode_audio(model, [wav_a, wav_b], 16000)
    """

    def __init__(self, config: BaichuanAudioTokenizerConfig):
        super().__init__(config)
        self.encoder = BaichuanAudioEncoder(config)
        self.bridge = BaichuanAudioBridge(config)
        self.quantizer = BaichuanAudioResidualVQ(config)
        self.post_init()

    def forward(
        self,
        input_features: torch.Tensor,
        encoder_length: torch.Tensor,
        bridge_length: torch.Tensor | None = None,
        feature_length: torch.Tensor | None = None,
        batch_invariant: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaichuanAudioTokenizerOutput | tuple:
        r"""Encode a batch of log-mel pieces.

        Args:
            input_features (`torch.FloatTensor` of shape `(batch, num_mel_bins, T)`):
                pieces right-zero-padded to the longest (the feature extractor's output).
            encoder_length (`torch.LongTensor` of shape `(batch,)`): valid encoder frames per piece.
            bridge_length (`torch.LongTensor` of shape `(batch,)`, *optional*):
                code frames per piece (default ``encoder_length // avg_pooler``).
            feature_length (`torch.LongTensor` of shape `(batch,)`, *optional*):
                valid mel frames per piece; only used with ``batch_invariant`` (inferred when absent).
            batch_invariant (`bool`): encode every piece as if alone instead of reproducing the original's
                padding leak into the last frame of odd-length pieces (see the module docstring).

        Returns:
            :class:`BaichuanAudioTokenizerOutput` (codes packed over the pieces: `(sum(bridge_length), n_codebooks)`).
        """
        return_dict = True if return_dict is None else return_dict
        if input_features.dim() != 3:
            raise ValueError(f"input_features must be (batch, mel_bins, frames), got {tuple(input_features.shape)}")
        encoder_length = torch.as_tensor(encoder_length, device=input_features.device).long()
        if bridge_length is None:
            bridge_length = encoder_length // self.config.avg_pooler
        bridge_length = torch.as_tensor(bridge_length, device=input_features.device).long()
        if feature_length is not None:
            feature_length = torch.as_tensor(feature_length, device=input_features.device).long()

        encoder_out = self.encoder(input_features, encoder_length, feature_length, batch_invariant)
        bridge_out = self.bridge(encoder_out)
        valid = lengths_to_mask(bridge_length.to(bridge_out.device), bridge_out.shape[1])
        codes = self.quantizer.quantize(bridge_out[valid])

        output = BaichuanAudioTokenizerOutput(
            audio_codes=codes,
            bridge_length=bridge_length,
            encoder_last_hidden_state=encoder_out,
            bridge_hidden_states=bridge_out,
        )
        return output if return_dict else output.to_tuple()

    # ---------------------------------------------------------------------------------------- convenience
    @torch.no_grad()
    def encode(
        self,
        input_features: torch.Tensor | None = None,
        encoder_length: torch.Tensor | None = None,
        bridge_length: torch.Tensor | None = None,
        feature_length: torch.Tensor | None = None,
        audio_pieces: torch.Tensor | list[int] | None = None,
        *,
        batch_invariant: bool = False,
    ) -> list[torch.LongTensor]:
        r"""Codes per clip, from the feature extractor's outputs (``input_features`` (n_pieces, mel_bins, T),
        ``encoder_length``, optionally ``bridge_length``, ``feature_length``, ``audio_pieces``, as tensors). From raw
        audio: :func:`transformers_baichuan_audio.audio_encoding.encode_audio`.

        Returns:
            list (one per clip; per piece when ``audio_pieces`` is not given) of `torch.LongTensor` of shape
            `(frames, num_codebooks)`; a clip's pieces are concatenated in time order.
        """
        if input_features is None or encoder_length is None:
            raise ValueError("`encode` needs `input_features` with `encoder_length` (raw audio: `encode_audio`)")
        device = module_device(self.encoder)
        out = self.forward(
            input_features.to(device),
            encoder_length,
            bridge_length,
            feature_length,
            batch_invariant=batch_invariant,
            return_dict=True,
        )
        per_piece = torch.split(out.audio_codes, out.bridge_length.tolist())
        if audio_pieces is None:
            return list(per_piece)
        counts = [int(c) for c in torch.as_tensor(audio_pieces).tolist()]
        if sum(counts) != len(per_piece):
            raise ValueError(f"audio_pieces {counts} does not add up to the {len(per_piece)} pieces")
        clips, start = [], 0
        for count in counts:
            clips.append(torch.cat(per_piece[start : start + count], dim=0))
            start += count
        return clips

    def decode(self, audio_codes: torch.LongTensor, *args, **kwargs) -> torch.FloatTensor:
        """(..., num_codebooks) codes -> (..., d_model * avg_pooler) fp32 summed code vectors (the RVQ reconstruction).

        Waveform synthesis (reconstruction decoder, flow matching, vocoder) is the code2wav model's job.
        """
        return self.quantizer.dequantize(audio_codes.to(self.device))


__all__ = [
    "BaichuanAudioBridge",
    "BaichuanAudioCodebook",
    "BaichuanAudioEncoder",
    "BaichuanAudioResidualVQ",
    "BaichuanAudioTokenizerModel",
    "BaichuanAudioTokenizerOutput",
    "BaichuanAudioTokenizerPreTrainedModel",
    "infer_feature_length",
]
