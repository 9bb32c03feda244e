"""The audio head (depth transformer over the 8 codebooks): fixture parity, incremental == full pass, structure."""

from __future__ import annotations

import pytest
import torch
from test_modeling_conversion import load_fixture_model

from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.modeling.audio_head import BaichuanAudioHead
from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioEmbeddings

# fp32 parity bar of the issue; the measured error is ~2e-6 (the original's fp32 roundoff spread is ~1e-6).
PARITY_ATOL = 1e-4
# Two fp32 code paths computing the same function (different matmul shapes / kernels): roundoff only.
SAME_MATH_ATOL = 1e-5


def _random_head(attn_implementation: str = "sdpa", seed: int = 0):
    config = BaichuanAudioConfig.tiny()
    head_config = config.audio_head_config
    head_config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    head = BaichuanAudioHead(head_config).eval()
    embed = BaichuanAudioEmbeddings(config).eval()
    # Non-trivial norms and biases so that every term matters.
    with torch.no_grad():
        for name, param in head.named_parameters():
            param.normal_(1.0 if "norm" in name else 0.0, 0.3 if param.ndim == 1 else param.shape[-1] ** -0.5)
    sizes = head_config.codebook_sizes
    hidden = torch.randn(5, head_config.hidden_size)
    codes = torch.stack([torch.randint(0, s + 1, (5,)) for s in sizes], dim=-1)
    return head, embed, hidden, codes


def test_audio_head_matches_the_original_on_the_fixture(reference_fixture):
    model, _, _ = load_fixture_model(reference_fixture)
    expected = reference_fixture.expected("audio_head")
    with torch.no_grad():
        logits = model.audio_head(expected["hidden"], expected["codes"], model.model.audio_embed)
    sizes = reference_fixture.config["audio_config"]["vq_config"]["codebook_sizes"]
    assert len(logits) == len(sizes)
    for i, size in enumerate(sizes):
        assert logits[i].shape == (expected["hidden"].shape[0], size + 1)
        torch.testing.assert_close(logits[i], expected[f"logits.{i}"], atol=PARITY_ATOL, rtol=0)


def test_incremental_steps_equal_the_full_pass():
    head, embed, hidden, codes = _random_head()
    with torch.no_grad():
        full = head(hidden, codes, embed)
        cache = head.new_cache()
        inputs, prefix = hidden, None
        for i in range(head.num_codebooks):
            step_logits = head.step(inputs, i, cache)
            torch.testing.assert_close(step_logits, full[i], atol=SAME_MATH_ATOL, rtol=0)
            prefix = head.next_inputs(prefix, codes[:, i], i, embed)
            inputs = prefix


def test_decode_frame_greedy_is_consistent_with_teacher_forcing():
    head, embed, hidden, _ = _random_head(seed=1)
    with torch.no_grad():
        codes, step_logits = head.decode_frame(hidden, embed, lambda i, logits: logits.argmax(-1))
        full = head(hidden, codes, embed)
    for i in range(head.num_codebooks):
        torch.testing.assert_close(step_logits[i], full[i], atol=SAME_MATH_ATOL, rtol=0)
        assert torch.equal(codes[:, i], full[i].argmax(-1))


def test_step_out_of_order_raises():
    head, _, hidden, _ = _random_head()
    with pytest.raises(ValueError, match="in order"):
        head.step(hidden, 1, head.new_cache())


def test_head_is_causal_over_codebooks_and_ffn_is_per_position():
    head, embed, hidden, codes = _random_head(seed=2)
    with torch.no_grad():
        base = head(hidden, codes, embed)
        changed_codes = codes.clone()
        changed_codes[:, 3] = (codes[:, 3] + 1) % (head.config.codebook_sizes[3] + 1)
        changed = head(hidden, changed_codes, embed)
        # code 3 is an input of positions 4..7 only
        for i in range(head.num_codebooks):
            assert torch.equal(base[i], changed[i]) == (i <= 3), i
        head.layers[0].mlp[5].fc1.weight.add_(0.5)  # only position 5 uses these weights (and later via attention)
        perturbed = head(hidden, codes, embed)
    for i in range(head.num_codebooks):
        assert torch.equal(base[i], perturbed[i]) == (i < 5), i


def test_eager_equals_sdpa():
    head, embed, hidden, codes = _random_head("sdpa", seed=3)
    with torch.no_grad():
        sdpa = head(hidden, codes, embed)
        head.config._attn_implementation = "eager"
        eager = head(hidden, codes, embed)
        cache = head.new_cache()
        eager_step0 = head.step(hidden, 0, cache)
    for a, b in zip(sdpa, eager):
        torch.testing.assert_close(a, b, atol=SAME_MATH_ATOL, rtol=0)
    torch.testing.assert_close(eager_step0, sdpa[0], atol=SAME_MATH_ATOL, rtol=0)


