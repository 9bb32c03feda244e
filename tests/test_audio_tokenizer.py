"""Audio tokenizer (encoder + bridge + RVQ): parity with the original on the tiny-a fixture, batching behaviour,
attention backends, weight conversion, dequantisation, save/load."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from transformers_baichuan_audio.audio_encoding import encode_audio
from transformers_baichuan_audio.configuration import BaichuanAudioTokenizerConfig
from transformers_baichuan_audio.conversion.audio_tokenizer_weights import convert_original_audio_tokenizer_weights
from transformers_baichuan_audio.modeling.audio_tokenizer import (
    BaichuanAudioBridge,
    BaichuanAudioTokenizerModel,
    infer_feature_length,
    squared_norms,
)
from transformers_baichuan_audio.processing.feature_extraction import BaichuanAudioFeatureExtractor

# Contexts recorded by the fixture: which frontend mels are collated (right zero padding), in order.
CONTEXTS = {
    "short": ["short.mel.0"],
    "long": ["long.mel.0", "long.mel.1"],
    "batch3": ["long.mel.0", "long.mel.1", "short.mel.0"],
}
# Encoder/bridge outputs vs the original: 1e-4 (issue bar); measured ~3e-6 (fp32 roundoff of a different matmul
# order / attention kernel; the fixture's own 2-thread re-run differs by ~1e-6).
ATOL = 1e-4


def tokenizer_config_from_original(original_config: dict, **overrides) -> BaichuanAudioTokenizerConfig:
    """The original ``audio_config`` fields share our names; the codebook sizes sit in ``vq_config``."""
    audio = original_config["audio_config"]
    names = {f.name for f in dataclasses.fields(BaichuanAudioTokenizerConfig)}
    kwargs = {k: v for k, v in audio.items() if k in names}
    kwargs["codebook_sizes"] = list(audio["vq_config"]["codebook_sizes"])
    kwargs.update(overrides)
    return BaichuanAudioTokenizerConfig(**kwargs)


def collate(mels: list[torch.Tensor]) -> torch.Tensor:
    """The original processor's collation: right zero padding to the longest piece."""
    out = torch.zeros(len(mels), mels[0].shape[0], max(m.shape[-1] for m in mels))
    for i, mel in enumerate(mels):
        out[i, :, : mel.shape[-1]] = mel
    return out


@pytest.fixture(scope="module")
def converted(original_state_dict):
    return convert_original_audio_tokenizer_weights(original_state_dict)


@pytest.fixture(scope="module")
def models(reference_fixture, converted):
    config = tokenizer_config_from_original(reference_fixture.config)
    out = {}
    for impl in ("sdpa", "eager"):
        model = BaichuanAudioTokenizerModel._from_config(config, attn_implementation=impl).eval()
        model.load_state_dict(converted[0], strict=True)
        out[impl] = model
    return out


@pytest.fixture(scope="module")
def expected(reference_fixture):
    return reference_fixture.expected("audio_tokenizer")


@pytest.fixture(scope="module")
def frontend(reference_fixture):
    return reference_fixture.expected("frontend")


def run_context(model, frontend, expected, name, **kwargs):
    features = collate([frontend[key] for key in CONTEXTS[name]])
    with torch.no_grad():
        return model(features, expected[f"{name}.encoder_length"], expected[f"{name}.bridge_length"], **kwargs)


@pytest.fixture(scope="module")
def context_output(models, frontend, expected):
    """Memoised ``run_context`` (the long contexts take a while on 2 busy cores)."""
    cache = {}

    def get(impl: str, name: str, batch_invariant: bool = False):
        key = (impl, name, batch_invariant)
        if key not in cache:
            cache[key] = run_context(models[impl], frontend, expected, name, batch_invariant=batch_invariant)
        return cache[key]

    return get


# ------------------------------------------------------------------------------------------------ conversion


