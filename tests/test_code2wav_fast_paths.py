"""Fast paths of code2wav's flow matching (issue 24), each against a second code path:

* the U-Net attention of a single segment (every frame valid) applies the static chunk mask chunk by chunk, without a
  mask: equal to the masked attention that padded batches use;
* ``flow_matching_config.compute_dtype="bfloat16"`` runs the estimator under autocast: close to the fp32 estimator
  (a stated tolerance), but not equal to it (the autocast does take effect), and the Euler state stays fp32.
"""

from __future__ import annotations

import pytest
import torch
from code2wav_helpers import code2wav_one_thread  # noqa: F401  (autouse: 1 thread, as the other code2wav tests)
from huggingface_hub.errors import StrictDataclassClassValidationError

from transformers_baichuan_audio.configuration import BaichuanAudioConfig, BaichuanAudioFlowMatchingConfig
from transformers_baichuan_audio.modeling.code2wav import BaichuanAudioCode2Wav
from transformers_baichuan_audio.modeling.flow_matching import BaichuanAudioUNetAttention, euler_cfm_sample
from transformers_baichuan_audio.modeling.layers import build_attention_mask


def small_code2wav(chunk: int, channels: list[int]) -> BaichuanAudioCode2Wav:
    config = BaichuanAudioConfig.tiny().code2wav_config
    config.flow_matching_config.static_chunk_size = chunk
    config.flow_matching_config.channels = channels
    torch.manual_seed(0)
    return BaichuanAudioCode2Wav(config).eval()


