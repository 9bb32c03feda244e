"""The column-major decode layout (``modeling/decode_layout.py``) on a tiny random model (fp32, CPU).

Independent expectations: the re-strided weights hold exactly the values they held (``torch.equal``) and only the
shapes the rule names are touched; generation with the layout gives the same tokens and codes as with the row-major
layout (greedy), and logits equal to 1e-5 (the BLAS only changes its summation order: float32 rounding of sums of
at most a few hundred terms of size ~1 is ~1e-6); a saved model loads back with contiguous, equal weights.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration
from transformers_baichuan_audio.modeling.decode_layout import (
    apply_decode_layout,
    row_major_layout,
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


def _column_major(weight: torch.Tensor) -> bool:
    return weight.t().is_contiguous() and not weight.is_contiguous()


def test_layout_restrides_exactly_the_tall_decode_weights_and_keeps_their_values():
    model = _model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    params = {name: p for name, p in model.named_parameters()}
    tall = [m for m in _decode_linears(model) if m.out_features >= m.in_features]
    assert tall and any(m.out_features < m.in_features for m in _decode_linears(model))  # both kinds exist

    changed = apply_decode_layout(model)

    assert changed == len(tall)
    for m in _decode_linears(model):
        assert _column_major(m.weight) == (m.out_features >= m.in_features), m
    for name, p in model.named_parameters():
        assert p is params[name]  # same Parameter objects (optimizers / PEFT keep working)
        assert torch.equal(p, before[name]), name
    # Neither the audio tokenizer nor the embeddings are touched.
    assert all(p.is_contiguous() for n, p in model.named_parameters() if "embed" in n or "audio_tokenizer" in n)
    assert apply_decode_layout(model) == 0  # idempotent
    assert row_major_layout(model) == len(tall)
    assert all(p.is_contiguous() for p in model.parameters())


def test_tied_lm_head_keeps_the_embedding_layout():
    model = _model()
    model.lm_head.weight = model.model.language_model.embed_tokens.weight  # tied, as tie_weights() makes it
    apply_decode_layout(model)
    assert model.lm_head.weight.is_contiguous()


def test_generation_is_unchanged_by_the_layout():
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
    assert all(p.is_contiguous() for p in model.parameters())
    laid = model.generate(prompt, **kwargs)  # auto: CPU + eval mode
    assert any(_column_major(m.weight) for m in _decode_linears(model))
    for row in range(2):
        assert torch.equal(laid.audio_codes[row][0], plain.audio_codes[row][0])
        for a, b in zip(laid.audio_logits[row], plain.audio_logits[row], strict=True):
            for x, y in zip(a, b, strict=True):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    text_ids = prompt[:, :-1]
    row_major_layout(model)
    plain_text = model.generate(text_ids, max_new_tokens=6, do_sample=False, decode_layout=False)
    laid_text = model.generate(text_ids, max_new_tokens=6, do_sample=False, decode_layout=True)
    assert torch.equal(plain_text, laid_text)


def test_saved_model_is_contiguous_and_equal(tmp_path):
    model = _model(seed=2)
    apply_decode_layout(model)
    model.save_pretrained(tmp_path)
    loaded = BaichuanAudioForConditionalGeneration.from_pretrained(tmp_path)
    reference = dict(model.named_parameters())
    for name, p in loaded.named_parameters():
        assert p.is_contiguous(), name
        assert torch.equal(p, reference[name]), name


def test_when_generate_applies_it():
    model = _model()
    assert wants_decode_layout(model, None)
    assert wants_decode_layout(model, False) is False
    model.train()
    assert not wants_decode_layout(model, None)
    assert wants_decode_layout(model, True)
    with pytest.raises(TypeError, match="decode_layout"):
        wants_decode_layout(model, "yes")
