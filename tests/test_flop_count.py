"""The benchmarks' FLOP counter (``benchmarks/flop_count.py``) counts attention on a CPU as torch counts it in matmuls.

torch's ``FlopCounterMode`` leaves the CPU SDPA kernel at 0; the benchmarks' roofline and per-chunk work figures
rely on the counter adding it. The independent expectation is torch's own count of the same attention written as
matmuls (the eager path), and, for a whole code2wav stream, the same stream with the eager attention kernel.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.modeling.code2wav import BaichuanAudioCode2Wav

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def flop_count():
    spec = importlib.util.spec_from_file_location("flop_count", BENCHMARKS / "flop_count.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def matmul_attention(query, key, value, mask=None):
    scores = torch.matmul(query, key.transpose(-1, -2)) * query.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(-1), value)


def torch_count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("q_shape", "kv_shape", "value_dim"),
    [((2, 8, 100, 64), (2, 8, 300, 64), 64), ((3, 7, 64), (3, 5, 64), 32), ((1, 4, 1, 16), (1, 4, 9, 16), 8)],
    ids=["4d", "3d-math-fallback", "one-query-narrow-value-math-fallback"],
)
def test_sdpa_is_counted_as_its_matmuls(flop_count, q_shape, kv_shape, value_dim):
    g = torch.Generator().manual_seed(0)
    query, key = torch.randn(q_shape, generator=g), torch.randn(kv_shape, generator=g)
    value = torch.randn((*kv_shape[:-1], value_dim), generator=g)
    mask = torch.rand((q_shape[-2], kv_shape[-2]), generator=g) > 0.3
    mask[:, 0] = True
    # torch counts 0 for the "4d" call (the CPU flash kernel) and the matmuls of the others (its math fallback: 3-D
    # inputs, a value width unlike the query's): the helper adds the first and must not count the others twice.
    expected = torch_count(lambda: matmul_attention(query, key, value))
    assert expected > 0
    with flop_count.flop_counter() as counter:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    assert counter.get_total_flops() == expected
    torch.testing.assert_close(out, matmul_attention(query, key, value, mask), rtol=1e-5, atol=1e-5)
    with flop_count.flop_counter() as counter:  # keyword arguments, and the counter's own matmuls alongside
        F.scaled_dot_product_attention(query=query, key=key, value=value)
        matmul_attention(query, key, value)
    assert counter.get_total_flops() == 2 * expected


def test_grouped_key_value_heads_count_as_repeated_heads(flop_count):
    g = torch.Generator().manual_seed(1)
    query, key, value = torch.randn(1, 6, 5, 8, generator=g), *torch.randn(2, 1, 2, 11, 8, generator=g)
    expected = torch_count(lambda: matmul_attention(query, key.repeat_interleave(3, 1), value.repeat_interleave(3, 1)))
    with flop_count.flop_counter() as counter:
        F.scaled_dot_product_attention(query, key, value, enable_gqa=True)
    assert counter.get_total_flops() == expected


def test_streamed_code2wav_counts_the_same_work_with_either_attention_kernel(flop_count):
    """A whole stream (decoder / prenet causal attention with masks, U-Net chunk attention over the carried keys) and
    a one-shot decode: the SDPA count equals torch's count of the eager kernel's matmuls, and the attention over
    earlier chunks makes the second chunk's work larger than the first's (the growth the streaming benchmark
    reports)."""
    config = BaichuanAudioConfig.tiny().code2wav_config
    torch.manual_seed(0)
    model = BaichuanAudioCode2Wav(config).eval()
    g = torch.Generator().manual_seed(0)
    frames = 2 * 25 + 3
    codes = torch.stack([torch.randint(0, s, (frames,), generator=g) for s in config.codebook_sizes], dim=1)
    noise = torch.randn(1, config.flow_matching_config.in_channels, 4 * frames, generator=g)

    def work(counter_factory):
        chunks = []
        stream = model.streaming_decoder(noise=noise, num_steps=2)
        for i in range(frames):
            with counter_factory() as counter:
                out = stream.push(codes[i : i + 1])
            if out.numel():
                chunks.append(counter.get_total_flops())
        stream.finish()
        with counter_factory() as counter:
            model.decode(codes, noise=noise[..., : 4 * frames - 1], num_steps=2)
        return chunks, counter.get_total_flops()

    with torch.no_grad():
        sdpa = work(flop_count.flop_counter)
        model.config._attn_implementation = "eager"  # every attention module reads its kernel from this config
        try:
            eager = work(lambda: FlopCounterMode(display=False))
        finally:
            model.config._attn_implementation = "sdpa"
    assert sdpa == eager
    chunks, one_shot = sdpa
    assert len(chunks) == 2 and chunks[1] > chunks[0] > 0 and one_shot > 0
