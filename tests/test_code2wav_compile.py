"""The compiled U-Net of code2wav's one-shot decode (``BaichuanAudioCode2Wav.compile_estimator``, issue 24).

``torch.compile`` runs here with a counting backend (dynamo's trace of the graph, run as it is; no inductor, which
costs minutes at real size), so these tests check what the compiled path promises, each against a second code path:

* one graph, captured without a break (``fullgraph=True`` raises on one), serves every phrase length: the backend
  is called once for three lengths (no recompile per length);
* the compiled decode's mel and waveform equal the eager decode's (the single segment's chunk-by-chunk attention
  against the traced masked attention: the same key sets), for a single segment and for a padded batch;
* ``pad_to_multiple_of`` hands the U-Net bucketed lengths and leaves the mel unchanged, also for a two-level U-Net
  (stride-2 resampling);
* the streaming decoder never calls the compiled U-Net.

Tolerances: the mel within 1e-5 (|mel| ~5; two fp32 attention orders over 2 Euler steps, measured ~2e-7), the
waveform within 1e-4 (the vocoder amplifies mel roundoff; same code path after the mel).
"""

from __future__ import annotations

import pytest
import torch
from code2wav_helpers import code2wav_one_thread  # noqa: F401  (autouse: 1 thread, as the other code2wav tests)

from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.modeling.code2wav import BaichuanAudioCode2Wav

STEPS = 2
MEL_TOL, WAVE_TOL = 1e-5, 1e-4


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs dynamo hands it and runs each as traced."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def tiny_code2wav(channels: list[int] | None = None) -> BaichuanAudioCode2Wav:
    config = BaichuanAudioConfig.tiny().code2wav_config
    if channels is not None:
        config.flow_matching_config.channels = channels
    torch.manual_seed(0)
    return BaichuanAudioCode2Wav(config).eval()


def random_codes(model: BaichuanAudioCode2Wav, frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, s, (frames,), generator=g) for s in model.config.codebook_sizes], dim=1)


def decode(model, codes, **kwargs):
    return model.decode(codes, num_steps=STEPS, generator=torch.Generator().manual_seed(7), **kwargs)


def assert_same_decode(got, expected):
    for mel, ref in zip(got.mel, expected.mel, strict=True):
        torch.testing.assert_close(mel, ref, rtol=0, atol=MEL_TOL)
    for wave, ref in zip(got.audio_values, expected.audio_values, strict=True):
        torch.testing.assert_close(wave, ref, rtol=0, atol=WAVE_TOL)


def test_one_graph_serves_every_length_and_matches_eager():
    model = tiny_code2wav()
    lengths = [7, 30, 61]  # 27, 119, 243 mel frames: inside the first chunk, across chunks, a short last chunk
    eager = [decode(model, random_codes(model, n, n)) for n in lengths]
    backend = CountingBackend()
    model.compile_estimator(backend=backend)
    for n, expected in zip(lengths, eager, strict=True):
        assert_same_decode(decode(model, random_codes(model, n, n)), expected)
    assert backend.graphs == 1


def test_padded_batch_matches_eager():
    """The original's padded-batch decode (``batch_invariant=False``): the masked path, with padded frames."""
    model = tiny_code2wav()
    codes = [random_codes(model, 40, 1), random_codes(model, 23, 2)]
    expected = decode(model, codes, batch_invariant=False)
    model.compile_estimator(backend=CountingBackend())
    assert_same_decode(decode(model, codes, batch_invariant=False), expected)


@pytest.mark.parametrize("channels", [None, [32, 32]])
def test_pad_to_multiple_of_buckets_the_lengths_and_keeps_the_mel(channels):
    model = tiny_code2wav(channels)
    codes = random_codes(model, 30, 3)  # 119 mel frames
    expected = decode(model, codes)
    compiled = model.compile_estimator(pad_to_multiple_of=64, backend=CountingBackend())
    seen = []

    def spy(x, mask, mu, t):
        seen.append(x.shape[-1])
        return compiled(x, mask, mu, t)

    model.compiled_estimator = spy
    assert_same_decode(decode(model, codes), expected)
    assert seen == [128] * STEPS


def test_streaming_keeps_the_eager_estimator():
    model = tiny_code2wav()
    backend = CountingBackend()
    model.compile_estimator(backend=backend)
    stream = model.streaming_decoder(num_steps=STEPS, generator=torch.Generator().manual_seed(7))
    codes = random_codes(model, 30, 4)
    samples = sum(stream.push(codes[i : i + 1]).numel() for i in range(codes.shape[0])) + stream.finish().numel()
    assert samples == (4 * 30 - 1) * model.config.vocoder_config.hop_length
    assert backend.graphs == 0


def test_going_back_to_eager_and_validation():
    model = tiny_code2wav()
    codes = random_codes(model, 12, 5)
    expected = decode(model, codes)
    backend = CountingBackend()
    model.compile_estimator(backend=backend)
    model.compiled_estimator = None
    torch.testing.assert_close(decode(model, codes).mel[0], expected.mel[0], rtol=0, atol=0)
    assert backend.graphs == 0
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="pad_to_multiple_of"):
            model.compile_estimator(pad_to_multiple_of=bad)
