"""The grouped single-token attention of the compiled decode steps (``modeling/decode_attention.py``).

Independent expectations: transformers' own ``sdpa`` attention (the same dot products in another grouping: fp32
rounding of sums of at most 64 terms of size ~1, so 1e-5); calls it does not handle go to ``sdpa`` itself (bitwise
equal); under ``torch.compile`` the captured graph holds no key/value tensor with one head per query head (the copy
of the static cache that ``sdpa``'s ``repeat_kv`` makes, which the same check finds with plain ``sdpa``). The
filled-prefix attention of long static caches equals ``sdpa`` over the whole cache (the keys it leaves out are masked:
exact zeros in the softmax sums; CPU flash attention picks its key block size by the key count, so the summation
order may differ: 1e-6 for outputs ~1), and the prefix it reads is counted by hand from the mask.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, Qwen2Config, StaticCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from transformers_baichuan_audio.modeling import decode_attention
from transformers_baichuan_audio.modeling.decode_attention import (
    FILLED_PREFIX_ROUND,
    GROUPED_DECODE_SDPA,
    filled_length,
    filled_prefix_sdpa,
    grouped_decode_sdpa,
    use_grouped_decode_attention,
)

HEADS, KV_HEADS, HEAD_DIM, CACHE_LEN = 6, 2, 8, 40


class _Attention(torch.nn.Module):
    num_key_value_groups = HEADS // KV_HEADS
    is_causal = True


def _inputs(length: int, mask_heads: int = 1, batch: int = 2):
    torch.manual_seed(length)
    query = torch.randn(batch, HEADS, length, HEAD_DIM)
    key, value = torch.randn(2, batch, KV_HEADS, CACHE_LEN, HEAD_DIM)
    mask = torch.ones(batch, mask_heads, length, CACHE_LEN, dtype=torch.bool)
    mask[0, ..., 25:] = False  # row 0: a shorter filled prefix of the static cache
    mask[1, ..., :3] = False  # row 1: left padding
    return query, key, value, mask


def test_single_token_equals_sdpa():
    query, key, value, mask = _inputs(1)
    got, weights = grouped_decode_sdpa(_Attention(), query, key, value, mask, scaling=0.3)
    want, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](_Attention(), query, key, value, mask, scaling=0.3)
    assert weights is None and got.shape == want.shape == (2, 1, HEADS, HEAD_DIM)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("length, mask_heads", [(3, 1), (1, HEADS)])  # several tokens; a per-head mask
def test_other_calls_are_sdpas(length, mask_heads):
    query, key, value, mask = _inputs(length, mask_heads)
    got, _ = grouped_decode_sdpa(_Attention(), query, key, value, mask, scaling=0.3)
    want, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](_Attention(), query, key, value, mask, scaling=0.3)
    assert torch.equal(got, want)


def _llm(implementation: str):
    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=HEADS * HEAD_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=50,
    )
    llm = AutoModel.from_config(config, attn_implementation="sdpa").eval()
    if implementation != "sdpa":
        assert use_grouped_decode_attention(llm)
        assert llm.config._attn_implementation == GROUPED_DECODE_SDPA
    return llm


def _compiled_decode_step(llm, with_targets: bool = False):
    """One single-token step on a static cache through ``torch.compile`` (run as captured); its output and the
    shapes of the tensors in the captured graph (and the targets of its nodes)."""
    cache = StaticCache(config=llm.config, max_cache_len=CACHE_LEN)
    mask = torch.zeros(1, CACHE_LEN, dtype=torch.long)
    mask[:, :9] = 1
    shapes, targets = [], []

    def recording(graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            targets.append(str(node.target))
            value = node.meta.get("example_value")
            if isinstance(value, torch.Tensor):
                shapes.append(tuple(value.shape))
        return graph_module.forward

    def step(embeds):
        out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=torch.tensor([[8]]), cache=cache)
        return out.last_hidden_state

    torch.compiler.reset()
    with torch.inference_mode():
        torch.manual_seed(1)
        llm(inputs_embeds=torch.randn(1, 8, HEADS * HEAD_DIM), attention_mask=mask[:, :8], cache=cache)
        out = torch.compile(step, backend=recording, fullgraph=True, dynamic=False)(torch.randn(1, 1, HEADS * HEAD_DIM))
    return (out, shapes, targets) if with_targets else (out, shapes)


def test_compiled_step_copies_no_cache():
    repeated = (1, HEADS, CACHE_LEN, HEAD_DIM)  # the keys / values of repeat_kv
    plain, plain_shapes = _compiled_decode_step(_llm("sdpa"))
    assert repeated in plain_shapes  # the check finds sdpa's copy
    grouped, grouped_shapes = _compiled_decode_step(_llm(GROUPED_DECODE_SDPA))
    assert repeated not in grouped_shapes
    torch.testing.assert_close(grouped, plain, atol=1e-5, rtol=0)


def test_other_implementations_are_kept(tmp_path):
    llm = _llm("sdpa")
    llm.set_attn_implementation("eager")
    assert not use_grouped_decode_attention(llm)
    assert llm.config._attn_implementation == "eager"
    llm = _llm(GROUPED_DECODE_SDPA)
    assert use_grouped_decode_attention(llm)  # idempotent
    assert not use_grouped_decode_attention(torch.nn.Linear(2, 2))  # not a transformers model: nothing to switch
    llm.config.save_pretrained(tmp_path)
    assert GROUPED_DECODE_SDPA not in (tmp_path / "config.json").read_text()


@pytest.mark.parametrize(
    ("keys", "attended", "expected"),
    [
        (1000, [(0, 0, 100)], FILLED_PREFIX_ROUND),  # positions 0..99: one block
        (1000, [(0, 3, 129)], 2 * FILLED_PREFIX_ROUND),  # left padding, last attended 128: two blocks
        (1000, [(0, 0, 5), (1, 0, 300)], 3 * FILLED_PREFIX_ROUND),  # the longer row counts
        (1000, [(0, 0, 990)], 1000),  # rounded up past the end: the whole cache
        (1000, [], 1000),  # nothing attended: the whole cache (sdpa's own result)
    ],
)
def test_filled_length(keys, attended, expected):
    mask = torch.zeros(2, 1, 1, keys, dtype=torch.bool)
    for row, start, stop in attended:
        mask[row, ..., start:stop] = True
    assert filled_length(mask) == expected


def test_filled_prefix_equals_sdpa():
    torch.manual_seed(3)
    keys = 3 * FILLED_PREFIX_ROUND + 17
    query = torch.randn(2, KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
    key, value = torch.randn(2, 2, KV_HEADS, keys, HEAD_DIM)
    mask = torch.zeros(2, 1, 1, keys, dtype=torch.bool)
    mask[0, ..., :150] = True  # 2 blocks filled
    mask[1, ..., 4:90] = True  # left padding
    want = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.3)
    torch.testing.assert_close(filled_prefix_sdpa(query, key, value, mask, 0.3), want, atol=1e-6, rtol=0)
    op = torch.ops.baichuan_audio.filled_prefix_sdpa(query, key, value, mask, 0.3)
    torch.testing.assert_close(op, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("min_keys, used", [(CACHE_LEN, True), (CACHE_LEN + 1, False)])
def test_compiled_step_reads_the_filled_prefix_of_long_caches(monkeypatch, min_keys, used):
    """From ``FILLED_PREFIX_MIN_KEYS`` static positions on (lowered here to the test's cache length), the compiled step
    attends through the filled-prefix op; the result is plain sdpa's."""
    plain, _ = _compiled_decode_step(_llm("sdpa"))
    monkeypatch.setattr(decode_attention, "FILLED_PREFIX_MIN_KEYS", min_keys)
    grouped, _, targets = _compiled_decode_step(_llm(GROUPED_DECODE_SDPA), with_targets=True)
    assert any("filled_prefix_sdpa" in t for t in targets) is used
    torch.testing.assert_close(grouped, plain, atol=1e-5, rtol=0)
