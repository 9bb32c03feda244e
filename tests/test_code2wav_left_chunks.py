"""The bounded-context policy of the U-Net's chunk mask: ``flow_matching_config.num_decoding_left_chunks``.

``-1`` (the default, the original) lets a static chunk attend to every earlier chunk; ``n >= 0`` to the ``n``
before it only (CosyVoice's ``num_decoding_left_chunks``). Checked against independent expectations:

* the mask against a mask written out pair by pair from the definition;
* the one-shot decode's chunk-by-chunk attention (the default single-segment path) against the masked attention over
  every frame pair (``chunked_attention = False``, the padded-batch path), with the same ``n``;
* the streamed mel (incremental decoder, phrase statistics) against the one-shot mel with the same ``n``, and the
  streamed keys / values held per attention layer: ``n`` chunks whatever the phrase length;
* ``n`` at least the phrase's chunk count gives the default's decode exactly (the same key sets); a smaller ``n``
  does not (a test that the policy does something).

Tolerances: 2e-6 on the mel (|mel| ~4.5; two fp32 attention orders give ~5e-7, one ulp, measured), 1e-6 on the
waveform (measured 4e-8), as ``test_code2wav_streaming.py``'s incremental == reference test on the same tiny model.
"""

from __future__ import annotations

import pytest
import torch
from code2wav_helpers import code2wav_one_thread  # noqa: F401  (autouse fixture)
from huggingface_hub.errors import StrictDataclassClassValidationError

from transformers_baichuan_audio.configuration import BaichuanAudioConfig, BaichuanAudioFlowMatchingConfig
from transformers_baichuan_audio.modeling.code2wav import BaichuanAudioCode2Wav
from transformers_baichuan_audio.modeling.layers import build_attention_mask
from transformers_baichuan_audio.modeling.vocoder import NSFSourceDraws

FRAMES = 124  # 496 mel frames: 5 U-Net chunks of 100, the last one short
STEPS = 2
MEL_TOL = 2e-6


@pytest.fixture(scope="module")
def tiny_model() -> BaichuanAudioCode2Wav:
    torch.manual_seed(0)
    return BaichuanAudioCode2Wav(BaichuanAudioConfig.tiny().code2wav_config).eval()


@pytest.fixture(scope="module")
def phrase(tiny_model):
    g = torch.Generator().manual_seed(0)
    codes = torch.stack([torch.randint(0, s, (FRAMES,), generator=g) for s in tiny_model.config.codebook_sizes], 1)
    noise = torch.randn(1, tiny_model.config.flow_matching_config.in_channels, 4 * FRAMES, generator=g)
    samples = (4 * FRAMES - 1) * tiny_model.config.vocoder_config.hop_length
    draws = NSFSourceDraws.sample(1, tiny_model.vocoder.m_source.num_harmonics, samples, g)
    return codes, noise, draws


@pytest.fixture
def left_chunks(tiny_model):
    """Sets ``num_decoding_left_chunks`` on the model's config; restores the default afterwards."""
    fm = tiny_model.config.flow_matching_config

    def set_left(n: int) -> None:
        fm.num_decoding_left_chunks = n

    yield set_left
    fm.num_decoding_left_chunks = -1


def _decode(model, phrase, chunked: bool = True):
    codes, noise, draws = phrase
    model.estimator.chunked_attention = chunked
    try:
        return model.decode(codes, noise=noise, draws=[draws], num_steps=STEPS)
    finally:
        model.estimator.chunked_attention = True


