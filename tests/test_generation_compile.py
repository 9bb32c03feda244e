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
from transformers_baichuan_audio.modeling.decode_steps import SpeechDecodeSteps

# Inductor's fused C++ kernels sum in another order than eager's: fp32 roundoff on logits of size ~1.
INDUCTOR_ATOL = 1e-4


@pytest.mark.parametrize("options", [None, {"freezing": True}], ids=["plain", "frozen"])
def test_inductor_head_steps_use_each_calls_cache(options, two_threads):
    torch.manual_seed(0)
    config = BaichuanAudioConfig.tiny()
    model = BaichuanAudioForConditionalGeneration._from_config(config).eval()
    # A 3-codebook head (3 graphs to compile instead of 8; the graphs differ only by position).
    head_config = copy.deepcopy(config.audio_head_config)
    head_config.codebook_sizes = head_config.codebook_sizes[:3]
    model.audio_head = head = BaichuanAudioHead(head_config).eval()
    compile_config = CompileConfig(dynamic=False, mode=None, options=options)
    reference = copy.deepcopy(model)  # plain F.linear, eager
    assert apply_decode_layout(model) > 0  # as generate does on CPUs

    def argmax(_, logits):
        return logits.argmax(-1)

    torch.compiler.reset()
    with torch.inference_mode():
        for call in range(3):  # three generate calls: a new LLM cache and new head caches each time
            hidden = torch.randn(2, config.text_config.hidden_size)
            cache = StaticCache(config=config.get_text_config(), max_cache_len=16)
            steps = SpeechDecodeSteps(model, cache, compile_config, batch_size=2)
            for frame in range(2):  # the per-call head cache is reused (reset) frame after frame
                with steps.settings():  # as the loop does: inductor's freezing active while tracing
                    codes, logits = steps.audio_frame(hidden + frame, argmax)
                expected_codes, expected_logits = reference.audio_head.decode_frame(
                    hidden + frame, reference.model.audio_embed, argmax
                )
                assert torch.equal(codes, expected_codes), (call, frame)
                for got, want in zip(logits, expected_logits, strict=True):
                    torch.testing.assert_close(got, want, atol=INDUCTOR_ATOL, rtol=0)
    compiled = head.__dict__["_compiled_forward_position"][1]
    assert compiled is steps._compiled_head_step  # one compiled function, kept across calls
