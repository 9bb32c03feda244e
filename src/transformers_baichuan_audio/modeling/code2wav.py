"""Code2wav: RVQ codes (12.5 Hz, ``num_codebooks`` per frame) -> 24 kHz waveform, identical to the original.

Stages (original module names in brackets):

1. ``dequantizer`` [``audio_bridge_model.decode``]: sum of the code vectors (fp32, last codebook first) and the
   ``proj_decoder`` Linear(code_dim -> d_model);
2. ``decoder`` [``audio_decoder``]: causal transposed conv (k=``decoder_config.kernel_size``, stride ``avg_pooler``: 4L-1
   frames at 50 fps) + GroupNorm(1), sinusoidal positions, causal Whisper layers, LayerNorm ->
   ``hidden_states_before_dconv2``. The legacy coarse-mel branch (``dconv2`` + ``post_net``) is loaded and available
   through :meth:`BaichuanAudioCode2Wav.legacy_mel`, not run by default;
3. ``prenet`` + ``estimator`` + Euler CFM [``audio_flow_matching_decoder``]: see :mod:`.flow_matching`;
4. ``vocoder``: the HiFT generator (shipped separately by the original as ``hift.pt``), see :mod:`.vocoder`.

Batching. The original decodes a padded batch in which the padding is visible to dconv1's GroupNorm (statistics
over the whole padded tensor) and which draws the CFM noise in the padded layout, so a segment's sound depends on
its batch-mates. ``decode(..., batch_invariant=False)`` reproduces that (parity mode); the default decodes each
segment exactly as if it were alone (same numbers as a single-segment call).

Streaming: :mod:`.code2wav_streaming` (frames that arrive one by one, waveform chunks as soon as they are final).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..configuration import BaichuanAudioCode2WavConfig, is_int_at_least
from .flow_matching import BaichuanAudioFlowEstimator, BaichuanAudioFlowPrenet, euler_cfm_sample, whisper_layers
from .layers import build_attention_mask, sinusoids
from .placement import loaded_weights, module_device

if TYPE_CHECKING:  # the streaming decoder builds on this module
    from .code2wav_streaming import BaichuanAudioStreamingDecoder
from .vocoder import BaichuanAudioHiFTVocoder, NSFSourceDraws, Snake

# --------------------------------------------------------------------------------------------------- submodules


class BaichuanAudioDequantizer(nn.Module):
    """Code vectors of the residual VQ (fp32 tables) summed per frame, then projected to ``d_model``."""

    def __init__(self, config):
        super().__init__()
        self.codebooks = nn.ModuleList([nn.Embedding(size, config.code_dim) for size in config.codebook_sizes])
        self.proj_decoder = nn.Linear(config.code_dim, config.d_model)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, num_codebooks) -> (N, d_model); summed from the last codebook to the first (as the original)."""
        total = 0
        for i in range(len(self.codebooks) - 1, -1, -1):
            total = total + self.codebooks[i](codes[:, i]).float()
        return self.proj_decoder(total.to(self.proj_decoder.weight.dtype))


