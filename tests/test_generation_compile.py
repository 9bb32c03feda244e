"""The compiled decode path with inductor (``benchmarks/bench_generation.py --compile`` on CPU).

The speech loop's compiled path is checked against the eager loop in ``test_generation_loop.py`` with the ``eager``
backend (dynamo's graphs, eager numbers). This file runs the real inductor backend on the audio head (one small
graph per codebook position, the cheapest part to compile) with the CPU decode layout applied (its row blocks as
inductor's own loops, 2 threads): plain, the CPU setting of the benchmark, and with ``freezing``, whose frozen
graphs must still read and write the static cache of the CURRENT call. (Without the loop's preparation of the
caches, inductor bakes the first call's cache tensors into the frozen graphs and the second call reads a stale
position counter.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import CompileConfig, StaticCache

from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.modeling.audio_head import BaichuanAudioHead
from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration
from transformers_baichuan_audio.modeling.decode_layout import apply_decode_layout
from transformers_baichuan_audio.modeling.decode_steps import SpeechDecodeSteps, compile_kwargs, module_guard_filter

# Inductor's fused C++ kernels sum in another order than eager's: fp32 roundoff on logits of size ~1.
INDUCTOR_ATOL = 1e-4


def _model_with_head(num_codebooks: int):
    """The tiny model with a head of ``num_codebooks`` positions (fewer graphs to compile than 8; the graphs differ
    only by position)."""
    torch.manual_seed(0)
    config = BaichuanAudioConfig.tiny()
    model = BaichuanAudioForConditionalGeneration._from_config(config).eval()
    head_config = copy.deepcopy(config.audio_head_config)
    head_config.codebook_sizes = head_config.codebook_sizes[:num_codebooks]
    model.audio_head = BaichuanAudioHead(head_config).eval()
    return model


def _argmax(_, logits):
    return logits.argmax(-1)


def _assert_same_frame(got, expected, what) -> None:
    (codes, logits), (expected_codes, expected_logits) = got, expected
    assert torch.equal(codes, expected_codes), what
    for got_logits, want in zip(logits, expected_logits, strict=True):
        torch.testing.assert_close(got_logits, want, atol=INDUCTOR_ATOL, rtol=0)


@pytest.mark.parametrize("options", [None, {"freezing": True}], ids=["plain", "frozen"])
def test_inductor_head_steps_use_each_calls_cache(options, two_threads):
    model = _model_with_head(3)
    config, head = model.config, model.audio_head
    compile_config = CompileConfig(dynamic=False, mode=None, options=options)
    reference = copy.deepcopy(model)  # plain F.linear, eager
    assert apply_decode_layout(model) > 0  # as generate does on CPUs

    torch.compiler.reset()
    with torch.inference_mode():
        for call in range(3):  # three generate calls: a new LLM cache and new head caches each time
            hidden = torch.randn(2, config.text_config.hidden_size)
            cache = StaticCache(config=config.get_text_config(), max_cache_len=16)
            steps = SpeechDecodeSteps(model, cache, compile_config, batch_size=2)
            for frame in range(2):  # the per-call head cache is reused (reset) frame after frame
                with steps.settings():  # as the loop does: inductor's freezing active while tracing
                    got = steps.audio_frame(hidden + frame, _argmax)
                expected = reference.audio_head.decode_frame(hidden + frame, reference.model.audio_embed, _argmax)
                _assert_same_frame(got, expected, (call, frame))
    compiled = head.__dict__["_compiled_forward_position"][1]
    assert compiled is steps._compiled_head_step  # one compiled function, kept across calls


def test_compile_kwargs_filter_module_guards_and_drop_asserts_unless_told():
    kwargs = compile_kwargs(CompileConfig(dynamic=False, mode=None))
    assert kwargs["options"] == {"guard_filter_fn": module_guard_filter, "size_asserts": False}
    assert kwargs["dynamic"] is False and kwargs["backend"] == "inductor"
    own = compile_kwargs(CompileConfig(mode=None, options={"size_asserts": True, "freezing": True}))["options"]
    assert own["size_asserts"] is True and own["freezing"] is True
    eager = compile_kwargs(CompileConfig(mode=None, backend="eager"))["options"]
    assert "size_asserts" not in eager and "guard_filter_fn" in eager
    # torch.compile refuses a mode together with options: a mode's config goes through as it is.
    assert compile_kwargs(CompileConfig())["options"] is None


def _column_major(module):
    module.weight = torch.nn.Parameter(module.weight.detach().t().contiguous().t())  # same values, other strides


@pytest.mark.parametrize(
    "change",
    [_column_major, lambda m: m.register_parameter("bias", None)],
    ids=["strides", "no-bias"],
)
def test_compiled_head_steps_follow_changed_modules(change, two_threads):
    """The guard filter drops most guards on the modules (``module_guard_filter``) but not those that decide the
    graph: after a change of a classifier the steps recompile and equal the eager head (with every module guard
    dropped, the stale graph reads a column-major weight as row-major: logits off by ~2)."""
    model = _model_with_head(2)
    compile_config = CompileConfig(dynamic=False, mode=None)
    torch.compiler.reset()
    with torch.inference_mode():
        for call in range(2):
            if call:
                change(model.audio_head.heads[0])
            hidden = torch.randn(2, model.config.text_config.hidden_size)
            cache = StaticCache(config=model.config.get_text_config(), max_cache_len=16)
            steps = SpeechDecodeSteps(model, cache, compile_config, batch_size=2)
            with steps.settings():
                got = steps.audio_frame(hidden, _argmax)
            _assert_same_frame(got, model.audio_head.decode_frame(hidden, model.model.audio_embed, _argmax), call)


def test_compiled_head_step_has_room_for_four_batch_sizes():
    """The head step compiles one graph per codebook position and batch size; ``torch.compile(recompile_limit=...)``
    gives it ``4 * num_codebooks`` of them (dynamo's global default, 8, would stop at the 3rd batch size of a
    3-position head). With ``fullgraph=True`` the 5th batch size fails instead of silently running eagerly."""
    model = _model_with_head(3)
    compile_config = CompileConfig(fullgraph=True, dynamic=False, backend="eager", mode=None)
    torch.compiler.reset()
    with torch.inference_mode():
        for rows in range(1, 6):
            hidden = torch.randn(rows, model.config.text_config.hidden_size)
            cache = StaticCache(config=model.config.get_text_config(), max_cache_len=16)
            steps = SpeechDecodeSteps(model, cache, compile_config, batch_size=rows)
            if rows == 5:
                with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
                    steps.audio_frame(hidden, _argmax)
                break
            expected = model.audio_head.decode_frame(hidden, model.model.audio_embed, _argmax)
            _assert_same_frame(steps.audio_frame(hidden, _argmax), expected, rows)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["heads.0"]], ids=["attention", "classifier"])
def test_compiled_head_steps_follow_lora_injected_after_compiling(targets):
    """PEFT's LoRA layers put in place after the steps were compiled (as a fine-tuning script does after a compiled
    evaluation) are seen: the compiled frame equals the eager frame of the adapted head (backend ``eager``, same
    numbers: exact), not the frame before the adapter (non-zero LoRA weights change the logits by ~2)."""
    from peft import LoraConfig, inject_adapter_in_model

    model = _model_with_head(2)
    compile_config = CompileConfig(dynamic=False, backend="eager", mode=None)
    hidden = torch.randn(2, model.config.text_config.hidden_size)

    def compiled_frame():
        cache = StaticCache(config=model.config.get_text_config(), max_cache_len=16)
        steps = SpeechDecodeSteps(model, cache, compile_config, batch_size=2)
        with torch.inference_mode(), steps.settings():
            return steps.audio_frame(hidden, _argmax)

    torch.compiler.reset()
    before = compiled_frame()
    lora = LoraConfig(r=4, target_modules=targets, init_lora_weights=False)  # random A and B: the adapter acts
    inject_adapter_in_model(lora, model.audio_head)
    with torch.inference_mode():
        expected = model.audio_head.decode_frame(hidden, model.model.audio_embed, _argmax)
    assert not torch.allclose(before[1][0], expected[1][0], atol=0.1)  # the adapter changes the first logits
    codes, logits = compiled_frame()
    assert torch.equal(codes, expected[0])
    for got, want in zip(logits, expected[1], strict=True):
        assert torch.equal(got, want)
