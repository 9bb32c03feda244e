"""Code2wav parity with the ORIGINAL implementation (fixture ``tiny-a``), weight conversion, batching, bad input.

The original weights are loaded through :func:`convert_original_code2wav_weights` and every stage is compared with
the original's recorded tensors in fp32. Tolerances: the fixture README measured a float spread of ~1e-6 between
equivalent fp32 executions of the original itself, so 1e-4 (mel, hidden states) leaves two orders of margin while
still catching any semantic error (those show up at >= 1e-2). The vocoder amplifies mel roundoff through its NSF
phase (a running sum over all samples), so it is compared from the recorded ``mel_in`` and NSF draws (<= 1e-3).
"""

from __future__ import annotations

import pytest
import torch
from code2wav_helpers import code2wav_one_thread, load_fixture_code2wav  # noqa: F401  (autouse fixture)

from transformers_baichuan_audio.conversion.code2wav_weights import (
    Code2WavConversionError,
    convert_original_code2wav_weights,
    convert_original_vocoder_weights,
    fold_weight_norm,
)
from transformers_baichuan_audio.modeling.code2wav import BaichuanAudioCode2Wav
from transformers_baichuan_audio.modeling.vocoder import NSFSourceDraws

TOL = 1e-4  # fp32 parity of hidden states / mels (see module docstring)
WAVE_TOL = 1e-3  # vocoder waveform parity from the recorded mel and NSF draws


@pytest.fixture(scope="module")
def loaded(reference_fixture, original_state_dict):
    return load_fixture_code2wav(reference_fixture, original_state_dict)


@pytest.fixture(scope="module")
def model(loaded) -> BaichuanAudioCode2Wav:
    return loaded[0]


@pytest.fixture(scope="module")
def converted(loaded):
    return loaded[1]


@pytest.fixture(scope="module")
def decode_expected(reference_fixture):
    return reference_fixture.expected("decode")


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------------------------- conversion


def test_conversion_covers_model_and_claims_keys(model, converted, original_state_dict):
    state, consumed = converted
    assert set(state) == set(model.state_dict())  # nothing missing, nothing extra
    prefixes = (
        "audio_tokenizer.audio_decoder.",
        "audio_tokenizer.audio_flow_matching_decoder.",
        "audio_tokenizer.audio_bridge_model.proj_decoder.",
    )
    assert consumed == {k for k in original_state_dict if k.startswith(prefixes)}
    # the RVQ tables are read but left to the audio tokenizer; the saved sinusoid buffers are dropped (regenerated)
    assert not any(".vq_list." in k for k in consumed)
    assert "audio_tokenizer.audio_flow_matching_decoder.prenet.positional_embedding" in consumed
    table = original_state_dict["audio_tokenizer.audio_decoder.positional_embedding"]
    assert torch.equal(model.decoder.positional_embedding, table)


