"""HiFT vocoder of code2wav (CosyVoice 2 style neural-source-filter + iSTFT generator): mel (50 fps) -> 24 kHz.

Pipeline (as the original ``HiFTGenerator.forward``):

1. F0 predictor: 5 x (k=3 conv + ELU) then a linear classifier, ``|.|`` -> f0 in Hz per mel frame;
2. NSF source: f0 repeated to the sample rate (``hop_length`` samples per frame), harmonics ``k * f0`` integrated
   into a phase by a running sum over ALL samples (``2 pi (cumsum(k f0 / sr) mod 1)``) plus a random initial phase
   per harmonic (0 for the fundamental), ``sine_amp * sin`` on voiced samples plus Gaussian noise, merged by a
   linear layer + tanh into one excitation signal;
3. generator: conv_pre, ``len(upsample_rates)`` x (LeakyReLU, transposed conv, + downsampled source STFT features
   through resblocks, mean of the multi-receptive-field resblocks with Snake activations), conv_post ->
   log-magnitude and phase of an ``istft_n_fft`` STFT with hop ``istft_hop_length``, iSTFT, clamp to
   ``+-audio_limit``.

The random draws of the NSF source (initial phases, Gaussian noise) can be injected, or drawn from a
``torch.Generator``; with neither, they come from the global RNG in the original's order (phase, then noise).
Weight norm is folded into plain weights at conversion time (see ``conversion.code2wav_weights``).

The vocoder is not causal: each output sample depends on at most ``receptive_field_frames()`` mel frames on both
sides, and the source phase on every earlier sample; the streaming decoder of :mod:`.code2wav` carries the phase sum
(:meth:`NSFSource.forward` ``phase_carry``) and decodes windows with that much context.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class Snake(nn.Module):
    """Snake activation ``x + sin(alpha x)^2 / alpha`` with a per-channel ``alpha`` (linear scale)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        scale = 1.0 / (alpha + 1e-9)
        if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
            return x + scale * torch.sin(x * alpha).pow(2)
        # Inference: the same operations in the same order (bit-identical) on one buffer instead of four fresh
        # ones. On the project's CPU the temporaries of a vocoder window (2.9 MB each) made the Snakes ~0.6 s of
        # a 6.3 s first streamed chunk; the first chunk took 5.08 s against 5.61 s (means of 3 alternating pairs).
        out = x * alpha
        return out.sin_().pow_(2).mul_(scale).add_(x)


