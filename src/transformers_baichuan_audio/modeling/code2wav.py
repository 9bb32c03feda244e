"""Code2wav: RVQ codes (12.5 Hz, ``num_codebooks`` per frame) -> 24 kHz waveform, identical to the original.

Stages (original module names in brackets):

1. ``dequantizer`` [``audio_bridge_model.decode``]: sum of the code vectors (fp32, last codebook first) and the
   ``proj_decoder`` Linear(code_dim -> d_model);
2. ``decoder`` [``audio_decoder``]: causal transposed conv (k=``decoder_kernel_size``, stride ``avg_pooler``: 4L-1
   frames at 50 fps) + GroupNorm(1), sinusoidal positions, causal Whisper layers, LayerNorm ->
   ``hidden_states_before_dconv2``. The legacy coarse-mel branch (``dconv2`` + ``post_net``) is loaded and available
   through :meth:`BaichuanAudioCode2Wav.legacy_mel`, not run by default;
3. ``prenet`` + ``estimator`` + Euler CFM [``audio_flow_matching_decoder``]: see :mod:`.flow_matching`;
4. ``vocoder``: the HiFT generator (shipped separately by the original as ``hift.pt``), see :mod:`.vocoder`.

Batching. The original decodes a padded batch in which the padding is visible to dconv1's GroupNorm (statistics
over the whole padded tensor) and which draws the CFM noise in the padded layout, so a segment's sound depends on
its batch-mates. ``decode(..., batch_invariant=False)`` reproduces that (parity mode); the default decodes each
segment exactly as if it were alone (same numbers as a single-segment call).

Streaming (:class:`BaichuanAudioStreamingDecoder`). What is exact and what is not:

* dequantizer, transposed conv, causal layers, prenet: causal, exact;
* GroupNorm of dconv1: its statistics are over the WHOLE phrase, so no streaming decoder can match the one-shot
  decode before the phrase ends. The streaming decoder normalises each prefix with the statistics of that prefix
  (running statistics; the last chunk uses the whole phrase, i.e. the one-shot statistics), or with statistics
  given by the caller (``norm_stats``; with the one-shot statistics every chunk's mel equals the one-shot mel);
* U-Net: causal convs and attention within ``static_chunk_size`` (100-frame, 2 s) chunks with every earlier chunk
  visible, so a chunk's mel is final once its 100 frames' inputs exist: the mel is produced chunk by chunk
  (25 code frames per chunk), each chunk from a decode of the whole prefix (exact for the chunk);
* vocoder: not causal (about ``receptive_field_frames`` mel frames each side) and its NSF phase is a running sum
  over all samples. The stream carries the phase sum exactly and re-runs the vocoder on windows with that much
  context on both sides, so the concatenated chunks equal the one-shot waveform up to float roundoff (no
  cross-fade is needed); the price is a lookahead of ``receptive_field_frames`` + 5 (F0 predictor) mel frames.
* a phrase whose length is a multiple of 25 frames: its last chunk was computed when its 25th frame arrived,
  assuming the phrase goes on (one more, bias-only, frame inside the chunk's attention); at ``finish`` the frames
  not yet vocoded take the exact values, those already vocoded keep the assumption (~1e-2 mel difference).

Cost: each chunk re-decodes the whole prefix (quadratic in the phrase length, ~3x a one-shot decode for 10 s).
Measured on the tiny-a fixture (10 s, tests/test_code2wav_streaming.py): with the phrase statistics the mel equals
the one-shot mel to 3e-6 and the windowed vocoder adds 4e-5; with running statistics the mel differs by 0.13 (2 %
of its range) in the first 2 s chunk, 0.066 / 0.036 / 0.0035 in the next ones and 0 in the last one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..configuration import BaichuanAudioCode2WavConfig
from .flow_matching import BaichuanAudioFlowEstimator, BaichuanAudioFlowPrenet, euler_cfm_sample, whisper_layers
from .layers import build_attention_mask, sinusoids
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
            mean, var = (v.to(y.dtype).view(-1, 1, 1) for v in stats)
            y = (y - mean) * torch.rsqrt(var + self.norm.eps)
            y = y * self.norm.weight[None, :, None] + self.norm.bias[None, :, None]
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
        layers: list[nn.Module] = []
        in_ch = config.legacy_mel_bins
        for out_ch in config.legacy_post_net_channels[:-1]:
            layers += [nn.Conv1d(in_ch, out_ch, 5, 1, 2), nn.GroupNorm(1, out_ch), nn.Mish()]
            in_ch = out_ch
        layers.append(nn.Conv1d(in_ch, config.legacy_mel_bins, 1, 1))
        self.layers = nn.Sequential(*layers)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        c = self.config
        out = lengths.to(torch.float32) * c.hop_length / c.sampling_rate
        return (out * c.legacy_mel_sampling_rate / c.legacy_mel_hop_length).to(torch.int64)

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
        d = config.d_model
        self.dconv1 = CausalConvTranspose1d(d, d, config.decoder_kernel_size, config.avg_pooler)
        self.register_buffer("positional_embedding", sinusoids(config.max_source_positions, d), persistent=False)
        self.layers = whisper_layers(
            config,
            config.decoder_layers,
            d,
            config.decoder_attention_heads,
            config.decoder_ffn_dim,
            config.activation_function,
            "layer",
            config.layer_norm_eps,
        )
        self.layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dconv2 = CausalConvTranspose1d(
            d, config.legacy_mel_bins, config.decoder_kernel_size, config.decoder_stride_size
        )
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
        self.post_init()

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
            noise = noise * self.config.temperature
        elif tuple(noise.shape) != tuple(mu.shape):
            raise ValueError(
                f"noise must have shape {tuple(mu.shape)} (batch, n_mels, frames), got {tuple(noise.shape)}"
            )
        mel = euler_cfm_sample(
            self.estimator,
            noise.to(mu.device, mu.dtype),
            mu,
            mask,
            num_steps or self.config.diffusion_steps,
            self.config.inference_cfg_rate,
            self.config.t_scheduler,
            callback=callback,
        )
        return mel * mask, out_lengths

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
            num_steps: Euler steps (default ``config.diffusion_steps``).
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
        """A :class:`BaichuanAudioStreamingDecoder` on this model (kwargs: see its constructor)."""
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


# ----------------------------------------------------------------------------------------------------- streaming


class BaichuanAudioStreamingDecoder:
    """Incremental decoding of one phrase: :meth:`push` code frames as they are generated, get waveform chunks back;
    :meth:`finish` at the end of the phrase returns the rest. See the module docstring for what is exact.

    The mel is produced per U-Net attention chunk (``static_chunk_size`` mel frames = ``static_chunk_size /
    avg_pooler`` code frames, 25 in the released model), so the first waveform chunk is returned by the push that
    completes the first 25 frames. The vocoder emits the samples whose mel context is complete.

    Args:
        model: a :class:`BaichuanAudioCode2Wav`.
        noise: CFM noise (1, n_mels, T) covering the phrase (sliced as the phrase grows); drawn per chunk from
            ``generator`` when None (then not the same numbers as a one-shot ``decode`` with that generator).
        generator: RNG for the noise and the NSF draws.
        draws: NSF draws covering the phrase (phase (1, H+1, 1), noise (1, H+1, samples)); drawn when None.
        norm_stats: dconv1 GroupNorm (mean, var) (each shape (1,)) to use for every chunk; None: running statistics.
        num_steps: Euler steps.
    """

    def __init__(
        self,
        model: BaichuanAudioCode2Wav,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        draws: NSFSourceDraws | None = None,
        norm_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_steps: int | None = None,
    ):
        self.model = model
        cfg = model.config
        self.chunk = cfg.static_chunk_size
        self.stride = model.decoder.dconv1.conv.stride[0]
        self.noise = noise
        self.generator = generator
        self.norm_stats = norm_stats
        self.num_steps = num_steps
        vocoder = model.vocoder
        self.hop = vocoder.upsample_factor
        self.harmonics = vocoder.m_source.num_harmonics
        self.f0_radius = sum(1 for m in vocoder.f0_predictor.condnet if isinstance(m, nn.Conv1d))
        self.voc_radius = vocoder.receptive_field_frames()
        if draws is None:
            draws = NSFSourceDraws.sample(1, self.harmonics, 0, generator, model.device)
        self.draws = draws
        self.frames: list[torch.Tensor] = []
        self.mel = torch.zeros(1, cfg.in_channels, 0, device=model.device)
        self.mel_chunks_done = 0
        self.source = torch.zeros(1, 0, device=model.device)
        self.f0 = torch.zeros(1, 0, device=model.device)
        self.phase_carry = None
        self.emitted_frames = 0
        self.finished = False

    @property
    def frames_per_chunk(self) -> int:
        return math.ceil(self.chunk / self.stride)

    def _noise(self, total: int) -> torch.Tensor:
        n_mels = self.model.config.in_channels
        if self.noise is not None:
            if self.noise.shape[-1] < total:
                raise ValueError(f"streaming noise covers {self.noise.shape[-1]} mel frames, {total} needed")
            return self.noise.reshape(1, n_mels, -1)[..., :total]
        have = getattr(self, "_drawn_noise", torch.zeros(1, n_mels, 0, device=self.model.device))
        if have.shape[-1] < total:
            extra = torch.randn((1, n_mels, total - have.shape[-1]), generator=self.generator, device=self.model.device)
            have = torch.cat([have, extra * self.model.config.temperature], dim=-1)
            self._drawn_noise = have
        return have[..., :total]

    def _prefix_mel(self, num_frames: int, continues: bool) -> torch.Tensor:
        codes = torch.cat(self.frames[:num_frames]) if num_frames else None
        total = (
            num_frames * self.stride
            if continues
            else int(self.model.decoder.dconv1.output_lengths(torch.tensor(num_frames)))
        )
        mel, _, _ = self.model._frames_to_mel(
            [codes], True, self._noise(total), None, self.num_steps, self.norm_stats, continues
        )
        return mel

    def _draws_for(self, start: int, stop: int) -> NSFSourceDraws:
        noise = self.draws.noise
        if noise.shape[-1] < stop:
            extra = torch.randn(
                (1, self.harmonics, stop - noise.shape[-1]), generator=self.generator, device=noise.device
            )
            noise = torch.cat([noise, extra], dim=-1)
            self.draws = NSFSourceDraws(self.draws.phase, noise)
        return NSFSourceDraws(self.draws.phase, noise[..., start:stop])

    def _advance_source(self, final_frames: int) -> None:
        """Extend the NSF excitation up to ``final_frames`` mel frames (those whose f0 no longer changes)."""
        done = self.source.shape[-1] // self.hop
        if final_frames <= done:
            return
        vocoder = self.model.vocoder
        lo, hi = max(0, done - self.f0_radius), min(self.mel.shape[-1], final_frames + self.f0_radius)
        f0 = vocoder.predict_f0(self.mel[..., lo:hi])[:, done - lo : final_frames - lo]
        self.f0 = torch.cat([self.f0, f0], dim=-1)
        draws = self._draws_for(done * self.hop, final_frames * self.hop)
        excitation, self.phase_carry = vocoder.m_source(vocoder.upsample_f0(f0), draws, self.phase_carry)
        self.source = torch.cat([self.source, excitation], dim=-1)

    def _rewind_source(self, frames: int) -> None:
        """Drop the excitation after ``frames`` mel frames (recomputing the running phase sum at that point)."""
        if self.source.shape[-1] <= frames * self.hop:
            return
        self.f0 = self.f0[:, :frames]
        self.source = self.source[:, : frames * self.hop]
        m_source = self.model.vocoder.m_source
        increments = m_source.harmonic_increments(self.model.vocoder.upsample_f0(self.f0)).double()
        self.phase_carry = torch.cumsum(increments, dim=-1)[..., -1] if frames else None

    def _emit(self, upto: int) -> torch.Tensor:
        """Waveform samples of mel frames [emitted, upto) from a vocoder window with full context."""
        start = self.emitted_frames
        if upto <= start:
            return torch.zeros(0, device=self.model.device)
        lo, hi = max(0, start - self.voc_radius), min(self.mel.shape[-1], upto + self.voc_radius)
        wave = self.model.vocoder.decode(self.mel[..., lo:hi], self.source[:, lo * self.hop : hi * self.hop])
        self.emitted_frames = upto
        return wave[0, (start - lo) * self.hop : (upto - lo) * self.hop]

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """Add code frames (n, num_codebooks) (n may be 0 or 1); returns the new waveform samples (maybe empty)."""
        if self.finished:
            raise RuntimeError("this streaming decoder is finished; create a new one for the next phrase")
        if codes.dim() == 1:
            codes = codes[None]
        if codes.shape[0]:
            self.frames.extend(self.model.check_codes(codes)[0].split(1))
        pieces = []
        while len(self.frames) * self.stride >= (self.mel_chunks_done + 1) * self.chunk:
            num = math.ceil((self.mel_chunks_done + 1) * self.chunk / self.stride)
            mel = self._prefix_mel(num, continues=True)
            lo, hi = self.mel_chunks_done * self.chunk, (self.mel_chunks_done + 1) * self.chunk
            self.mel = torch.cat([self.mel, mel[..., lo:hi]], dim=-1)
            self.mel_chunks_done += 1
            self._advance_source(self.mel.shape[-1] - self.f0_radius)
            upto = min(self.source.shape[-1] // self.hop, self.mel.shape[-1]) - self.voc_radius
            pieces.append(self._emit(upto))
        return torch.cat(pieces) if pieces else torch.zeros(0, device=self.model.device)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """End of the phrase: decode the remaining frames and return the remaining samples."""
        if self.finished:
            return torch.zeros(0, device=self.model.device)
        self.finished = True
        if not self.frames:
            raise ValueError("no code frames were pushed: nothing to decode")
        total = int(self.model.decoder.dconv1.output_lengths(torch.tensor(len(self.frames))))
        if total != self.mel.shape[-1]:
            mel = self._prefix_mel(len(self.frames), continues=False)
            # Frames not yet turned into sound take the exact values. Only when the phrase ended exactly where the
            # last chunk had assumed a continuation (its length a multiple of the chunk) were some of that chunk's
            # frames already vocoded from the assumption.
            keep = min(self.mel.shape[-1], self.emitted_frames) if total < self.mel.shape[-1] else self.mel.shape[-1]
            self.mel = torch.cat([self.mel[..., :keep], mel[..., keep:total]], dim=-1)
            self._rewind_source(min(keep, self.source.shape[-1] // self.hop))
        self._advance_source(total)
        return self._emit(total)


__all__ = [
    "BaichuanAudioCode2Wav",
    "BaichuanAudioCode2WavPreTrainedModel",
    "BaichuanAudioCode2WavOutput",
    "BaichuanAudioStreamingDecoder",
]