def test_conversion_mapping(original_state_dict, converted, models):
    new_state, handled = converted
    under = {
        k
        for k in original_state_dict
        if k.startswith(("audio_tokenizer.audio_model.", "audio_tokenizer.audio_bridge_model."))
    }
    proj_decoder = {k for k in under if ".proj_decoder." in k}
    assert proj_decoder, "fixture has proj_decoder weights (owned by code2wav)"
    assert handled == under - proj_decoder
    dropped = handled - {k for k in handled if _maps_to(k, new_state)}
    assert all(k.endswith(("positional_embedding", "embed_avg", "cluster_size")) for k in dropped)
    assert "audio_tokenizer.audio_model.positional_embedding" in dropped
    # the model's state dict is exactly what the conversion produced (strict load succeeded in the fixture)
    assert set(models["sdpa"].state_dict()) == set(new_state)
    n_codebooks = len(models["sdpa"].config.codebook_sizes)
    for i in range(n_codebooks):
        key = f"audio_tokenizer.audio_bridge_model.vq_list.{i}.codebook.embed"
        assert torch.equal(new_state[f"quantizer.codebooks.{i}.embed"], original_state_dict[key])
    assert torch.equal(
        new_state["encoder.layers.0.self_attn.q_proj.weight"],
        original_state_dict["audio_tokenizer.audio_model.layers.0.self_attn.q_proj.weight"],
    )


def _maps_to(original_key: str, new_state: dict) -> bool:
    for prefix, target in (
        ("audio_tokenizer.audio_model.", "encoder."),
        ("audio_tokenizer.audio_bridge_model.", "bridge."),
    ):
        if original_key.startswith(prefix) and target + original_key[len(prefix) :] in new_state:
            return True
    return original_key.endswith(".codebook.embed")


@pytest.mark.parametrize(
    "bad_key",
    [
        "audio_tokenizer.audio_model.layers.0.self_attn.k_proj.bias",
        "audio_tokenizer.audio_model.embed_positions.weight",
        "audio_tokenizer.audio_bridge_model.vq_list.0.codebook.initted",
        "audio_tokenizer.audio_bridge_model.gate_proj.bias",
    ],
)
def test_conversion_rejects_unknown_keys(bad_key):
    with pytest.raises(KeyError, match=bad_key.replace(".", r"\.")):
        convert_original_audio_tokenizer_weights({bad_key: torch.zeros(1)})


def test_conversion_ignores_other_components():
    state, handled = convert_original_audio_tokenizer_weights(
        {
            "model.embed_tokens.weight": torch.zeros(2, 2),
            "audio_tokenizer.audio_decoder.layers.0.fc1.weight": torch.zeros(2, 2),
            "audio_tokenizer.audio_bridge_model.proj_decoder.weight": torch.zeros(2, 2),
        }
    )
    assert state == {} and handled == set()


# ---------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("context", ["short", "long", "batch3"])
def test_parity_with_original(context_output, expected, impl, context):
    out = context_output(impl, context)
    assert torch.equal(out.bridge_length, expected[f"{context}.bridge_length"])
    assert torch.equal(out.audio_codes, expected[f"{context}.codes"]), "RVQ codes must be 100% identical"
    if f"{context}.encoder_out" in expected:
        torch.testing.assert_close(out.encoder_last_hidden_state, expected[f"{context}.encoder_out"], rtol=0, atol=ATOL)
        torch.testing.assert_close(out.bridge_hidden_states, expected[f"{context}.bridge_out"], rtol=0, atol=ATOL)


def test_eager_equals_sdpa(context_output):
    eager, sdpa = context_output("eager", "batch3"), context_output("sdpa", "batch3")
    assert torch.equal(eager.audio_codes, sdpa.audio_codes)
    # two fp32 softmax-attention kernels: roundoff only
    torch.testing.assert_close(eager.bridge_hidden_states, sdpa.bridge_hidden_states, rtol=0, atol=1e-5)


def test_codes_from_wav_files(reference_fixture, models, expected):
    """Own features from inputs/*.wav -> encoder -> identical codes, in the recorded batching contexts."""
    model = models["sdpa"]
    long, sr = reference_fixture.input_wav("long")
    short, _ = reference_fixture.input_wav("short")
    fe = BaichuanAudioFeatureExtractor.from_tokenizer_config(model.config)
    feats = fe([long, short], sampling_rate=sr)  # = the batch3 collation
    clips = model.encode(**feats)  # regrouped per clip by `audio_pieces`
    assert [c.shape for c in clips] == [(532, 8), (235, 8)]
    assert torch.equal(clips[0], expected["long.codes"]) and torch.equal(clips[1], expected["short.codes"])
    assert torch.equal(torch.cat(clips), expected["batch3.codes"])
    pieces = encode_audio(model, short, sr)  # raw-audio path, one clip
    assert len(pieces) == 1 and torch.equal(pieces[0], expected["short.codes"])