class HiFTResBlock(nn.Module):
    """Residual block: for each dilation ``x + conv2(snake(conv1_d(snake(x))))``."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            [
                nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_padding(kernel_size, d))
                for d in dilations
            ]
        )
        self.convs2 = nn.ModuleList(
            [nn.Conv1d(channels, channels, kernel_size, padding=_padding(kernel_size)) for _ in dilations]
        )
        self.activations1 = nn.ModuleList([Snake(channels) for _ in dilations])
        self.activations2 = nn.ModuleList([Snake(channels) for _ in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = conv2(act2(conv1(act1(x)))) + x
        return x


class BaichuanAudioF0Predictor(nn.Module):
    """``ConvRNNF0Predictor``: mel (B, n_mels, T) -> f0 (B, T) in Hz (despite the name, no recurrence)."""

    def __init__(self, in_channels: int, cond_channels: int, num_class: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.condnet(mel).transpose(1, 2)
        return torch.abs(self.classifier(x).squeeze(-1))


class NSFSourceDraws:
    """The random draws of the NSF source: ``phase`` (B, H+1, 1) ~ U(-pi, pi) as sampled (the fundamental's row is
    zeroed when used) and ``noise`` (B, H+1, samples) ~ N(0, 1) before scaling by the voiced/unvoiced amplitude."""

    def __init__(self, phase: torch.Tensor, noise: torch.Tensor):
        self.phase = phase
        self.noise = noise

    @classmethod
    def sample(cls, batch: int, harmonics: int, samples: int, generator=None, device=None) -> NSFSourceDraws:
        low, high = torch.tensor(-math.pi), torch.tensor(math.pi)
        rand = torch.rand((batch, harmonics, 1), generator=generator, device=device)
        phase = low.to(rand.device) + rand * (high - low).to(rand.device)
        noise = torch.randn((batch, harmonics, samples), generator=generator, device=device)
        return cls(phase, noise)

    @classmethod
    def zeros(cls, batch: int, harmonics: int, samples: int, device=None) -> NSFSourceDraws:
        return cls(
            torch.zeros(batch, harmonics, 1, device=device), torch.zeros(batch, harmonics, samples, device=device)
        )


class NSFSource(nn.Module):
    """Harmonic-plus-noise source (``SourceModuleHnNSF`` + ``SineGen``): f0 per sample -> excitation per sample."""

    def __init__(self, config):
        super().__init__()
        self.sampling_rate = config.sampling_rate
        self.num_harmonics = config.nb_harmonics + 1
        self.sine_amp = config.nsf_alpha
        self.noise_std = config.nsf_sigma
        self.voiced_threshold = config.nsf_voiced_threshold
        self.l_linear = nn.Linear(self.num_harmonics, 1)

    def harmonic_increments(self, f0: torch.Tensor) -> torch.Tensor:
        """f0 (B, N) -> per-sample phase increments in cycles (B, H+1, N): ``f0 * k / sr``."""
        k = torch.arange(1, self.num_harmonics + 1, device=f0.device, dtype=f0.dtype)
        return f0[:, None, :] * k[None, :, None] / self.sampling_rate

    def forward(
        self, f0: torch.Tensor, draws: NSFSourceDraws, phase_carry: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """f0 (B, N) per sample -> (excitation (B, N), running phase sum (B, H+1) float64 for the next call).

        ``phase_carry`` continues the running sum of a previous call (streaming); the sum is accumulated in float64,
        which is what torch's CPU float32 ``cumsum`` does internally, so split calls give the same numbers.
        """
        inc = self.harmonic_increments(f0)
        if phase_carry is None:
            cum = torch.cumsum(inc.double(), dim=-1)
        else:
            cum = torch.cumsum(torch.cat([phase_carry[..., None], inc.double()], dim=-1), dim=-1)[..., 1:]
        new_carry = cum[..., -1] if cum.shape[-1] else phase_carry
        theta = 2 * math.pi * (cum.to(f0.dtype) % 1)
        phase = draws.phase.to(f0.dtype).clone()
        phase[:, 0, :] = 0
        sine = self.sine_amp * torch.sin(theta + phase)
        uv = (f0 > self.voiced_threshold).to(f0.dtype)[:, None, :]
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        sine = sine * uv + noise_amp * draws.noise.to(f0.dtype)
        excitation = torch.tanh(self.l_linear(sine.transpose(1, 2))).squeeze(-1)
        return excitation, new_carry


class BaichuanAudioHiFTVocoder(nn.Module):
    """HiFT generator with the F0 predictor; ``config`` is a :class:`BaichuanAudioVocoderConfig`."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        base = config.base_channels
        n_fft, self.hop = config.istft_n_fft, config.istft_hop_length
        self.n_fft = n_fft
        self.upsample_factor = config.hop_length
        self.num_kernels = len(config.resblock_kernel_sizes)
        self.f0_predictor = BaichuanAudioF0Predictor(
            config.in_channels, config.f0_predictor_cond_channels, config.f0_predictor_num_class
        )
        self.m_source = NSFSource(config)
        self.conv_pre = nn.Conv1d(config.in_channels, base, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            [
                nn.ConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, padding=(k - u) // 2)
                for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))
            ]
        )
        down_rates = [1] + list(config.upsample_rates[::-1][:-1])
        cum_rates = [math.prod(down_rates[: i + 1]) for i in range(len(down_rates))]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(
            zip(cum_rates[::-1], config.source_resblock_kernel_sizes, config.source_resblock_dilation_sizes)
        ):
            ch = base // 2 ** (i + 1)
            if u == 1:
                self.source_downs.append(nn.Conv1d(n_fft + 2, ch, 1, 1))
            else:
                self.source_downs.append(nn.Conv1d(n_fft + 2, ch, u * 2, u, padding=u // 2))
            self.source_resblocks.append(HiFTResBlock(ch, k, d))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            ch = base // 2 ** (i + 1)
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(HiFTResBlock(ch, k, d))
        self.conv_post = nn.Conv1d(ch, n_fft + 2, 7, 1, padding=3)
        self.register_buffer("stft_window", self.make_window(n_fft), persistent=False)

    @staticmethod
    def make_window(n_fft: int) -> torch.Tensor:
        """Periodic Hann window computed in float64 (as scipy's ``get_window``) and stored in float32."""
        return torch.hann_window(n_fft, periodic=True, dtype=torch.float64).float()

    # ------------------------------------------------------------------------------------------------ pieces
    def predict_f0(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, n_mels, T) -> f0 (B, T) in Hz."""
        return self.f0_predictor(mel)

    def upsample_f0(self, f0: torch.Tensor) -> torch.Tensor:
        """f0 per frame (B, T) -> per sample (B, T * hop_length) (nearest)."""
        return F.interpolate(f0[:, None], scale_factor=float(self.upsample_factor), mode="nearest")[:, 0]

    def source(
        self,
        f0: torch.Tensor,
        generator: torch.Generator | None = None,
        draws: NSFSourceDraws | None = None,
    ) -> torch.Tensor:
        """f0 per frame (B, T) -> NSF excitation (B, T * hop_length)."""
        f0_samples = self.upsample_f0(f0)
        if draws is None:
            draws = NSFSourceDraws.sample(
                f0.shape[0], self.m_source.num_harmonics, f0_samples.shape[-1], generator, f0.device
            )
        return self.m_source(f0_samples, draws)[0]

    def _stft(self, x: torch.Tensor) -> torch.Tensor:
        window = self.stft_window.to(x.device, x.dtype)
        spec = torch.view_as_real(torch.stft(x, self.n_fft, self.hop, self.n_fft, window=window, return_complex=True))
        return torch.cat([spec[..., 0], spec[..., 1]], dim=1)

    def _istft(self, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        magnitude = torch.clip(magnitude, max=1e2)
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        window = self.stft_window.to(magnitude.device, magnitude.dtype)
        return torch.istft(spec, self.n_fft, self.hop, self.n_fft, window=window)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel (B, n_mels, T) and excitation (B, T * hop_length) -> waveform (B, T * hop_length)."""
        s_stft = self._stft(source)
        x = self.conv_pre(mel)
        n_up = len(self.ups)
        for i in range(n_up):
            x = F.leaky_relu(x, self.config.lrelu_slope)
            x = self.ups[i](x)
            if i == n_up - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            xs = self.resblocks[i * self.num_kernels](x)
            for j in range(1, self.num_kernels):
                xs = xs + self.resblocks[i * self.num_kernels + j](x)
            x = xs / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))
        half = self.n_fft // 2 + 1
        wave = self._istft(torch.exp(x[:, :half]), torch.sin(x[:, half:]))
        limit = self.config.audio_limit
        return torch.clamp(wave, -limit, limit)

    def forward(
        self,
        mel: torch.Tensor,
        source: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        draws: NSFSourceDraws | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mel (B, n_mels, T) -> (waveform (B, T * hop), f0 (B, T), excitation (B, T * hop)).

        ``source`` replaces the NSF excitation; otherwise it is built from ``draws`` / ``generator``.
        """
        f0 = self.predict_f0(mel)
        if source is None:
            source = self.source(f0, generator=generator, draws=draws)
        return self.decode(mel, source), f0, source

    def receptive_field_frames(self) -> int:
        """Mel frames of context on each side that the samples of a mel frame depend on in :meth:`decode` (through
        the mel or the excitation): :meth:`reach_frames` rounded up. A window of the mel (and excitation) with this
        many frames beyond both ends of a span gives that span's samples as the whole input does (up to roundoff)."""
        return math.ceil(max(self.reach_frames()))

    def reach_frames(self) -> tuple[float, float]:
        """(left, right): how far, in mel frames, an output sample of :meth:`decode` depends on its inputs, the
        larger of its reach into the mel and into the excitation; exact, from the layers' kernels, strides, dilations
        and paddings (each layer maps an output position to an interval of input positions, and the intervals of a
        chain add up)."""
        rates = [1]  # samples per mel frame after conv_pre and after each upsampling
        for up in self.ups:
            rates.append(rates[-1] * up.stride[0])
        sample_rate = rates[-1] * self.hop
        # the tail: conv_post on the last rate, then the iSTFT (centred: output sample n gets frames k with
        # k * hop - n_fft // 2 <= n < k * hop - n_fft // 2 + n_fft)
        post = _conv_reach(self.conv_post, rates[-1])
        istft = ((self.n_fft - self.n_fft // 2 - 1) / sample_rate, (self.n_fft // 2) / sample_rate)
        after = _add(post, istft)  # reach of the output into the output of the current stage
        stft = istft[::-1]  # source STFT, centred: frame k gets samples k * hop - n_fft // 2 + [0, n_fft)
        through_source = []
        for i in reversed(range(len(self.ups))):
            rate = rates[i + 1]
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            after = _add(after, tuple(max(side) for side in zip(*(_resblock_reach(b, rate) for b in blocks))))
            # the source branch joins here: source STFT (frames at the last rate), downsampling, resblock
            source = _add(stft, _conv_reach(self.source_downs[i], rates[-1]))
            through_source.append(_add(after, _add(source, _resblock_reach(self.source_resblocks[i], rate))))
            up = self.ups[i]  # transposed conv: output j gets inputs i with j + p - k + 1 <= stride * i <= j + p
            k, p = up.kernel_size[0], up.padding[0]
            after = _add(after, ((k - 1 - p) / rate, p / rate))
            if i == len(self.ups) - 1:  # the reflection pad (1, 0): output m is input m - 1
                after = _add(after, (1 / rate, -1 / rate))
        through_mel = _add(after, _conv_reach(self.conv_pre, 1))
        return tuple(max(side) for side in zip(through_mel, *through_source))


def _add(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] + b[0], a[1] + b[1]


def _conv_reach(conv: nn.Conv1d, input_rate: int) -> tuple[float, float]:
    """(left, right) reach in mel frames of a Conv1d's output into its input (at ``input_rate`` samples per frame):
    output o gets inputs ``o * stride - padding + dilation * [0, kernel - 1]``."""
    reach = conv.dilation[0] * (conv.kernel_size[0] - 1)
    return conv.padding[0] / input_rate, (reach - conv.padding[0]) / input_rate


def _resblock_reach(block: HiFTResBlock, rate: int) -> tuple[float, float]:
    """Reach of a residual block (its convs in a chain; the residual path reaches nowhere)."""
    total = (0.0, 0.0)
    for c1, c2 in zip(block.convs1, block.convs2):
        total = _add(total, _add(_conv_reach(c1, rate), _conv_reach(c2, rate)))
    return total


__all__ = [
    "BaichuanAudioHiFTVocoder",
    "BaichuanAudioF0Predictor",
    "HiFTResBlock",
    "NSFSource",
    "NSFSourceDraws",
    "Snake",
]
