"""Audio front end: log-mel / resampling parity with the original (tiny-a `frontend` fixture), length formulas,
splitting rule, input conventions and errors, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transformers_baichuan_audio.processing.feature_extraction import (
    BaichuanAudioFeatureExtractor,
    bridge_length,
    encoder_length,
    mel_frames,
    num_audio_frames,
    resample,
    resampled_length,
    split_lengths,
    split_waveform,
)

SR = 16000


@pytest.fixture(scope="module")
def extractor() -> BaichuanAudioFeatureExtractor:
    return BaichuanAudioFeatureExtractor()


@pytest.fixture(scope="module")
def frontend(reference_fixture):
    return reference_fixture.expected("frontend")


@pytest.mark.parametrize("clip", ["short", "long"])
def test_log_mel_matches_original(reference_fixture, frontend, extractor, clip):
    wav, sr = reference_fixture.input_wav(clip)
    out = extractor(wav, sampling_rate=sr)
    assert torch.equal(out["encoder_length"], frontend[f"{clip}.encoder_length"])
    assert torch.equal(out["bridge_length"], frontend[f"{clip}.bridge_length"])
    assert out["audio_pieces"].tolist() == [len(out["encoder_length"])]
    feats = out["input_features"]
    for i, frames in enumerate(out["feature_length"].tolist()):
        ref = frontend[f"{clip}.mel.{i}"]
        assert frames == ref.shape[1]
        # Tolerance 1e-5 (issue bar); the same torch ops as the original give ~0 in practice.
        torch.testing.assert_close(feats[i, :, :frames], ref, rtol=0, atol=1e-5)
        assert torch.all(feats[i, :, frames:] == 0), "collation pads with zeros"
    assert feats.shape[-1] == max(out["feature_length"].tolist())


def test_resample_matches_original(frontend):
    # torchaudio 2.4 resample(48000 -> 16000, lowpass_filter_width=128) recorded by the fixture; 1e-5 bar, we get
    # float32 roundoff (~1e-7) because the filter bank is computed in float32 as torchaudio does.
    got = resample(frontend["resample.input"], 48000, 16000)
    assert got.shape == frontend["resample.output"].shape
    torch.testing.assert_close(got, frontend["resample.output"], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("orig", "new"), [(22050, 16000), (8000, 16000), (44100, 16000)])
def test_resample_band_limited_sine(orig, new):
    # Independent expectation: a 440 Hz sine (far below both Nyquist rates) resampled = the sine sampled at the new
    # rate. Away from the edges only the filter's passband ripple and stopband leakage remain (< 1e-3).
    n = orig // 2
    t = np.arange(n) / orig
    wav = torch.from_numpy(np.sin(2 * math.pi * 440 * t).astype(np.float32))
    out = resample(wav, orig, new)
    assert out.shape[-1] == resampled_length(n, orig, new) == math.ceil(n * new / orig)
    t_new = np.arange(out.shape[-1]) / new
    expected = np.sin(2 * math.pi * 440 * t_new)
    edge = new // 50
    assert np.abs(out.numpy()[edge:-edge] - expected[edge:-edge]).max() < 1e-3
    assert torch.equal(resample(wav, orig, orig), wav)


def test_length_formulas():
    # reference-architecture.md: 1 s -> 101 mel frames -> 51 encoder frames -> 12 tokens; 30 s -> 3000 -> 1500 -> 375.
    assert mel_frames(SR) == 101 and encoder_length(101) == 51 and bridge_length(51) == 12
    assert mel_frames(30 * SR) == 3000 and encoder_length(3000) == 1500 and bridge_length(1500) == 375
    assert mel_frames(45 * SR) == 3000  # capped at one piece
    assert num_audio_frames(SR) == 12
    assert num_audio_frames(30 * SR) == 375
    # (L - 1) // 2 + 1 for every L (conv stem k=3, pad=1, stride 2)
    for frames in range(1, 50):
        assert encoder_length(frames) == (frames - 1) // 2 + 1


@pytest.mark.parametrize(
    ("seconds", "pieces"),
    [
        (0.1, [1600]),
        (29.9, [478400]),
        (30.0, [480000]),
        (30.1, [480000, 1600]),
        (65.0, [480000, 480000, 80000]),
    ],
)
def test_split_rule(seconds, pieces):
    n = round(seconds * SR)
    ranges = split_lengths(n)
    assert [end - start for start, end in ranges] == pieces
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    wav = np.arange(n, dtype=np.float32)
    assert np.array_equal(np.concatenate(split_waveform(wav)), wav)
    # tokens = sum over pieces of ((min(3000, s // 160 + 1) - 1) // 2 + 1) // 4, written out independently
    expected = sum(((min(3000, s // 160 + 1) - 1) // 2 + 1) // 4 for s in pieces)
    assert num_audio_frames(n) == expected


def test_split_drops_short_tail_and_supports_overlap():
    assert split_lengths(30 * SR + 399) == [(0, 480000)]  # tail shorter than n_fft dropped
    assert split_lengths(30 * SR + 400) == [(0, 480000), (480000, 480400)]
    assert split_lengths(399) == []
    # overlap of 1 s: each later piece starts 1 s before the previous end
    assert split_lengths(70 * SR, overlap=1.0) == [(0, 480000), (464000, 944000), (928000, 1120000)]


def test_batch_layout_and_frame_count(reference_fixture, extractor):
    short, _ = reference_fixture.input_wav("short")
    long, _ = reference_fixture.input_wav("long")
    out = extractor([long, short], sampling_rate=SR)
    assert out["audio_pieces"].tolist() == [2, 1]
    assert out["encoder_length"].tolist() == [1500, 629, 940]
    assert out["feature_length"].tolist() == [3000, 1257, 1879]
    assert out["input_features"].shape == (3, 128, 3000)
    assert out["bridge_length"][:2].sum().item() == extractor.num_audio_frames(len(long)) == num_audio_frames(len(long))
    assert out["bridge_length"][2].item() == extractor.num_audio_frames(len(short))
    single = extractor(short, sampling_rate=SR)
    torch.testing.assert_close(out["input_features"][2, :, :1879], single["input_features"][0], rtol=0, atol=0)


def test_dtypes_and_channels(extractor):
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(SR) * 3000).astype(np.int16)
    as_float = pcm.astype(np.float32) / 32768.0
    ref = extractor(as_float, sampling_rate=SR)["input_features"]
    torch.testing.assert_close(extractor(pcm, sampling_rate=SR)["input_features"], ref, rtol=0, atol=0)
    torch.testing.assert_close(extractor(torch.from_numpy(as_float), sampling_rate=SR)["input_features"], ref)
    torch.testing.assert_close(extractor(as_float.astype(np.float64), sampling_rate=SR)["input_features"], ref)
    # stereo (channels, samples) and (samples, channels): the mean of the channels
    other = as_float[::-1].copy()
    mean = extractor((as_float + other) / 2, sampling_rate=SR)["input_features"]
    stereo = np.stack([as_float, other])
    torch.testing.assert_close(extractor(stereo, sampling_rate=SR)["input_features"], mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(extractor(stereo.T, sampling_rate=SR)["input_features"], mean, rtol=0, atol=1e-6)
    # more than 2 channels: averaged too (documented choice; the original asserts <= 2)
    three = np.stack([as_float, other, np.zeros_like(as_float)])
    mean3 = extractor(three.mean(0), sampling_rate=SR)["input_features"]
    torch.testing.assert_close(extractor(three, sampling_rate=SR)["input_features"], mean3, rtol=0, atol=1e-6)


def test_other_sampling_rate_is_resampled(extractor):
    rng = np.random.default_rng(1)
    wav48 = (rng.standard_normal(48000 * 2) * 0.1).astype(np.float32)
    out = extractor(wav48, sampling_rate=48000)
    wav16 = resample(torch.from_numpy(wav48), 48000, 16000).numpy()
    ref = extractor(wav16, sampling_rate=SR)
    torch.testing.assert_close(out["input_features"], ref["input_features"], rtol=0, atol=0)
    assert out["bridge_length"].sum().item() == extractor.num_audio_frames(len(wav48), sampling_rate=48000)


@pytest.mark.parametrize(
    ("clip", "error", "match"),
    [
        (np.zeros(0, dtype=np.float32), ValueError, "empty"),
        (np.array([0.0, np.nan] * 1000, dtype=np.float32), ValueError, "NaN"),
        (np.array([0.0, np.inf] * 1000, dtype=np.float32), ValueError, "NaN or infinite"),
        (np.zeros(2000, dtype=np.complex64), TypeError, "dtype"),
        (np.zeros(2000, dtype=bool), TypeError, "dtype"),
        (np.zeros((1, 2, 2000), dtype=np.float32), ValueError, "1-D"),
        (np.zeros(959, dtype=np.float32), ValueError, "too short"),
        ("audio.wav", TypeError, "numpy"),
    ],
)
def test_bad_inputs(extractor, clip, error, match):
    with pytest.raises(error, match=match):
        extractor(clip, sampling_rate=SR)


def test_bad_call_arguments(extractor):
    with pytest.raises(ValueError, match="sampling_rate"):
        extractor(np.zeros(2000, dtype=np.float32))
    with pytest.raises(ValueError, match="no audio"):
        extractor([], sampling_rate=SR)
    # 960 samples is the shortest clip with one code frame (mel 7 -> encoder 4 -> 1 frame)
    assert extractor(np.zeros(960, dtype=np.float32), sampling_rate=SR)["bridge_length"].tolist() == [1]
    # a clip that resamples to nothing usable is rejected after resampling
    with pytest.raises(ValueError, match="too short"):
        extractor(np.ones(100, dtype=np.float32), sampling_rate=48000)


def test_save_load_round_trip(tmp_path, extractor):
    custom = BaichuanAudioFeatureExtractor(max_audio_seconds=10, split_overlap=0.5)
    custom.save_pretrained(tmp_path)
    loaded = BaichuanAudioFeatureExtractor.from_pretrained(tmp_path)
    assert isinstance(loaded, BaichuanAudioFeatureExtractor)
    assert (loaded.max_audio_seconds, loaded.split_overlap, loaded.feature_size) == (10, 0.5, 128)
    np.testing.assert_array_equal(loaded.mel_filters, custom.mel_filters)
    wav = np.random.default_rng(2).standard_normal(25 * SR).astype(np.float32) * 0.1
    a, b = custom(wav, sampling_rate=SR), loaded(wav, sampling_rate=SR)
    assert a["audio_pieces"].tolist() == [3]
    for key in a:
        assert torch.equal(a[key], b[key])