@pytest.mark.parametrize("seq_len", [5, 8, 19, 24])
def test_chunked_attention_equals_the_chunk_mask(seq_len):
    model = small_code2wav(8, [32])
    attn = model.estimator.down_blocks[0].transformer_blocks[0].attn
    assert isinstance(attn, BaichuanAudioUNetAttention)
    x = torch.randn(2, seq_len, 32, generator=torch.Generator().manual_seed(1))
    mask = build_attention_mask(torch.ones(2, seq_len, dtype=torch.bool), seq_len, chunk_size=8)
    with torch.no_grad():
        masked = attn(x, mask)
        chunked = attn(x, None, chunk_size=8)
    # Same key sets, same softmax: only the summation order of the matmuls may differ (fp32 roundoff).
    torch.testing.assert_close(chunked, masked, rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels", [[32], [32, 32]])
def test_single_segment_estimator_equals_its_row_in_a_padded_batch(channels):
    """The dense (unmasked, chunk-by-chunk) path of one segment vs the masked path of the same segment padded in a
    batch with a longer one: the valid frames agree (the U-Net is causal; padded frames are masked)."""
    model = small_code2wav(8, channels)
    n_mels, short, long = 80, 20, 28
    g = torch.Generator().manual_seed(2)
    x, mu = torch.randn(2, n_mels, long, generator=g), torch.randn(2, n_mels, long, generator=g)
    mask = torch.ones(2, 1, long)
    mask[0, :, short:] = 0
    t = torch.tensor(0.3)
    with torch.no_grad():
        alone = model.estimator(x[:1, :, :short], torch.ones(1, 1, short), mu[:1, :, :short], t)
        batched = model.estimator(x * mask, mask, mu * mask, t)
    torch.testing.assert_close(alone, batched[:1, :, :short], rtol=0, atol=1e-5)


def test_bfloat16_compute_dtype_is_close_to_fp32_and_not_equal():
    model = small_code2wav(100, [32])
    codes = torch.stack([torch.randint(0, s, (30,)) for s in model.config.codebook_sizes], dim=1)
    with torch.no_grad():
        embeds = model.dequantize(codes)[None]
        hidden, lengths = model.decode_hidden(embeds, torch.tensor([30]))
        noise = torch.randn(1, 80, int(lengths[0]), generator=torch.Generator().manual_seed(3))
        exact, _ = model.flow_matching_mel(hidden, lengths, noise=noise)
        model.config.flow_matching_config.compute_dtype = "bfloat16"
        fast, _ = model.flow_matching_mel(hidden, lengths, noise=noise)
    assert fast.dtype == torch.float32  # the Euler state stays in the weights' dtype
    diff = (fast - exact).abs().max().item()
    # bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.004); over 10 Euler steps of a random U-Net the measured
    # error is ~1e-2 on a mel of range ~8, so 0.1 leaves a margin while catching a wrong path (errors of order 1).
    assert 0 < diff < 0.1, diff


def _casts_of_shape(shape: list[int], run) -> int:
    """Number of dtype casts (``aten::_to_copy``) of tensors of ``shape`` while ``run()`` runs (profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    return sum(1 for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes and e.input_shapes[0] == shape)


def test_bfloat16_casts_each_weight_once_per_decode_with_the_same_numbers():
    """The samplers enter the estimator's autocast once around all Euler steps: one cast of a weight per decode
    (autocast's cache), instead of one per step, and the numbers of a per-step autocast (the sampler called on the
    bare estimator)."""
    model = small_code2wav(100, [32])
    model.config.flow_matching_config.compute_dtype = "bfloat16"
    codes = torch.stack([torch.randint(0, s, (30,)) for s in model.config.codebook_sizes], dim=1)
    fm = model.config.flow_matching_config
    shape = list(model.estimator.time_mlp.linear_1.weight.shape)  # a weight's (2-D: no activation has it)
    with torch.no_grad():
        hidden, lengths = model.decode_hidden(model.dequantize(codes)[None], torch.tensor([30]))
        noise = torch.randn(1, 80, int(lengths[0]), generator=torch.Generator().manual_seed(3))
        out = {}
        once = _casts_of_shape(shape, lambda: out.update(mel=model.flow_matching_mel(hidden, lengths, noise=noise)[0]))
        mu, _ = model.prior(hidden, lengths)
        args = (noise, mu.transpose(1, 2).float(), torch.ones(1, 1, noise.shape[-1]), fm.diffusion_steps)
        args = (*args, fm.inference_cfg_rate, fm.t_scheduler)
        per_step = _casts_of_shape(shape, lambda: out.update(reference=euler_cfm_sample(model.estimator, *args)))
    assert once >= 1 and per_step == fm.diffusion_steps * once
    assert torch.equal(out["mel"], out["reference"])


def test_compute_dtype_is_validated():
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="compute_dtype must be one of"):
        BaichuanAudioFlowMatchingConfig(compute_dtype="int8")


def test_bfloat16_compute_dtype_streams_like_fp32():
    """The incremental streaming decoder (U-Net KV / conv context cached between chunks) under bf16 autocast: same
    chunk lengths as fp32 and a waveform close to it."""
    model = small_code2wav(100, [32])
    codes = torch.stack([torch.randint(0, s, (30,)) for s in model.config.codebook_sizes], dim=1)

    def stream():
        decoder = model.streaming_decoder(generator=torch.Generator().manual_seed(4))
        pieces = [decoder.push(codes[i : i + 1]) for i in range(codes.shape[0])]
        return [p for p in [*pieces, decoder.finish()] if p.numel()]

    with torch.no_grad():
        exact = stream()
        model.config.flow_matching_config.compute_dtype = "bfloat16"
        fast = stream()
    assert [p.shape for p in fast] == [p.shape for p in exact]
    wave_exact, wave_fast = torch.cat(exact), torch.cat(fast)
    assert torch.isfinite(wave_fast).all()
    # Relative waveform error well below 1 (a wrong path gives errors of the waveform's own size).
    assert (wave_fast - wave_exact).norm() / wave_exact.norm() < 0.2


def test_snake_inference_path_is_the_formula_bit_for_bit():
    """The vocoder's Snake computes ``x + sin(alpha x)^2 / alpha`` in one buffer when no gradient is needed: the same
    operations in the same order, so equal to the formula exactly; with gradients it stays out of place (the
    gradient of alpha equals the formula's)."""
    from transformers_baichuan_audio.modeling.vocoder import Snake

    snake = Snake(8)
    with torch.no_grad():
        snake.alpha.copy_(torch.rand(8, generator=torch.Generator().manual_seed(0)) * 2 + 0.05)
    x = torch.randn(2, 8, 301, generator=torch.Generator().manual_seed(1))
    alpha = snake.alpha.detach()[None, :, None]
    formula = x + (1.0 / (alpha + 1e-9)) * torch.sin(x * alpha).pow(2)
    with torch.no_grad():
        inplace = snake(x)
    assert torch.equal(inplace, formula) and inplace.data_ptr() != x.data_ptr()
    assert torch.equal(x, torch.randn(2, 8, 301, generator=torch.Generator().manual_seed(1)))  # input untouched
    trained = snake(x)
    assert torch.equal(trained.detach(), formula)
    (grad,) = torch.autograd.grad(trained.sum(), snake.alpha)
    a = snake.alpha[None, :, None]
    (expected,) = torch.autograd.grad((x + (1.0 / (a + 1e-9)) * torch.sin(x * a).pow(2)).sum(), snake.alpha)
    assert torch.equal(grad, expected)


@pytest.mark.parametrize(
    ("capability", "compute_dtype", "warned"),
    [("AVX2", "bfloat16", True), ("AVX2", "float16", True), ("AVX512", "bfloat16", False), ("AVX2", None, False)],
)
def test_half_precision_on_a_cpu_without_avx512_warns_that_it_is_slower(monkeypatch, capability, compute_dtype, warned):
    """On CPUs without AVX-512 torch's bf16 / fp16 products are far slower than fp32 (measured 0.3 against 169
    GFLOP/s): the opt-in compute_dtype then warns instead of silently making the decode ~7x slower."""
    from transformers_baichuan_audio.modeling import flow_matching

    messages = []
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(flow_matching.logger, "warning_once", messages.append)
    model = small_code2wav(8, [32])
    model.config.flow_matching_config.compute_dtype = compute_dtype
    with model.estimator.compute_context(torch.device("cpu")) as context:
        assert torch.is_autocast_enabled("cpu") == (compute_dtype is not None), context
    assert len(messages) == int(warned)
    if warned:
        assert f"compute_dtype='{compute_dtype}'" in messages[0] and capability in messages[0]