# ------------------------------------------------------------------------------------------------- batching


@pytest.fixture(scope="module")
def long_piece1_alone(models, frontend, expected):
    with torch.no_grad():
        return models["sdpa"](frontend["long.mel.1"][None], expected["long.encoder_length"][1:])


def test_padding_leak_and_batch_invariant_mode(context_output, long_piece1_alone, expected):
    """`long` piece 1 has 1257 (odd) mel frames and is padded to 3000: the original's conv2 reads padded conv1
    output at its last valid frame. Default mode reproduces that (fixture); batch_invariant gives the piece-alone
    result."""
    default = context_output("sdpa", "long")
    invariant = context_output("sdpa", "batch3", batch_invariant=True)  # piece 1 = long piece 1, also padded
    enc_len = expected["long.encoder_length"][1].item()
    piece_inv = invariant.encoder_last_hidden_state[1, :enc_len]
    piece_default = default.encoder_last_hidden_state[1, :enc_len]
    alone_out = long_piece1_alone.encoder_last_hidden_state[0]
    torch.testing.assert_close(piece_inv, alone_out, rtol=0, atol=1e-5)
    # the leak is real and large (~0.1 here): the default matches the fixture, not the piece alone
    assert (piece_default - alone_out).abs().max() > 1e-2
    torch.testing.assert_close(piece_default, expected["long.encoder_out"][1, :enc_len], rtol=0, atol=ATOL)
    # the full-length piece 0 (3000 frames) is unaffected
    torch.testing.assert_close(
        invariant.encoder_last_hidden_state[0], default.encoder_last_hidden_state[0], rtol=0, atol=1e-5
    )


def test_batch_invariant_codes_equal_single_piece_runs(context_output, long_piece1_alone, frontend, expected):
    batch = context_output("sdpa", "batch3", batch_invariant=True)
    # piece 0 fills the batch (nothing to leak); pieces 1 and 2 alone: long piece 1 and the `short` context
    singles = [
        batch.audio_codes[: expected["batch3.bridge_length"][0]],
        long_piece1_alone.audio_codes,
        context_output("sdpa", "short").audio_codes,
    ]
    assert torch.equal(batch.audio_codes, torch.cat(singles))
    assert torch.equal(singles[2], expected["short.codes"])
    # the valid lengths inferred from the zero padding are the true ones (explicit `feature_length` is optional)
    features = collate([frontend[k] for k in CONTEXTS["batch3"]])
    lengths = torch.tensor([frontend[k].shape[-1] for k in CONTEXTS["batch3"]])
    assert torch.equal(infer_feature_length(features, expected["batch3.encoder_length"]), lengths)


# -------------------------------------------------------------------------------------------- dequantisation


def test_decode_sums_code_vectors_like_original(models, reference_fixture, original_state_dict):
    """decode = sum of the selected code vectors (last codebook first); through the original proj_decoder it must
    reproduce the fixture's `dequant_proj` (1e-6: same fp32 additions in the same order, one Linear)."""
    model = models["sdpa"]
    decode = reference_fixture.expected("decode")
    weight = original_state_dict["audio_tokenizer.audio_bridge_model.proj_decoder.weight"]
    bias = original_state_dict["audio_tokenizer.audio_bridge_model.proj_decoder.bias"]
    for case in ("tts", "speech40", "batch2"):
        codes = decode[f"{case}.codes"]
        summed = model.decode(codes)
        assert summed.dtype == torch.float32 and summed.shape == (codes.shape[0], model.config.bridge_dim)
        naive = sum(model.quantizer.codebooks[i].embed[codes[:, i]] for i in range(codes.shape[1]))
        torch.testing.assert_close(summed, naive, rtol=0, atol=1e-5)
        got = torch.nn.functional.linear(summed, weight, bias)
        torch.testing.assert_close(got, decode[f"{case}.dequant_proj"], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="codes per frame"):
        model.decode(torch.zeros(3, 2, dtype=torch.long))


