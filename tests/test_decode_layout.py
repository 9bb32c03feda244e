"""The row-block decode layout (``modeling/decode_layout.py``) on a tiny random model (fp32, CPU).

Independent expectations: :func:`blocked_linear` equals ``F.linear`` (the same dot products, only the BLAS's
summation order differs: float32 rounding of sums of at most a few hundred terms of size ~1 is ~1e-6, so 1e-5);
the layout leaves every parameter as it was (same object, same storage, same values) and routes exactly the calls
its rule names through the blocks (counted); generation with it gives the same tokens and codes as without
(greedy) and logits equal to 1e-5; a saved model loads back equal. Under ``torch.compile`` the layer's graph holds
the products as row blocks and, before narrowing projections only, the opaque copy (read from the graph dynamo
hands its backend); a single row with more inputs than inductor sums without its cascade is written as chunk sums
(the fewest equal chunks of at most 4096 terms, checked against the divisors by hand) that equal ``F.linear``.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.modeling import decode_layout
from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration
from transformers_baichuan_audio.modeling.decode_layout import (
    apply_decode_layout,
    blocked_linear,
    chunked_linear,
    compiled_blocked_linear,
    has_decode_layout,
    remove_decode_layout,
    sum_chunks,
    wants_decode_layout,
)


def _model(seed: int = 0, **overrides) -> BaichuanAudioForConditionalGeneration:
    torch.manual_seed(seed)
    config = BaichuanAudioConfig.tiny(**overrides)
    config.enable_audio_output = False
    return BaichuanAudioForConditionalGeneration(config).eval()


def _decode_linears(model):
    parts = (model.lm_head, model.audio_head, model.model.language_model)
    return {id(m): m for part in parts for m in part.modules() if isinstance(m, nn.Linear)}.values()


@pytest.mark.parametrize("blocks", [2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 1, 24), (3, 1, 24), (4, 24), (24,)])
@pytest.mark.parametrize("bias", [True, False])
def test_blocked_linear_equals_f_linear(blocks, shape, bias):
    torch.manual_seed(blocks)
    weight = torch.randn(37, 24)  # 37 rows: a remainder for every block count
    b = torch.randn(37) if bias else None
    x = torch.randn(shape)
    out = blocked_linear(x, weight, b, blocks)
    expected = F.linear(x, weight, b)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_layout_changes_the_plain_decode_linears_and_no_parameter():
    model = _model()
    before = {name: (p, p.data_ptr(), p.detach().clone()) for name, p in model.named_parameters()}
    linears = list(_decode_linears(model))
    assert apply_decode_layout(model) == len(linears)
    assert all(has_decode_layout(m) for m in linears)
    for name, p in model.named_parameters():
        param, ptr, values = before[name]
        assert p is param and p.data_ptr() == ptr and torch.equal(p, values), name
    # Neither the audio tokenizer nor code2wav are touched.
    assert not any(has_decode_layout(m) for m in model.model.audio_tokenizer.modules())
    assert apply_decode_layout(model) == 0  # idempotent
    assert remove_decode_layout(model) == len(linears)
    assert not any(has_decode_layout(m) for m in model.modules())
    assert remove_decode_layout(model) == 0


def test_subclasses_keep_their_forward_and_copies_their_own():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = _model()
    model.audio_head.extra = Scaled(4, 4)
    apply_decode_layout(model)
    assert not has_decode_layout(model.audio_head.extra)
    twin = copy.deepcopy(model)
    for original, copied in zip(_decode_linears(model), _decode_linears(twin), strict=True):
        if has_decode_layout(original):
            assert copied.forward.__self__ is copied  # bound to the copy, not to the original layer


def test_which_calls_take_the_blocks(two_threads, monkeypatch):
    calls = []

    def counting(*args):
        calls.append(args[0].shape)
        return blocked_linear(*args)

    monkeypatch.setattr(decode_layout, "blocked_linear", counting)
    torch.manual_seed(0)
    holder = nn.Module()
    holder.lm_head = nn.Linear(16, 32)
    assert apply_decode_layout(holder) == 1
    layer = holder.lm_head

    def taken(x, grad=False):
        calls.clear()
        with torch.set_grad_enabled(grad):
            out = layer(x)
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=0)
        return bool(calls)

    assert taken(torch.randn(1, 1, 16))
    assert taken(torch.randn(decode_layout.MAX_BLOCK_ROWS, 16))
    assert not taken(torch.randn(decode_layout.MAX_BLOCK_ROWS + 1, 16))  # GEMM-shaped: MKL's own
    assert not taken(torch.randn(1, 16), grad=True)  # training: the weight requires grad
    torch.set_num_threads(1)
    assert not taken(torch.randn(1, 16))  # one thread: nothing to split
    torch.set_num_threads(2)
    layer.bfloat16()
    calls.clear()
    layer(torch.randn(1, 16, dtype=torch.bfloat16))
    assert not calls  # bf16 bmm is slower than the BLAS GEMV on CPUs


def test_tied_lm_head_stays_tied():
    model = _model()
    model.lm_head.weight = model.model.language_model.embed_tokens.weight  # tied, as tie_weights() makes it
    apply_decode_layout(model)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight


def test_generation_is_unchanged_by_the_layout(two_threads):
    model = _model(seed=1)
    config = model.config
    torch.manual_seed(3)
    prompt = torch.randint(0, config.text_config.vocab_size - 10, (2, 12))
    prompt[:, -1] = config.audiogen_start_token_id
    kwargs = dict(
        output_audio=True,
        speech_mode="tts",
        do_sample=False,
        audio_min_frames=6,
        audio_max_frames=6,
        output_audio_logits=True,
    )
    plain = model.generate(prompt, decode_layout=False, **kwargs)
    assert not any(has_decode_layout(m) for m in model.modules())
    laid = model.generate(prompt, **kwargs)  # auto: CPU + eval mode
    assert all(has_decode_layout(m) for m in _decode_linears(model))
    for row in range(2):
        assert torch.equal(laid.audio_codes[row][0], plain.audio_codes[row][0])
        for a, b in zip(laid.audio_logits[row], plain.audio_logits[row], strict=True):
            for x, y in zip(a, b, strict=True):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    text_ids = prompt[:, :-1]
    remove_decode_layout(model)
    plain_text = model.generate(text_ids, max_new_tokens=6, do_sample=False, decode_layout=False)
    laid_text = model.generate(text_ids, max_new_tokens=6, do_sample=False, decode_layout=True)
    assert torch.equal(plain_text, laid_text)


def test_saved_model_is_equal(tmp_path):
    model = _model(seed=2)
    apply_decode_layout(model)
    model.save_pretrained(tmp_path)
    loaded = BaichuanAudioForConditionalGeneration.from_pretrained(tmp_path)
    reference = dict(model.named_parameters())
    for name, p in loaded.named_parameters():
        assert torch.equal(p, reference[name]), name
    assert not any(has_decode_layout(m) for m in loaded.modules())


def test_when_generate_applies_it():
    model = _model()
    assert wants_decode_layout(model, None)
    assert wants_decode_layout(model, False) is False
    model.train()
    assert not wants_decode_layout(model, None)
    assert wants_decode_layout(model, True)
    with pytest.raises(TypeError, match="decode_layout"):
        wants_decode_layout(model, "yes")


@pytest.mark.parametrize("shape", [(1, 1, 24), (3, 24), (24,)])
@pytest.mark.parametrize("out_features", [37, 11])  # widening and narrowing (the materialized input)
@pytest.mark.parametrize("bias", [True, False])
def test_compiled_blocked_linear_equals_f_linear(shape, out_features, bias):
    torch.manual_seed(out_features)
    weight = torch.randn(out_features, 24)
    b = torch.randn(out_features) if bias else None
    x = torch.randn(shape)
    expected = F.linear(x, weight, b)
    out = compiled_blocked_linear(x, weight, b, 2)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert torch.equal(decode_layout.materialize(x), x)


def _graph_of(module: nn.Module, x: torch.Tensor):
    """The FX graph dynamo captures for ``module(x)`` (run as captured, without a compiler) and its output."""
    graphs = []

    def recording(graph_module, example_inputs):
        graphs.append(graph_module.graph)
        return graph_module.forward

    torch.compiler.reset()
    out = torch.compile(module, backend=recording, fullgraph=True, dynamic=False)(x)
    assert len(graphs) == 1
    return graphs[0], out


def test_compiled_decode_forward_graph(two_threads):
    torch.manual_seed(0)
    holder = nn.Module()
    holder.audio_head = nn.Sequential(nn.Linear(16, 48), nn.GELU(), nn.Linear(48, 16, bias=False))
    assert apply_decode_layout(holder) == 2
    x = torch.randn(1, 16)
    expected = F.linear(
        F.gelu(F.linear(x, holder.audio_head[0].weight, holder.audio_head[0].bias)), holder.audio_head[2].weight
    )

    def targets(graph):
        return [str(node.target) for node in graph.nodes if node.op == "call_function"]

    with torch.no_grad():
        graph, out = _graph_of(holder.audio_head, x)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        found = targets(graph)
        assert sum("baichuan_audio.materialize" in t for t in found) == 1  # the 48 -> 16 projection only
        assert sum("bmm" in t for t in found) == 2 and not any("linear" in t for t in found)
        torch.set_num_threads(1)  # one thread: no blocks, F.linear (a new graph: the block count is guarded)
        graph, out = _graph_of(holder.audio_head, x)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        found = targets(graph)
        assert sum("linear" in t for t in found) == 2 and not any("bmm" in t or "materialize" in t for t in found)


@pytest.mark.parametrize(
    ("in_features", "chunks"),
    [
        (896, 1),  # short enough: no split
        (4096, 1),  # the cascade starts above 4096 terms
        (4864, 2),  # Qwen2.5-0.5B's down projection: 2 x 2432
        (8192, 2),
        (18944, 8),  # Qwen2.5-7B's: 18944 = 2^9 x 37; 4 chunks would be 4736 > 4096 terms, 8 are 2368
        (4369, 17),  # 17 x 257: 257 terms is still long enough
        (4099, 1),  # a prime: only 1-term chunks divide it, so no split
    ],
)
def test_sum_chunks(in_features, chunks):
    assert sum_chunks(in_features) == chunks
    if chunks > 1:
        assert in_features % chunks == 0 and in_features // chunks <= decode_layout.CASCADE_TERMS


@pytest.mark.parametrize("shape", [(1, 4864), (4864,), (1, 1, 4864), (3, 4864)])
def test_chunked_linear_equals_f_linear(shape):
    torch.manual_seed(1)
    weight = torch.randn(40, 4864) / 70  # outputs ~1: sums of 4864 terms in another order differ by ~1e-6
    x = torch.randn(shape)
    out = chunked_linear(x, weight, 2)
    expected = F.linear(x, weight)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_compiled_linear_sums_long_rows_in_chunks(two_threads, monkeypatch):
    """With the cascade threshold at 16 terms, a 48-input projection of one row is three 16-term sums (two ``sum``
    nodes, no ``bmm``); three rows keep the row blocks."""
    monkeypatch.setattr(decode_layout, "CASCADE_TERMS", 16)
    monkeypatch.setattr(decode_layout, "MIN_CHUNK_TERMS", 4)
    torch.manual_seed(0)
    holder = nn.Module()
    holder.audio_head = nn.Sequential(nn.Linear(48, 8))
    apply_decode_layout(holder)
    linear = holder.audio_head[0]
    with torch.no_grad():
        for rows, chunked in ((1, True), (3, False)):
            x = torch.randn(rows, 48)
            graph, out = _graph_of(holder.audio_head, x)
            torch.testing.assert_close(out, F.linear(x, linear.weight, linear.bias), atol=1e-5, rtol=0)
            found = [str(node.target) for node in graph.nodes if node.op == "call_function"]
            found += [str(node.target) for node in graph.nodes if node.op == "call_method"]
            assert (found.count("sum") == 2) is chunked
            assert any("bmm" in t for t in found) is not chunked


def test_chunked_linear_under_inductor(two_threads, monkeypatch):
    """The real inductor backend compiles the chunk sums to the same numbers as ``F.linear`` (1e-5, as above)."""
    monkeypatch.setattr(decode_layout, "CASCADE_TERMS", 16)
    monkeypatch.setattr(decode_layout, "MIN_CHUNK_TERMS", 4)
    torch.manual_seed(2)
    weight, bias, x = torch.randn(8, 48), torch.randn(8), torch.randn(1, 48)
    torch.compiler.reset()
    compiled = torch.compile(compiled_blocked_linear, backend="inductor", fullgraph=True, dynamic=False)
    with torch.no_grad():
        out = compiled(x, weight, bias, 2)
    torch.testing.assert_close(out, F.linear(x, weight, bias), atol=1e-5, rtol=0)


def test_compiled_kv_like_projection_of_the_residual_width_is_not_copied(two_threads):
    """In a part with a config (hidden size 16), a narrowing projection of the residual width (16 -> 4, as GQA's
    k / v) gets no input copy, the MLP's down projection (48 -> 16, after the GELU) still does; removing the layout
    drops the setting."""
    torch.manual_seed(0)
    holder = nn.Module()
    head = holder.audio_head = nn.Sequential(nn.Linear(16, 4), nn.Linear(4, 48), nn.GELU(), nn.Linear(48, 16))
    head.config = types.SimpleNamespace(hidden_size=16)
    assert apply_decode_layout(holder) == 3
    assert [head[i].decode_copies_input for i in (0, 1, 3)] == [False, False, True]
    x = torch.randn(1, 16)
    with torch.no_grad():
        expected = F.linear(
            F.gelu(F.linear(F.linear(x, head[0].weight, head[0].bias), head[1].weight, head[1].bias)),
            head[3].weight,
            head[3].bias,
        )
        graph, out = _graph_of(head, x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    found = [str(node.target) for node in graph.nodes if node.op == "call_function"]
    assert sum("baichuan_audio.materialize" in t for t in found) == 1 and sum("bmm" in t for t in found) == 3
    assert remove_decode_layout(holder) == 3 and not hasattr(head[0], "decode_copies_input")