def test_conversion_rejects_unknown_keys(original_state_dict, reference_fixture):
    bad = dict(original_state_dict)
    bad["audio_tokenizer.audio_flow_matching_decoder.conditional_decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(Code2WavConversionError, match="conditional_decoder.extra.weight"):
        convert_original_code2wav_weights(bad)
    voc = dict(reference_fixture.vocoder_state_dict())
    voc["mystery.weight"] = torch.zeros(1)
    with pytest.raises(Code2WavConversionError, match="mystery.weight"):
        convert_original_vocoder_weights(voc)


def test_weight_norm_folding_formula(reference_fixture):
    voc = reference_fixture.vocoder_state_dict()
    for name in ("ups.0", "conv_pre"):  # ConvTranspose1d (in, out, k): norm per INPUT channel; Conv1d per output
        g, v = voc[f"{name}.weight_g"], voc[f"{name}.weight_v"]
        norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        torch.testing.assert_close(fold_weight_norm(g, v), g * v / norm, rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
def test_weight_norm_folding_is_bit_identical_to_legacy_weight_norm():
    """The original vocoder runs the legacy ``torch.nn.utils.weight_norm`` hook before every forward; the folded
    weight must be exactly the weight that hook computes."""
    torch.manual_seed(3)
    for conv in (torch.nn.Conv1d(6, 5, 7), torch.nn.ConvTranspose1d(6, 5, 4)):
        legacy = torch.nn.utils.weight_norm(conv)
        with torch.no_grad():
            legacy.weight_g.mul_(torch.rand_like(legacy.weight_g) + 0.5)
        legacy(torch.randn(1, 6, 9))  # the pre-forward hook recomputes .weight from g and v
        assert torch.equal(fold_weight_norm(legacy.weight_g, legacy.weight_v), legacy.weight)


# --------------------------------------------------------------------------------------------- stage parity


@pytest.mark.parametrize("case", ["tts", "speech40", "batch2"])
def test_decode_stages_match_original(model, decode_expected, case):
    """Original padded-batch semantics (``batch_invariant=False``) stage by stage, with the recorded CFM noise."""
    e = {k.split(".", 1)[1]: v for k, v in decode_expected.items() if k.startswith(case + ".")}
    lengths = e["bridge_length"]
    with torch.no_grad():
        embeds = model.dequantize(e["codes"])
        assert _maxdiff(embeds, e["dequant_proj"]) <= TOL
        padded = torch.nn.utils.rnn.pad_sequence(list(embeds.split(lengths.tolist())), batch_first=True)
        hidden, hidden_lengths = model.decode_hidden(padded, lengths, batch_invariant=False)
        assert hidden_lengths.tolist() == e["length_before_dconv2"].tolist()
        packed = torch.cat([hidden[i, :n] for i, n in enumerate(hidden_lengths.tolist())])
        assert _maxdiff(packed, e["hidden_before_dconv2"]) <= TOL

        mu, _ = model.prior(hidden, hidden_lengths)
        assert _maxdiff(mu, e["prenet_mu"]) <= TOL

        seen = {}

        def record(step, t, x, v_cond, v_uncond):
            seen.setdefault("t", []).append(t)
            seen.setdefault("x", []).append(x)
            if step == 0:
                seen["cond"], seen["uncond"] = v_cond, v_uncond

        mel, mel_lengths = model.flow_matching_mel(hidden, hidden_lengths, noise=e["cfm_noise"], callback=record)
        assert mel_lengths.tolist() == e["flow_mel_length"].tolist()
        assert _maxdiff(torch.stack(seen["t"]), e["euler_t"]) <= 1e-6
        # The original leaves the noise in padded frames; ours are zero there. Only valid frames are ever used.
        for i, n in enumerate(mel_lengths.tolist()):
            assert _maxdiff(mel[i, :, :n].T, e["flow_mel"][i, :n]) <= TOL
        if "est_cond_step0" in e:
            assert _maxdiff(seen["cond"], e["est_cond_step0"]) <= TOL
            assert _maxdiff(seen["uncond"], e["est_uncond_step0"]) <= TOL
            assert _maxdiff(torch.stack(seen["x"]), e["euler_x"]) <= TOL

        refined, coarse, refined_lengths = model.legacy_mel(hidden, hidden_lengths)
        assert refined_lengths.tolist() == e["refined_mel_length"].tolist()
        assert _maxdiff(coarse, e["coarse_mel"]) <= TOL
        assert _maxdiff(refined, e["refined_mel"]) <= TOL


@pytest.mark.parametrize("case", ["seeded", "zero_noise"])
def test_vocoder_matches_original(model, reference_fixture, case):
    e = reference_fixture.expected("vocoder")
    mel = e[f"{case}.mel_in"]
    samples = e[f"{case}.wave"].shape[-1]
    if case == "seeded":
        draws = NSFSourceDraws(e["seeded.sine_phase"], e["seeded.sine_noise_std_normal"])
    else:
        draws = NSFSourceDraws.zeros(1, model.vocoder.m_source.num_harmonics, samples)
    with torch.no_grad():
        wave, f0, source = model.vocode(mel, draws=draws)
        assert _maxdiff(f0, e[f"{case}.f0"]) <= TOL
        assert _maxdiff(source, e[f"{case}.source"][..., 0]) <= TOL
        assert _maxdiff(wave, e[f"{case}.wave"]) <= WAVE_TOL
        # an injected excitation bypasses the NSF source
        wave2, _, _ = model.vocode(mel, source=e[f"{case}.source"][..., 0])
        assert _maxdiff(wave2, e[f"{case}.wave"]) <= WAVE_TOL


def test_vocoder_global_rng_follows_original_draw_order(model, reference_fixture):
    """With no generator and no draws, the NSF draws come from the global RNG in the original's order (the fixture
    recorded ``torch.manual_seed(21)`` before the call)."""
    e = reference_fixture.expected("vocoder")
    torch.manual_seed(int(reference_fixture.meta["vocoder"]["seed"]))
    with torch.no_grad():
        wave, _, _ = model.vocode(e["seeded.mel_in"])
    assert _maxdiff(wave, e["seeded.wave"]) <= WAVE_TOL


# ------------------------------------------------------------------------------------------------ decode API


def test_decode_parity_mode_matches_original_batch(model, decode_expected):
    codes, lengths = decode_expected["batch2.codes"], decode_expected["batch2.bridge_length"].tolist()
    segments = list(codes.split(lengths))
    out = model.decode(segments, noise=decode_expected["batch2.cfm_noise"], batch_invariant=False)
    assert out.mel_lengths.tolist() == decode_expected["batch2.flow_mel_length"].tolist()
    for i, mel in enumerate(out.mel):
        n = mel.shape[-1]
        assert _maxdiff(mel.T, decode_expected["batch2.flow_mel"][i, :n]) <= TOL
        assert out.audio_values[i].shape == (n * model.config.vocoder_config.hop_length,)
        assert out.audio_values[i].abs().max() <= model.config.vocoder_config.audio_limit


def test_batch_invariant_default_equals_single_segment_decodes(model, decode_expected):
    codes, lengths = decode_expected["batch2.codes"], decode_expected["batch2.bridge_length"].tolist()
    segments = list(codes.split(lengths))
    noise = decode_expected["batch2.cfm_noise"]  # segment i uses noise[i, :, :T_i]
    hop, harmonics = model.config.vocoder_config.hop_length, model.vocoder.m_source.num_harmonics
    draws = [NSFSourceDraws.zeros(1, harmonics, (4 * n - 1) * hop) for n in lengths]
    batched = model.decode(segments, noise=noise, draws=draws, num_steps=2)
    for i, seg in enumerate(segments):
        t = 4 * lengths[i] - 1
        alone = model.decode(seg, noise=noise[i : i + 1, :, :t], draws=[draws[i]], num_steps=2)
        # each segment is decoded exactly as if alone: same kernels on the same shapes, so the numbers are identical
        # up to the alignment-dependent roundoff of oneDNN kernels (fixture README: <= ~1e-6, amplified by the
        # vocoder's phase sum on the waveform)
        assert _maxdiff(batched.mel[i], alone.mel[0]) <= 1e-5
        assert _maxdiff(batched.audio_values[i], alone.audio_values[0]) <= WAVE_TOL
    # ... whereas the original's padded batch lets the padding of the shorter segment change its sound
    parity = model.decode(segments, noise=noise, draws=draws, num_steps=2, batch_invariant=False)
    assert _maxdiff(parity.mel[0], batched.mel[0]) <= TOL  # the longest segment sees no padding
    assert _maxdiff(parity.mel[1], batched.mel[1]) > 1e-3


def test_decode_with_generator_is_reproducible(model, decode_expected):
    codes = decode_expected["tts.codes"][:6]
    a = model.decode(codes, generator=torch.Generator().manual_seed(3), num_steps=2)
    b = model.decode(codes, generator=torch.Generator().manual_seed(3), num_steps=2)
    assert torch.equal(a.audio_values[0], b.audio_values[0])
    assert a.audio_values[0].shape == (a.mel_lengths[0].item() * model.config.vocoder_config.hop_length,)


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "codes, error, match",
    [
        (lambda s: torch.zeros(0, len(s), dtype=torch.long), ValueError, "empty"),
        (lambda s: torch.zeros(3, len(s) - 1, dtype=torch.long), ValueError, "shape"),
        (lambda s: torch.zeros(len(s), dtype=torch.long), ValueError, "shape"),
        (lambda s: torch.zeros(3, len(s)), TypeError, "integer"),
        (lambda s: torch.full((2, len(s)), -1), ValueError, "out of range"),
        (lambda s: torch.tensor([s, [0] * len(s)]), ValueError, "end-of-audio"),
        (lambda s: [], ValueError, "non-empty"),
    ],
)
def test_bad_codes_raise_clear_errors(model, codes, error, match):
    with pytest.raises(error, match=match):
        model.decode(codes(list(model.config.codebook_sizes)))


def test_bad_noise_shape_raises(model, decode_expected):
    with pytest.raises(ValueError, match="noise"):
        model.decode(decode_expected["tts.codes"], noise=torch.zeros(1, 80, 5), num_steps=1)


# ------------------------------------------------------------------------------------------ save / load / dtype


@pytest.fixture(scope="module")
def tiny_model() -> BaichuanAudioCode2Wav:
    from transformers_baichuan_audio.configuration import BaichuanAudioConfig

    torch.manual_seed(0)
    return BaichuanAudioCode2Wav(BaichuanAudioConfig.tiny().code2wav_config).eval()


def _tiny_codes(model, frames=7):
    g = torch.Generator().manual_seed(1)
    return torch.stack([torch.randint(0, s, (frames,), generator=g) for s in model.config.codebook_sizes], dim=1)


def test_save_and_from_pretrained_round_trip(tiny_model, tmp_path):
    codes = _tiny_codes(tiny_model)
    before = tiny_model.decode(codes, generator=torch.Generator().manual_seed(5), num_steps=2)
    tiny_model.save_pretrained(tmp_path)
    loaded = BaichuanAudioCode2Wav.from_pretrained(tmp_path).eval()
    # regenerated non-persistent buffers (positions, STFT window) equal the saved model's
    assert torch.equal(loaded.decoder.positional_embedding, tiny_model.decoder.positional_embedding)
    assert torch.equal(loaded.vocoder.stft_window, tiny_model.vocoder.stft_window)
    after = loaded.decode(codes, generator=torch.Generator().manual_seed(5), num_steps=2)
    # same weights (checked bitwise) -> same numbers up to alignment-dependent kernel roundoff (~1e-7 here)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in tiny_model.state_dict().items())
    assert _maxdiff(before.mel[0], after.mel[0]) <= 1e-5
    assert _maxdiff(before.audio_values[0], after.audio_values[0]) <= 1e-5


def test_bf16_load_keeps_fp32(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    loaded = BaichuanAudioCode2Wav.from_pretrained(tmp_path, dtype=torch.bfloat16)
    dtypes = {p.dtype for p in loaded.parameters()} | {b.dtype for b in loaded.buffers() if b.is_floating_point()}
    assert dtypes == {torch.float32}
    out = loaded.decode(_tiny_codes(loaded), num_steps=1)
    assert out.audio_values[0].dtype == torch.float32 and torch.isfinite(out.audio_values[0]).all()


def test_init_weights_leave_nothing_uninitialised(tiny_model):
    for name, tensor in list(tiny_model.named_parameters()) + list(tiny_model.named_buffers()):
        assert torch.isfinite(tensor).all(), name


def test_eager_attention_equals_sdpa(model, decode_expected):
    codes, noise = decode_expected["speech40.codes"], decode_expected["speech40.cfm_noise"]
    outs = {}
    for impl in ("sdpa", "eager"):
        model.config._attn_implementation = impl  # every attention module reads its kernel from this config
        try:
            outs[impl] = model.decode(codes, noise=noise, num_steps=2, source=[torch.zeros(159 * 480)])
        finally:
            model.config._attn_implementation = "sdpa"
    # boolean masks in both kernels; only summation order differs (fp32 roundoff)
    assert _maxdiff(outs["sdpa"].mel[0], outs["eager"].mel[0]) <= 1e-5


def test_load_vocoder_checkpoint_pickle_is_weights_only(reference_fixture, tmp_path):
    from transformers_baichuan_audio.conversion.checkpoint import load_vocoder_state_dict as load_vocoder_checkpoint

    state = reference_fixture.vocoder_state_dict()
    torch.save(state, tmp_path / "hift.pt")
    loaded = load_vocoder_checkpoint(tmp_path / "hift.pt")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    torch.save({"weights": state, "hook": print}, tmp_path / "evil.pt")  # a pickle with a callable: refused
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_vocoder_checkpoint(tmp_path / "evil.pt")