def test_quantize_is_nearest_neighbour_residual(models):
    """Independent check of the RVQ rule with torch.cdist on random frames."""
    quantizer = models["sdpa"].quantizer
    frames = torch.randn(50, quantizer.codebooks[0].embed.shape[1], generator=torch.Generator().manual_seed(3))
    codes = quantizer.quantize(frames)
    residual = frames.clone()
    for i, stage in enumerate(quantizer.codebooks):
        codebook = stage.embed
        nearest = torch.cdist(residual[None].double(), codebook[None].double())[0].argmin(-1)
        assert torch.equal(codes[:, i], nearest)
        residual = residual - codebook[nearest]


# ---------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path, models, frontend, expected):
    model = models["sdpa"]
    model.save_pretrained(tmp_path)
    loaded = BaichuanAudioTokenizerModel.from_pretrained(tmp_path)
    assert not any("positional_embedding" in k for k in loaded.state_dict())  # regenerated, not stored
    torch.testing.assert_close(loaded.encoder.positional_embedding, model.encoder.positional_embedding, rtol=0, atol=0)
    out = run_context(loaded.eval(), frontend, expected, "short")
    assert torch.equal(out.audio_codes, expected["short.codes"])
    half = BaichuanAudioTokenizerModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.encoder.conv1.weight.dtype == torch.bfloat16
    assert all(c.embed.dtype == torch.float32 for c in half.quantizer.codebooks)  # _keep_in_fp32_modules_strict
    codes = half.encode(collate([frontend["short.mel.0"]]), expected["short.encoder_length"])[0]
    assert codes.shape == expected["short.codes"].shape and codes.dtype == torch.long


def test_random_small_model_from_audio():
    config = BaichuanAudioTokenizerConfig(
        d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, codebook_sizes=[8, 4, 4]
    )
    model = BaichuanAudioTokenizerModel(config).eval()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 40 * 16000)]
    codes = encode_audio(model, clips, 16000)
    fe = BaichuanAudioFeatureExtractor.from_tokenizer_config(config)
    assert [c.shape for c in codes] == [(fe.num_audio_frames(len(c)), 3) for c in clips] == [(12, 3), (500, 3)]
    assert all(int(c[:, i].max()) < size for c in codes for i, size in enumerate(config.codebook_sizes))
    with pytest.raises(ValueError, match="sampling_rate"):
        encode_audio(model, clips[0], None)


# ---------------------------------------------------------------------------------------------- fast paths


@pytest.mark.parametrize("rows, dim", [(8192, 80), (1000, 77), (64, 5), (65, 33), (130, 1)])
def test_squared_norms_are_the_plain_formulas_bit_for_bit(rows, dim):
    """The RVQ's |c|^2, computed in row blocks on a CPU, equals ``codebook.pow(2).sum(-1)`` exactly (the distances,
    and so every code, stay the original formula's), with 1 and 2 threads."""
    codebook = torch.randn(rows, dim, generator=torch.Generator().manual_seed(rows))
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(squared_norms(codebook), codebook.pow(2).sum(-1))
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("avg_pooler, length", [(4, 12), (2, 6), (3, 9)])
def test_bridge_convs_as_products_equal_the_convs(avg_pooler, length):
    """The bridge computes its kernel = stride convs as products over groups of frames: the same values as the
    ``nn.Conv1d`` modules (1e-5: fp32 roundoff of another summation order over d * k = 16 * avg_pooler terms of
    O(1), measured ~5e-7) and the same weight gradients; a conv wrapped in another module is called as a module."""
    config = BaichuanAudioTokenizerConfig(
        d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, avg_pooler=avg_pooler
    )
    bridge = BaichuanAudioBridge(config)
    x = torch.randn(2, length, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    for conv in (bridge.gate_proj, bridge.up_proj):
        got = bridge.grouped_conv(conv, x)
        want = conv(x.transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        (grad_got,) = torch.autograd.grad(got.square().sum(), conv.weight)
        (grad_want,) = torch.autograd.grad(want.square().sum(), conv.weight)
        torch.testing.assert_close(grad_got, grad_want, rtol=1e-5, atol=1e-5)

    class Doubled(torch.nn.Conv1d):  # stands in for an adapter wrapping the conv
        def forward(self, input):
            return 2 * super().forward(input)

    doubled = Doubled(16, bridge.gate_proj.out_channels, avg_pooler, avg_pooler, bias=False)
    doubled.load_state_dict(bridge.gate_proj.state_dict())
    torch.testing.assert_close(bridge.grouped_conv(doubled, x), 2 * bridge.grouped_conv(bridge.gate_proj, x))