@pytest.mark.parametrize("left", [-1, 0, 1, 2])
def test_chunk_mask_with_left_chunks_is_the_definition(left):
    chunk, length = 3, 11
    valid = torch.ones(1, length, dtype=torch.bool)
    valid[0, 9:] = False
    mask = build_attention_mask(valid, length, chunk_size=chunk, left_chunks=left)[0, 0]
    for q in range(length):
        row = [
            (k // chunk <= q // chunk) and (left < 0 or k // chunk >= q // chunk - left) and k < 9
            for k in range(length)
        ]
        assert mask[q].tolist() == row, q


@pytest.mark.parametrize("left", [0, 1, 2])
def test_one_shot_chunked_equals_masked_and_differs_from_the_default(tiny_model, phrase, left_chunks, left):
    full = _decode(tiny_model, phrase)
    left_chunks(left)
    chunked, masked = _decode(tiny_model, phrase), _decode(tiny_model, phrase, chunked=False)
    assert (chunked.mel[0] - masked.mel[0]).abs().max() <= MEL_TOL
    # the first n + 1 chunks (100 mel frames each) see the same keys as the default; a later one does not
    same = 100 * (left + 1)
    assert (chunked.mel[0][..., :same] - full.mel[0][..., :same]).abs().max() <= MEL_TOL
    assert (chunked.mel[0][..., same:] - full.mel[0][..., same:]).abs().max() > 1e2 * MEL_TOL


def test_left_chunks_covering_the_phrase_is_the_default(tiny_model, phrase, left_chunks):
    full = _decode(tiny_model, phrase)
    left_chunks(4)  # 5 chunks: the last sees 4 before it, i.e. all of them
    assert torch.equal(_decode(tiny_model, phrase).mel[0], full.mel[0])


@pytest.mark.parametrize(
    ("left", "frames", "first", "later"),
    [
        (0, FRAMES, None, None),
        (2, FRAMES, None, None),
        (1, 100, None, None),
        (1, FRAMES, 10, None),
        (1, FRAMES, 25, 50),
    ],
    ids=["n0", "n2", "n1-ends-on-a-chunk-boundary", "n1-provisional-first-chunk", "n1-two-chunk-passes"],
)
def test_stream_equals_one_shot_with_bounded_state(tiny_model, phrase, left_chunks, left, frames, first, later):
    """Also the two paths that recompute from an earlier cache: a phrase ending exactly on a chunk boundary (its
    last chunk decoded again as the end) and a provisional first chunk (its 4 * 10 - 20 = 20 vocoded mel frames are
    the provisional ones; every later frame must be the one-shot's); and U-Net passes over two chunks at once
    (``chunk_frames=50``: each chunk's keys / values still go to their own ring slot)."""
    codes, noise, draws = phrase
    codes = codes[:frames]
    draws = NSFSourceDraws(draws.phase, draws.noise[..., : (4 * frames - 1) * tiny_model.vocoder.upsample_factor])
    left_chunks(left)
    one_shot = _decode(tiny_model, (codes, noise[..., : 4 * frames], draws))
    stats = tiny_model.groupnorm_statistics(tiny_model.dequantize(codes)[None], torch.tensor([frames]))
    stream = tiny_model.streaming_decoder(
        noise=noise, draws=draws, norm_stats=stats, num_steps=STEPS, first_chunk_frames=first, chunk_frames=later
    )
    rings, chunks = [], []
    for i in range(frames):
        chunks.append(stream.push(codes[i : i + 1]))
        held = {k: v[0] for k, v in stream.cache.past.items() if isinstance(k, tuple) and "ring" in k}
        if held:
            rings.append({k: (ring[0].data_ptr(), ring[0].shape[-2]) for k, ring in held.items()})
    chunks.append(stream.finish())
    # one ring of n + 1 chunks (100 mel frames each) per attention layer and Euler step, allocated once
    assert len(rings) > 2 * 25 and all(r == rings[0] for r in rings)
    assert {room for _, room in rings[0].values()} == {100 * (left + 1)}
    exact_from = 0 if first in (None, 25) else 4 * first - stream.lookahead_frames
    assert (stream.mel[0][..., exact_from:] - one_shot.mel[0][..., exact_from:]).abs().max() <= MEL_TOL
    wave = torch.cat(chunks)
    assert wave.numel() == one_shot.audio_values[0].numel()
    if not exact_from:
        assert (wave - one_shot.audio_values[0]).abs().max() <= 1e-6


@pytest.mark.parametrize("bad", [-2, 1.5, True, "all"])
def test_left_chunks_is_validated(bad):
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="num_decoding_left_chunks"):
        BaichuanAudioFlowMatchingConfig(num_decoding_left_chunks=bad)


def test_left_chunks_round_trips(tmp_path):
    config = BaichuanAudioConfig.tiny()
    config.code2wav_config.flow_matching_config.num_decoding_left_chunks = 2
    config.save_pretrained(tmp_path)
    loaded = BaichuanAudioConfig.from_pretrained(tmp_path)
    assert loaded.code2wav_config.flow_matching_config.num_decoding_left_chunks == 2
