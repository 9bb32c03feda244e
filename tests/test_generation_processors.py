"""Unit tests of the speech-generation logits processors and small helpers (formulas as the expectation)."""

from __future__ import annotations

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from transformers_baichuan_audio.modeling.generation import join_waveforms, split_tts_text
from transformers_baichuan_audio.modeling.logits_process import (
    IGNORED_ID,
    AudioEndOfSegmentLogitsProcessor,
    audio_codebook_processors,
    sampling_processors,
    select_tokens,
)


def test_end_of_segment_rule_slices_or_keeps_the_end_class():
    scores = torch.randn(3, 17)
    history = torch.empty(3, 0, dtype=torch.long)
    dropped = AudioEndOfSegmentLogitsProcessor(16, allow_end=False)(history, scores)
    assert torch.equal(dropped, scores[:, :16])  # the original slices logits[:, :-1]
    assert torch.equal(AudioEndOfSegmentLogitsProcessor(16, allow_end=True)(history, scores), scores)
    with pytest.raises(ValueError):
        AudioEndOfSegmentLogitsProcessor(15, allow_end=True)(history, scores)


def test_end_of_segment_min_frames_counts_unpadded_history():
    scores = torch.zeros(2, 5)
    history = torch.tensor([[1, 2, IGNORED_ID], [1, 2, 3]])
    out = AudioEndOfSegmentLogitsProcessor(4, allow_end=True, min_frames=3)(history, scores)
    assert out[0, 4] == -float("inf") and out[1, 4] == 0  # row 0 has 2 frames, row 1 has 3
    assert torch.equal(out[:, :4], scores[:, :4])


def test_repetition_penalty_ignores_padding():
    torch.manual_seed(0)
    scores = torch.randn(2, 10)
    histories = [[1, 3, 3], [7]]
    padded = torch.tensor([[1, 3, 3], [7, IGNORED_ID, IGNORED_ID]])
    out = sampling_processors(False, None, None, None, 1.3)(padded, scores.clone())
    for row, history in enumerate(histories):
        expected = scores[row].clone()
        for token in set(history):  # the formula: s < 0 -> s * p, else s / p (once per distinct token)
            value = scores[row, token]
            expected[token] = value * 1.3 if value < 0 else value / 1.3
        torch.testing.assert_close(out[row], expected, rtol=0, atol=0)


def test_processor_order_of_the_original():
    greedy = sampling_processors(False, 0.5, 5, 0.85, 1.3)
    assert [type(p) for p in greedy] == [RepetitionPenaltyLogitsProcessor]
    sample = sampling_processors(True, 0.5, 5, 0.85, 1.3)
    assert [type(p) for p in sample] == [
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    ]
    assert len(sampling_processors(True, 1.0, 0, 1.0, 1.0)) == 0  # neutral settings add nothing (as 4.45)
    per_codebook = audio_codebook_processors([8, 4, 4], True, 0.5, 5, 0.85, 1.3)
    assert len(per_codebook) == 3
    assert [p[0].allow_end for p in per_codebook] == [True, False, False]
    assert [p[0].codebook_size for p in per_codebook] == [8, 4, 4]


def test_select_tokens():
    scores = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 0.0]])
    assert select_tokens(scores, do_sample=False).tolist() == [1, 0]
    masked = torch.tensor([[-float("inf"), 0.0, -float("inf")]] * 4)
    draws = select_tokens(masked, do_sample=True, generator=torch.Generator().manual_seed(0))
    assert draws.tolist() == [1, 1, 1, 1]  # only the unmasked class can be drawn
    logits = torch.randn(4, 50)
    a = select_tokens(logits, True, torch.Generator().manual_seed(3))
    b = select_tokens(logits, True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_split_tts_text_like_the_base_tts_demo():
    assert split_tts_text("Hello, how are you today?") == ["Hello, how are you today?"]
    assert split_tts_text("嗯，普通片可以掰开吃，如果需要的话。谢谢") == [
        "嗯，普通片可以掰开吃，",
        "如果需要的话。谢谢",
    ]
    assert split_tts_text("") == []


def test_join_waveforms_reference_mode_inserts_a_crossfade_block():
    a, b = torch.ones(1000), torch.full((500,), 2.0)
    joined = join_waveforms([a, b], overlap=240, mode="reference")
    assert joined.shape[0] == 1000 + 240 + 500
    ramp = torch.linspace(0.0, 1.0, 240)
    torch.testing.assert_close(joined[1000:1240], 1.0 * (1 - ramp) + 2.0 * ramp, atol=1e-6, rtol=0)
    assert join_waveforms([a, torch.ones(100)], overlap=240, mode="reference").shape[0] == 1100  # too short


def test_join_waveforms_crossfade_adds_no_sample():
    """The default join overlaps the phrases: sum(lengths) - 240 per cross-faded junction, every sample outside the
    overlaps is a phrase's own sample, the overlap is the linear blend of the two (independent formula)."""
    a, b, c = torch.arange(1000.0), torch.full((500,), -3.0), torch.full((100,), 7.0)
    joined = join_waveforms([a, torch.zeros(0), b, c], overlap=240)  # the empty phrase (EOS first) is skipped
    assert joined.shape[0] == 1000 + 500 - 240 + 100  # c is too short for a cross-fade: concatenated
    assert (
        torch.equal(joined[:760], a[:760]) and torch.equal(joined[1000:1260], b[240:]) and torch.equal(joined[-100:], c)
    )
    w = torch.arange(240.0) / 239.0
    torch.testing.assert_close(joined[760:1000], a[760:] * (1 - w) + b[:240] * w, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="mode"):
        join_waveforms([a], mode="insert")


def test_join_waveforms_matches_the_demo_yields(reference_fixture):
    """The demo's ``wave_concat`` on the recorded segment waveforms gives its recorded int16 yields (reference mode)."""
    s2s = reference_fixture.expected("s2s")
    seg = [s2s[f"s2s0.seg{k}.wave"][0] for k in range(3)]

    def to_int16(wave):
        return (torch.clamp(wave, -0.99, 0.99) * 32768.0).to(torch.int16)

    def join(waves):
        return join_waveforms(waves, mode="reference")

    assert torch.equal(to_int16(join(seg[:2])), s2s["s2s0.yield1.wave_int16"])
    assert torch.equal(to_int16(join(seg[1:])[seg[1].shape[0] :]), s2s["s2s0.yield2.wave_int16"])


def test_apply_processors_equals_the_processor_list():
    from transformers_baichuan_audio.modeling.logits_process import apply_processors

    torch.manual_seed(0)
    scores, history = torch.randn(3, 40), torch.randint(0, 40, (3, 6))
    processors = sampling_processors(True, 0.7, 10, 0.9, 1.2)
    torch.testing.assert_close(
        apply_processors(processors, history, scores), processors(history, scores), rtol=0, atol=0
    )