class CausalConvTranspose1d(nn.Module):
    """Transposed conv trimmed to be causal (``max(0, k - stride)`` frames dropped on the right) + GroupNorm(1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride)
        self.norm = nn.GroupNorm(1, out_channels)

    def output_lengths(self, lengths: torch.Tensor, continues: bool = False) -> torch.Tensor:
        """Frames out for ``lengths`` frames in; ``continues``: the phrase goes on (length ``lengths * stride``)."""
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        if continues:
            return lengths * s
        return (lengths - 1) * s + k - max(0, k - s)

    def normalized_lengths(self, lengths: torch.Tensor, continues: bool = False) -> torch.Tensor:
        """Frames the GroupNorm statistics cover: the untrimmed conv output (the original normalises before the
        causal trim), or the ``lengths * stride`` frames of a prefix that continues."""
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        return lengths * s if continues else (lengths - 1) * s + k

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        mode: str = "valid",
        stats: tuple[torch.Tensor, torch.Tensor] | None = None,
        continues: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, C) zero-padded -> (y (B, T, C') zero-padded, lengths (B,)).

        GroupNorm statistics: mode ``"padded"``: over the whole padded tensor (the original's batch behaviour);
        ``"valid"``: over each sample's own frames; ``stats``: given per-sample (mean, var) of shape (B,).
        """
        y = self.raw(x, continues)
        out_lengths = self.output_lengths(lengths, continues)
        if stats is not None:
            y = self.normalize(y, *stats)
        elif mode == "padded":
            y = self.norm(y)
        else:
            norm_lengths = self.normalized_lengths(lengths, continues).tolist()
            y = torch.cat(
                [F.pad(self.norm(y[b : b + 1, :, :n]), (0, y.shape[-1] - n)) for b, n in enumerate(norm_lengths)]
            )
        total = int(out_lengths.max())
        y = y[:, :, :total].transpose(1, 2)
        valid = torch.arange(total, device=y.device)[None, :] < out_lengths[:, None]
        return torch.where(valid[..., None], y, 0.0), out_lengths

    def normalize(self, y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """GroupNorm(1) of the raw output y (B, C', T) with given per-sample statistics (B,) (and the affine)."""
        mean, var = (v.to(y.dtype).view(-1, 1, 1) for v in (mean, var))
        y = (y - mean) * torch.rsqrt(var + self.norm.eps)
        with loaded_weights(self.norm) as norm:  # the affine is read here, outside the GroupNorm's forward
            return y * norm.weight[None, :, None] + norm.bias[None, :, None]

    def raw(self, x: torch.Tensor, continues: bool = False) -> torch.Tensor:
        """Untrimmed, un-normalised transposed conv of (B, L, C) -> (B, C', T_raw). ``continues`` appends a zero
        frame standing for the next frames (they add nothing before position ``L * stride``)."""
        if continues:
            x = F.pad(x, (0, 0, 0, 1))
        return self.conv(x.transpose(1, 2))

    def statistics(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample GroupNorm(1) (mean, biased var) of the whole-phrase conv output, for ``stats``."""
        y = self.raw(x)
        means, variances = [], []
        for b, n in enumerate(self.normalized_lengths(lengths).tolist()):
            v = y[b, :, :n].double()
            means.append(v.mean())
            variances.append(v.var(unbiased=False))
        return torch.stack(means).to(y.dtype), torch.stack(variances).to(y.dtype)


class MelSpecRefineNet(nn.Module):
    """Legacy post-net: nearest-resample the coarse mel to the 16 kHz / hop-256 grid, conv stack, residual."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        dec = config.decoder_config
        layers: list[nn.Module] = []
        in_ch = dec.legacy_mel_bins
        for out_ch in dec.legacy_post_net_channels[:-1]:
            layers += [nn.Conv1d(in_ch, out_ch, 5, 1, 2), nn.GroupNorm(1, out_ch), nn.Mish()]
            in_ch = out_ch
        layers.append(nn.Conv1d(in_ch, dec.legacy_mel_bins, 1, 1))
        self.layers = nn.Sequential(*layers)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        c, dec = self.config, self.config.decoder_config
        out = lengths.to(torch.float32) * c.hop_length / c.sampling_rate
        return (out * dec.legacy_mel_sampling_rate / dec.legacy_mel_hop_length).to(torch.int64)

    def forward(self, coarse: torch.Tensor, lengths: torch.Tensor):
        """coarse (B, T, n_mels) -> (refined (B, T', n_mels), coarse resampled (B, T', n_mels), lengths (B,))."""
        out_lengths = self.output_lengths(lengths)
        coarse = coarse[:, : int(lengths.max())]
        coarse = F.interpolate(coarse.float().transpose(1, 2), size=int(out_lengths.max()), mode="nearest")
        refined = self.layers(coarse).transpose(1, 2) + coarse.transpose(1, 2)
        valid = (torch.arange(refined.shape[1], device=refined.device)[None, :] < out_lengths[:, None])[..., None]
        return torch.where(valid, refined, 0.0), torch.where(valid, coarse.transpose(1, 2), 0.0), out_lengths


class BaichuanAudioReconstructionDecoder(nn.Module):
    """Causal decoder from projected code vectors (12.5 Hz) to ``hidden_states_before_dconv2`` (50 fps)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        d, dec = config.d_model, config.decoder_config
        self.dconv1 = CausalConvTranspose1d(d, d, dec.kernel_size, config.avg_pooler)
        self.register_buffer("positional_embedding", sinusoids(config.max_source_positions, d), persistent=False)
        self.layers = whisper_layers(
            config,
            dec.num_hidden_layers,
            d,
            dec.num_attention_heads,
            dec.intermediate_size,
            dec.activation_function,
            "layer",
            dec.layer_norm_eps,
        )
        self.layer_norm = nn.LayerNorm(d, eps=dec.layer_norm_eps)
        self.dconv2 = CausalConvTranspose1d(d, dec.legacy_mel_bins, dec.kernel_size, dec.stride_size)
        self.post_net = MelSpecRefineNet(config)

    def positions(self, length: int) -> torch.Tensor:
        table = self.positional_embedding
        if length > table.shape[0]:  # the original fails here; extend the same table
            table = sinusoids(length, table.shape[1]).to(table.device)
        return table[:length]

    def forward(self, embeds: torch.Tensor, frame_lengths: torch.Tensor, **norm) -> tuple[torch.Tensor, torch.Tensor]:
        """embeds (B, L, d_model) zero-padded, frame_lengths (B,) -> (hidden (B, T, d_model) zero-padded, lengths).

        ``norm``: ``mode`` / ``stats`` / ``continues`` of dconv1 (see :meth:`CausalConvTranspose1d.forward`).
        """
        embeds = torch.where(
            (torch.arange(embeds.shape[1], device=embeds.device)[None, :] < frame_lengths[:, None])[..., None],
            embeds,
            0.0,
        )
        y, lengths = self.dconv1(embeds, frame_lengths, **norm)
        total = y.shape[1]
        valid = torch.arange(total, device=y.device)[None, :] < lengths[:, None]
        hidden = (y.float() + self.positions(total)).to(y.dtype)
        mask = build_attention_mask(valid, total, causal=True)
        for layer in self.layers:
            hidden = layer(hidden, mask)
        hidden = self.layer_norm(hidden)
        return torch.where(valid[..., None], hidden, 0.0), lengths

    def legacy_mel(self, hidden: torch.Tensor, lengths: torch.Tensor):
        """Legacy branch: dconv2 (GroupNorm over the padded batch) + post-net on the 16 kHz / hop-256 mel grid."""
        y, coarse_lengths = self.dconv2(hidden[:, : int(lengths.max())], lengths, mode="padded")
        return self.post_net(y, coarse_lengths)


# ------------------------------------------------------------------------------------------------------- outputs


@dataclass
class BaichuanAudioCode2WavOutput(ModelOutput):
    r"""
    audio_values (`list[torch.FloatTensor]`): one 1-D waveform per segment, ``mel_lengths[i] * hop`` samples at
        ``vocoder_config.sampling_rate`` (24 kHz), clamped to ``+-audio_limit``.
    mel (`list[torch.FloatTensor]`): flow-matching mel per segment, (n_mels, T_i) at 50 fps.
    mel_lengths (`torch.LongTensor` of shape `(batch,)`): T_i = 4 L_i - 1 for L_i code frames.
    f0 (`list[torch.FloatTensor]`): predicted f0 (T_i,) in Hz per segment.
    hidden_states (`torch.FloatTensor` of shape `(batch, T, d_model)`): reconstruction-decoder output
        (``hidden_states_before_dconv2``), zero-padded.
    """

    audio_values: list[torch.FloatTensor] | None = None
    mel: list[torch.FloatTensor] | None = None
    mel_lengths: torch.LongTensor | None = None
    f0: list[torch.FloatTensor] | None = None
    hidden_states: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------------- model


class BaichuanAudioCode2WavPreTrainedModel(PreTrainedModel):
    config: BaichuanAudioCode2WavConfig
    config_class = BaichuanAudioCode2WavConfig
    base_model_prefix = "code2wav"
    main_input_name = "audio_codes"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["BaichuanWhisperLayer", "BaichuanAudioUNetTransformerBlock"]
    # fp32 like the original, also inside a bf16 parent. transformers merges a child's patterns into the parent's
    # WITHOUT the child's prefix and searches them as regexes in every key, so the pattern is anchored to the
    # standalone key names (in the parent, its own "code2wav" pattern applies).
    _keep_in_fp32_modules_strict = [r"^(?:dequantizer|decoder|prenet|estimator|vocoder)\."]

    @property
    def device(self) -> torch.device:
        """Where the model computes: the device of its first weight, skipping weights that accelerate offloaded
        (``device_map`` with "cpu" / "disk" entries; see :func:`.placement.module_device`)."""
        return module_device(self)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, BaichuanAudioReconstructionDecoder):
            init.copy_(module.positional_embedding, sinusoids(*module.positional_embedding.shape))
        elif isinstance(module, BaichuanAudioHiFTVocoder):
            init.copy_(module.stft_window, module.make_window(module.n_fft))
        elif isinstance(module, Snake):
            init.ones_(module.alpha)
        elif isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            if module.weight is not None:
                init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)


class BaichuanAudioCode2Wav(BaichuanAudioCode2WavPreTrainedModel):
    """RVQ codes -> 24 kHz waveform (dequantizer, reconstruction decoder, flow matching, HiFT vocoder).

    Kept in fp32 inside a bf16 parent (``_keep_in_fp32_modules_strict``), like the original. Use :meth:`decode`
    for whole segments and :meth:`streaming_decoder` for frames that arrive one by one.
    """

    def __init__(self, config: BaichuanAudioCode2WavConfig):
        super().__init__(config)
        self.dequantizer = BaichuanAudioDequantizer(config)
        self.decoder = BaichuanAudioReconstructionDecoder(config)
        self.prenet = BaichuanAudioFlowPrenet(config)
        self.estimator = BaichuanAudioFlowEstimator(config)
        self.vocoder = BaichuanAudioHiFTVocoder(config.vocoder_config)
        #: The U-Net the one-shot decode calls instead of ``estimator`` (:meth:`compile_estimator`); None: eager.
        self.compiled_estimator: Callable | None = None
        self.estimator_pad_to_multiple_of: int | None = None
        self.post_init()
        # fp32 also when built under a bf16 default dtype (``from_pretrained(dtype=...)`` builds on the meta device):
        # the weights that ``device_map`` offloads to disk keep the dtype of this meta instance (they are not cast
        # by ``_keep_in_fp32_modules_strict``, which applies to the weights being loaded).
        self.float()

    # ----------------------------------------------------------------------------------------------- inputs
    def check_codes(self, audio_codes) -> list[torch.Tensor]:
        """Validate ``(frames, num_codebooks)`` integer tensors (or a list of them); returns a list."""
        if isinstance(audio_codes, torch.Tensor):
            if audio_codes.dim() == 3:
                audio_codes = list(audio_codes)
            else:
                audio_codes = [audio_codes]
        if not isinstance(audio_codes, (list, tuple)) or len(audio_codes) == 0:
            raise ValueError("audio_codes must be a LongTensor (frames, num_codebooks) or a non-empty list of them")
        sizes = torch.tensor(self.config.codebook_sizes)
        out = []
        for i, codes in enumerate(audio_codes):
            if not isinstance(codes, torch.Tensor) or codes.dtype.is_floating_point or codes.dtype == torch.bool:
                raise TypeError(f"audio_codes[{i}] must be an integer tensor, got {type(codes).__name__}")
            if codes.dim() != 2 or codes.shape[1] != len(sizes):
                raise ValueError(f"audio_codes[{i}] must have shape (frames, {len(sizes)}), got {tuple(codes.shape)}")
            if codes.shape[0] == 0:
                raise ValueError(f"audio_codes[{i}] is empty: at least one frame is needed to decode")
            bad = (codes < 0) | (codes >= sizes.to(codes.device)[None, :])
            if bool(bad.any()):
                frame, book = (int(v) for v in bad.nonzero()[0])
                value = int(codes[frame, book])
                hint = " (that is the end-of-audio id; strip EOS frames first)" if value == sizes[book] else ""
                raise ValueError(
                    f"audio_codes[{i}][{frame}, {book}] = {value} is out of range for codebook {book} "
                    f"(size {int(sizes[book])}){hint}"
                )
            out.append(codes.to(self.device, torch.long))
        return out

    # ------------------------------------------------------------------------------------------------ compiling
    def compile_estimator(self, pad_to_multiple_of: int | None = None, **compile_kwargs) -> Callable:
        """Compile the flow-matching U-Net of the one-shot :meth:`decode` with ``torch.compile``; returns the compiled
        callable (also kept as :attr:`compiled_estimator`; set that to None to go back to eager).

        Traced, the U-Net applies its static chunk mask as a masked attention (the path padded batches take), with no
        data-dependent branch, so one graph serves every phrase length: ``dynamic=True`` and ``fullgraph=True`` by
        default; any other ``torch.compile`` argument is passed through (e.g. ``mode="reduce-overhead"``: CUDA
        graphs). The mel equals the eager decode's up to roundoff (same attention sets; the eager single segment
        applies the mask chunk by chunk). ``pad_to_multiple_of``: pad the mel frames of each decode to a multiple of
        this number (masked frames after the phrase, which the causal U-Net never lets reach the phrase's frames), so
        that a shape-specialised backend sees one shape per bucket. Compiling costs minutes at the released size on
        a CPU, and on a CPU the compiled U-Net is not faster (``benchmarks/bench_code2wav.py --paths compiled``); it
        is meant for GPUs. The streaming decoder keeps the eager U-Net (its per-chunk state is Python objects). Not
        tested on a code2wav offloaded with ``device_map`` (whose hooks move weights inside the forward).
        """
        if pad_to_multiple_of is not None and not is_int_at_least(pad_to_multiple_of, 1):
            raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")
        self.compiled_estimator = torch.compile(
            self.estimator.forward, **{"dynamic": True, "fullgraph": True, **compile_kwargs}
        )
        self.estimator_pad_to_multiple_of = pad_to_multiple_of
        return self.compiled_estimator

    # ------------------------------------------------------------------------------------------------ stages
    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, num_codebooks) -> projected code vectors (N, d_model)."""
        return self.dequantizer(codes)

    def decode_hidden(
        self,
        frame_embeds: torch.Tensor,
        frame_lengths: torch.Tensor,
        batch_invariant: bool = True,
        norm_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
        continues: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d_model) dequantized frames -> (``hidden_states_before_dconv2`` (B, T, d_model), lengths (B,)).

        ``batch_invariant=False`` normalises dconv1 over the padded batch (the original); ``norm_stats`` gives the
        GroupNorm (mean, var) per sample; ``continues`` decodes a prefix of a longer phrase (T = 4 L).
        """
        mode = "valid" if batch_invariant else "padded"
        return self.decoder(frame_embeds, frame_lengths, mode=mode, stats=norm_stats, continues=continues)

    def groupnorm_statistics(self, frame_embeds: torch.Tensor, frame_lengths: torch.Tensor):
        """Per-sample (mean, var) of dconv1's GroupNorm over each sample's valid frames (for ``norm_stats``)."""
        return self.decoder.dconv1.statistics(frame_embeds, frame_lengths)

    def prior(self, hidden: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prenet: hidden (B, T, d_model) -> (mu (B, T', n_mels), lengths (B,))."""
        return self.prenet(hidden, lengths)

    def flow_matching_mel(
        self,
        hidden: torch.Tensor,
        lengths: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
        callback: Callable[..., None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prenet + CFM sampling: hidden (B, T, d_model) -> (mel (B, n_mels, T') zero-padded, lengths (B,)).

        ``noise``: the initial state z (B, n_mels, T') (already scaled by the temperature); drawn as
        ``randn * temperature`` in that layout otherwise (from ``generator`` or the global RNG).
        """
        mu, out_lengths = self.prior(hidden, lengths)
        mu = mu.transpose(1, 2).float()
        total = mu.shape[-1]
        mask = (torch.arange(total, device=mu.device)[None, :] < out_lengths[:, None])[:, None, :].to(mu.dtype)
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            noise = noise * self.config.flow_matching_config.temperature
        elif tuple(noise.shape) != tuple(mu.shape):
            raise ValueError(
                f"noise must have shape {tuple(mu.shape)} (batch, n_mels, frames), got {tuple(noise.shape)}"
            )
        noise = noise.to(mu.device, mu.dtype)
        estimator, inputs = self.estimator, (noise, mu, mask)
        if self.compiled_estimator is not None:
            estimator = self.compiled_estimator
            pad = -total % (self.estimator_pad_to_multiple_of or 1)
            if pad:  # masked frames after the phrase (see compile_estimator)
                inputs = tuple(F.pad(t, (0, pad)) for t in inputs)
        with self.estimator.compute_context(mu.device):
            mel = euler_cfm_sample(
                estimator,
                *inputs,
                num_steps or self.config.flow_matching_config.diffusion_steps,
                self.config.flow_matching_config.inference_cfg_rate,
                self.config.flow_matching_config.t_scheduler,
                callback=callback,
            )
        return mel[..., :total] * mask, out_lengths

    def vocode(self, mel: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """HiFT: mel (B, n_mels, T) -> (waveform (B, T * hop), f0 (B, T), NSF excitation (B, T * hop)).

        kwargs: ``source`` (an injected excitation (B, T * hop)), ``generator`` or ``draws`` (:class:`NSFSourceDraws`)
        for the NSF random draws (global RNG otherwise, in the original's order).
        """
        return self.vocoder(mel, **kwargs)

    def legacy_mel(self, hidden: torch.Tensor, lengths: torch.Tensor):
        """Legacy coarse-mel branch (not used for audio): -> (refined (B, T', n), coarse (B, T', n), lengths)."""
        return self.decoder.legacy_mel(hidden, lengths)

    # ------------------------------------------------------------------------------------------------ decode
    def _frames_to_mel(
        self,
        codes: list[torch.Tensor],
        batch_invariant: bool,
        noise,
        generator,
        num_steps,
        norm_stats=None,
        continues: bool = False,
    ):
        frame_lengths = torch.tensor([c.shape[0] for c in codes], device=self.device)
        embeds = self.dequantize(torch.cat(codes))
        padded = torch.zeros(len(codes), int(frame_lengths.max()), embeds.shape[-1], device=embeds.device)
        for b, e in enumerate(embeds.split(frame_lengths.tolist())):
            padded[b, : e.shape[0]] = e
        hidden, lengths = self.decode_hidden(padded, frame_lengths, batch_invariant, norm_stats, continues)
        mel, mel_lengths = self.flow_matching_mel(
            hidden, lengths, noise=noise, generator=generator, num_steps=num_steps
        )
        return mel, mel_lengths, hidden

    @torch.no_grad()
    def decode(
        self,
        audio_codes: torch.Tensor | Sequence[torch.Tensor],
        noise: torch.Tensor | Sequence[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
        batch_invariant: bool = True,
        source: Sequence[torch.Tensor] | None = None,
        draws: Sequence[NSFSourceDraws] | None = None,
        return_hidden_states: bool = False,
    ) -> BaichuanAudioCode2WavOutput:
        """Codes -> waveforms.

        Args:
            audio_codes: LongTensor (frames, num_codebooks), or a list of them (one per segment); no EOS frames.
            noise: CFM initial noise: (B, n_mels, T_max) for the batch (segment ``i`` uses ``[i, :, :T_i]`` in the
                batch-invariant mode), or a list of (n_mels, T_i) / (1, n_mels, T_i).
            generator: RNG for the CFM noise and the vocoder's NSF draws (global RNG when None).
            num_steps: Euler steps (default ``config.flow_matching_config.diffusion_steps``).
            batch_invariant: True: each segment decoded as if alone. False: the original's padded-batch decoding.
            source / draws: per-segment NSF excitation (T_i * hop,) or draws (see :class:`NSFSourceDraws`).
        """
        codes = self.check_codes(audio_codes)
        n = len(codes)
        if batch_invariant:
            mels, lengths, hiddens = [], [], []
            for i, c in enumerate(codes):
                t_i = int(self.decoder.dconv1.output_lengths(torch.tensor(c.shape[0])))
                seg_noise = _segment_noise(noise, i, t_i)
                mel, mel_len, hidden = self._frames_to_mel([c], True, seg_noise, generator, num_steps)
                mels.append(mel[0, :, : int(mel_len[0])])
                lengths.append(mel_len[0])
                hiddens.append(hidden[0])
            mel_lengths = torch.stack(lengths)
            hidden_states = nn.utils.rnn.pad_sequence(hiddens, batch_first=True) if return_hidden_states else None
        else:
            if noise is not None and not isinstance(noise, torch.Tensor):
                raise ValueError("batch_invariant=False takes the noise as one (B, n_mels, T_max) tensor")
            mel, mel_lengths, hidden = self._frames_to_mel(codes, False, noise, generator, num_steps)
            mels = [mel[i, :, : int(mel_lengths[i])] for i in range(n)]
            hidden_states = hidden if return_hidden_states else None
        waves, f0s = [], []
        for i, m in enumerate(mels):
            src = None if source is None else source[i].reshape(1, -1)
            d = None if draws is None else draws[i]
            wave, f0, _ = self.vocode(m[None], source=src, generator=generator, draws=d)
            waves.append(wave[0])
            f0s.append(f0[0])
        return BaichuanAudioCode2WavOutput(
            audio_values=waves, mel=mels, mel_lengths=mel_lengths, f0=f0s, hidden_states=hidden_states
        )

    def forward(self, audio_codes, **kwargs) -> BaichuanAudioCode2WavOutput:
        """Same as :meth:`decode`."""
        return self.decode(audio_codes, **kwargs)

    def streaming_decoder(self, **kwargs) -> BaichuanAudioStreamingDecoder:
        """A :class:`~.code2wav_streaming.BaichuanAudioStreamingDecoder` on this model (kwargs: its constructor's)."""
        from .code2wav_streaming import BaichuanAudioStreamingDecoder

        return BaichuanAudioStreamingDecoder(self, **kwargs)


def _segment_noise(noise, index: int, frames: int) -> torch.Tensor | None:
    """Noise of segment ``index`` as (1, n_mels, frames) from a (B, n_mels, T) tensor or a list of tensors."""
    if noise is None:
        return None
    if isinstance(noise, torch.Tensor):
        seg = noise[None] if noise.dim() == 2 else noise[index : index + 1]
    else:
        seg = noise[index] if noise[index].dim() == 3 else noise[index][None]
    if seg.shape[-1] < frames:
        raise ValueError(f"noise of segment {index} covers {seg.shape[-1]} mel frames, {frames} needed")
    return seg[..., :frames]


__all__ = [
    "BaichuanAudioCode2Wav",
    "BaichuanAudioCode2WavPreTrainedModel",
    "BaichuanAudioCode2WavOutput",
]
