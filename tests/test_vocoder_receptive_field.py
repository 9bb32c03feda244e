"""The vocoder's receptive field (``BaichuanAudioHiFTVocoder.reach_frames`` / ``receptive_field_frames``), which sets
the streaming decoder's vocoder windows and lookahead, against two independent expectations, for the released
vocoder's layout, the original constructor's defaults (two 8x stages) and an odd layout (even kernels, 2 stages of
4x and 3x, other dilations, a different iSTFT):

* perturbation: in float64 with random weights every dependency is generically non-zero, so the samples that change
  when one mel frame (or one excitation sample) changes show the true reach: it must lie within the computed one and
  less than a frame inside it (the bound is tight);
* windows: decoding a window with ``receptive_field_frames()`` frames of context on each side gives the span's
  samples as the whole input does (float64: within 1e-12; measured ~1e-16), and 5 frames less does not (> 1e-9):
  the context matters. (One frame less is still within 1e-13 here: the reach's last taps carry products of many
  small random weights, so only the perturbation test shows them.)
"""

from __future__ import annotations

import pytest
import torch

from transformers_baichuan_audio.configuration import BaichuanAudioVocoderConfig
from transformers_baichuan_audio.modeling.vocoder import BaichuanAudioHiFTVocoder

SMALL = {"base_channels": 32, "f0_predictor_cond_channels": 16, "audio_limit": 1e9}  # no clamp: every change shows
LAYOUTS = {
    "released": {},
    "original_defaults": {
        "upsample_rates": [8, 8],
        "upsample_kernel_sizes": [16, 16],
        "source_resblock_kernel_sizes": [7, 11],
        "source_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    },
    "odd": {
        "upsample_rates": [4, 3],
        "upsample_kernel_sizes": [8, 7],
        "istft_n_fft": 8,
        "istft_hop_length": 2,
        "resblock_kernel_sizes": [3, 5],
        "resblock_dilation_sizes": [[1, 2], [2, 3]],
        "source_resblock_kernel_sizes": [5, 3],
        "source_resblock_dilation_sizes": [[1, 4], [1]],
    },
}
FRAMES = 70


def vocoder(layout: str) -> BaichuanAudioHiFTVocoder:
    torch.manual_seed(0)
    config = BaichuanAudioVocoderConfig(**SMALL, **LAYOUTS[layout])
    return BaichuanAudioHiFTVocoder(config).double().eval()


def inputs(model: BaichuanAudioHiFTVocoder) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(1, model.config.in_channels, FRAMES, generator=g, dtype=torch.float64)
    source = 0.1 * torch.randn(1, FRAMES * model.upsample_factor, generator=g, dtype=torch.float64)
    return mel, source


def changed_span(before: torch.Tensor, after: torch.Tensor, hop: int) -> tuple[float, float]:
    """(first, end) positions in mel frames of the samples that differ."""
    index = ((after - before)[0].abs() > 0).nonzero()[:, 0]
    return index.min().item() / hop, (index.max().item() + 1) / hop


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reach_bounds_the_perturbation_tightly(layout):
    model = vocoder(layout)
    hop = model.upsample_factor
    left, right = model.reach_frames()
    mel, source = inputs(model)
    frame = FRAMES // 2
    with torch.no_grad():
        base = model.decode(mel, source)
        moved = mel.clone()
        moved[..., frame] += 1.0
        first, end = changed_span(base, model.decode(moved, source), hop)
        # samples of frame f sit at positions [f, f + 1): frame `frame` reaches [frame - right, frame + 1 + left)
        mel_reach = (frame - first, end - frame - 1)
        sample = frame * hop + hop // 3
        moved = source.clone()
        moved[0, sample] += 1.0
        first, end = changed_span(base, model.decode(mel, moved), hop)
        source_reach = (sample / hop - first, end - (sample + 1) / hop)
    true_reach = max(*mel_reach, *source_reach)
    assert true_reach <= max(left, right) + 1e-9
    assert true_reach > max(left, right) - 1


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_window_with_the_receptive_field_gives_the_whole_inputs_samples(layout):
    model = vocoder(layout)
    hop, radius = model.upsample_factor, model.receptive_field_frames()
    mel, source = inputs(model)
    start, stop = radius + 3, FRAMES - radius - 3
    with torch.no_grad():
        whole = model.decode(mel, source)[0, start * hop : stop * hop]
        errors = []
        for context in (radius, radius - 5):
            lo, hi = start - context, stop + context
            window = model.decode(mel[..., lo:hi], source[:, lo * hop : hi * hop])
            errors.append((window[0, (start - lo) * hop : (stop - lo) * hop] - whole).abs().max().item())
    assert errors[0] <= 1e-12
    assert errors[1] > 1e-9