def test_heads_are_plain_linear_modules():
    """PEFT targets nn.Linear modules: every weight of the head must live in one."""
    head, _, _, _ = _random_head()
    linear_params = {
        f"{name}.{p}"
        for name, m in head.named_modules()
        if isinstance(m, torch.nn.Linear)
        for p, _ in m.named_parameters()
    }
    norm_params = {n for n, _ in head.named_parameters() if "norm" in n}
    assert set(dict(head.named_parameters())) == linear_params | norm_params
    assert [h.out_features for h in head.heads] == [s + 1 for s in head.config.codebook_sizes]


def _reference_head_logits(original: dict, hidden, codes, tables, num_layers: int, num_heads: int):
    """The head computed from the ORIGINAL tensor layout, written from the spec with torch primitives
    (``nn.MultiheadAttention`` with the fused in_proj, the fused per-position FFN via einsum, unused FFN biases)."""
    size, n = hidden.shape[-1], len(tables)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    x = torch.cat(
        [hidden[:, None], torch.cumsum(torch.stack([tables[i](codes[:, i]) for i in range(n - 1)], 1), 1)], dim=1
    )
    causal = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    for layer in range(num_layers):
        p = f"audio_head.transformer_layers.{layer}."
        mha = torch.nn.MultiheadAttention(size, num_heads, batch_first=True)
        mha.load_state_dict(
            {
                "in_proj_weight": original[p + "self_attention.in_proj_weight"],
                "in_proj_bias": original[p + "self_attention.in_proj_bias"],
                "out_proj.weight": original[p + "self_attention.out_proj.weight"],
                "out_proj.bias": original[p + "self_attention.out_proj.bias"],
            }
        )
        normed = rms(x, original[p + "layernorm1.weight"])
        attn, _ = mha(normed, normed, normed, attn_mask=causal, need_weights=False)
        r = rms(x + attn, original[p + "layernorm2.weight"])
        w1 = original[p + "linear1.weight"].reshape(-1, n, size)
        inner = torch.nn.functional.gelu(torch.einsum("bld,tld->blt", r, w1))
        w2 = original[p + "linear2.weight"].reshape(size, n, -1)
        x = r + torch.einsum("blt,dlt->bld", inner, w2)
    x = rms(x, original["audio_head.headnorm.weight"])
    return [
        x[:, i] @ original[f"audio_head.heads.{i}.weight"].T + original[f"audio_head.heads.{i}.bias"] for i in range(n)
    ]


def test_multi_head_conversion_matches_the_original_layout():
    """The fixture has 1 attention head; check the in_proj split and FFN slicing with several heads."""
    from transformers_baichuan_audio.conversion.llm_weights import convert_original_model_weights

    config = BaichuanAudioConfig.tiny()
    head_config = config.audio_head_config
    size, inter, layers = head_config.hidden_size, head_config.intermediate_size, head_config.num_hidden_layers
    assert head_config.num_attention_heads > 1
    torch.manual_seed(5)
    original = {"audio_head.headnorm.weight": 1 + 0.1 * torch.randn(size)}
    for i, s in enumerate(head_config.codebook_sizes):
        original[f"audio_head.heads.{i}.weight"] = torch.randn(s + 1, size) / size**0.5
        original[f"audio_head.heads.{i}.bias"] = 0.1 * torch.randn(s + 1)
    for layer in range(layers):
        p = f"audio_head.transformer_layers.{layer}."
        original[p + "layernorm1.weight"] = 1 + 0.1 * torch.randn(size)
        original[p + "layernorm2.weight"] = 1 + 0.1 * torch.randn(size)
        original[p + "self_attention.in_proj_weight"] = torch.randn(3 * size, size) / size**0.5
        original[p + "self_attention.in_proj_bias"] = 0.1 * torch.randn(3 * size)
        original[p + "self_attention.out_proj.weight"] = torch.randn(size, size) / size**0.5
        original[p + "self_attention.out_proj.bias"] = 0.1 * torch.randn(size)
        original[p + "linear1.weight"] = torch.randn(inter, head_config.num_codebooks * size) / size**0.5
        original[p + "linear1.bias"] = torch.randn(inter)  # unused by the original
        original[p + "linear2.weight"] = torch.randn(size, head_config.num_codebooks * inter) / inter**0.5
        original[p + "linear2.bias"] = torch.randn(size)  # unused by the original
    converted, handled = convert_original_model_weights(original, config)
    assert handled == set(original)
    head = BaichuanAudioHead(head_config).eval()
    head.load_state_dict({k[len("audio_head.") :]: v for k, v in converted.items()}, strict=True)
    embed = BaichuanAudioEmbeddings(config)
    hidden = torch.randn(4, size)
    codes = torch.stack([torch.randint(0, s + 1, (4,)) for s in head_config.codebook_sizes], dim=-1)
    with torch.no_grad():
        ours = head(hidden, codes, embed)
        reference = _reference_head_logits(
            original, hidden, codes, embed.embeddings, layers, head_config.num_attention_heads
        )
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, atol=SAME_MATH_ATOL, rtol=0)
