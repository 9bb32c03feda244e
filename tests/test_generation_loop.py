"""Behaviour of the speech generation loop on the tiny-a model (original weights, fp32, greedy unless stated).

* a batch of rows of different lengths and modes (chat with input speech, tts, text) gives, row by row, exactly
  what each row gives alone (greedy; independent expectation = the single-row runs);
* the streamer's text tokens and audio frames, concatenated, equal the returned result;
* two concurrent calls from two threads return what each returns alone (no state on the model);
* the default switch policy keeps every sampled token and feeds every frame (layout invariants), the reference
  policy drops exactly what the original drops;
* sampling is reproducible with a ``torch.Generator``.
"""

from __future__ import annotations

import threading

import pytest
import torch
from generation_helpers import (  # noqa: F401  (pytest fixtures)
    fixture_audio_codes,
    load_fixture_model,
    load_fixture_tokenizer,
    model_fixture,
    one_thread,
)

from transformers_baichuan_audio.modeling.streamer import BaichuanAudioStreamer

CAPS = dict(do_sample=False, text_segment_max_new_tokens=8, audio_max_frames=10, max_rounds=3)


@pytest.fixture(scope="module")
def prompts(reference_fixture):
    """(ids (S,), audio codes or None, mode) of four rows of different lengths and modes."""
    s2s = reference_fixture.expected("s2s")
    text = reference_fixture.expected("generate_text")
    audio = reference_fixture.expected("generate_audio")
    d = str(reference_fixture.path)
    return [
        (s2s["s2s1.text0.input_ids"][0], fixture_audio_codes(d, "en"), "chat"),
        (audio["tts1.input_ids"][0], None, "tts"),
        (text["text.input_ids"][0], None, "text"),
        (s2s["s2s0.text0.input_ids"][0], fixture_audio_codes(d, "zh"), "chat"),
    ]


def _left_pad(rows, pad_id):
    width = max(r.shape[0] for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.shape[0] :] = r
        mask[i, width - r.shape[0] :] = 1
    return ids, mask


def _valid(out, row, prompt_width, prompt_len):
    """The row's prompt + generated tokens without the left padding."""
    return out.sequences[row, prompt_width - prompt_len : int(out.sequence_lengths[row])]


@pytest.mark.parametrize("policy", ["default", "reference"])
def test_batched_rows_equal_single_runs(model, prompts, policy):
    kwargs = dict(CAPS, output_audio=True, switch_policy=policy, max_new_tokens=10)
    singles = []
    for ids, codes, mode in prompts:
        singles.append(model.generate(ids[None], audio_codes=codes, speech_mode=mode, **kwargs))
    batch_ids, mask = _left_pad([p[0] for p in prompts], model.config.pad_token_id)
    codes = torch.cat([p[1] for p in prompts if p[1] is not None])
    out = model.generate(
        batch_ids, attention_mask=mask, audio_codes=codes, speech_mode=[p[2] for p in prompts], **kwargs
    )
    assert sum(len(s.audio_codes[0]) for s in singles) >= 3  # the rows really produce audio
    for row, (single, (prompt, _, _)) in enumerate(zip(singles, prompts)):
        assert torch.equal(_valid(out, row, batch_ids.shape[1], prompt.shape[0]), single.sequences[0])
        assert len(out.audio_codes[row]) == len(single.audio_codes[0])
        for ours, alone in zip(out.audio_codes[row], single.audio_codes[0]):
            assert torch.equal(ours, alone)


def test_streamed_equals_returned(model, prompts, reference_fixture):
    ids, codes, _ = prompts[3]
    tokenizer = load_fixture_tokenizer(str(reference_fixture.path))
    streamer = BaichuanAudioStreamer(tokenizer=tokenizer)
    kwargs = dict(CAPS, output_audio=True, audio_codes=codes, tokenizer=tokenizer)
    out = model.generate(ids[None], streamer=streamer, **kwargs)
    events = list(streamer)  # generate() called streamer.end(), so iteration terminates

    cfg = model.config
    specials = {cfg.audiogen_start_token_id, cfg.audiogen_end_token_id, cfg.audio_pad_token_id, cfg.eos_token_id}
    generated = out.sequences[0, ids.shape[0] :].tolist()
    streamed_tokens = [t for e in events if e.kind == "text" for t in e.token_ids]
    assert streamed_tokens == [t for t in generated if t not in specials]
    assert "".join(e.text for e in events if e.kind == "text") == tokenizer.decode(streamed_tokens)
    streamed_codes = torch.cat([e.codes for e in events if e.kind == "audio" and e.codes is not None])
    assert torch.equal(streamed_codes, torch.cat(out.audio_codes[0]))
    assert sum(e.kind == "segment_end" for e in events) == len(out.audio_codes[0]) >= 2


def test_streamer_iterated_from_another_thread(model, prompts):
    ids, _, _ = prompts[1]
    streamer = BaichuanAudioStreamer(timeout=60)
    result = {}

    def run():
        result["out"] = model.generate(ids[None], streamer=streamer, output_audio=True, speech_mode="tts", **CAPS)

    thread = threading.Thread(target=run)
    thread.start()
    frames = [e.codes for e in streamer if e.kind == "audio"]
    thread.join()
    assert torch.equal(torch.cat(frames), result["out"].audio_codes[0][0])


def test_concurrent_calls_do_not_interfere(model, prompts):
    jobs = [(prompts[0], dict(CAPS)), (prompts[1], dict(CAPS, do_sample=True))]
    alone = []
    for (ids, codes, mode), kw in jobs:
        alone.append(
            model.generate(
                ids[None],
                audio_codes=codes,
                speech_mode=mode,
                output_audio=True,
                generator=torch.Generator().manual_seed(7),
                **kw,
            )
        )
    results = [None, None]

    def run(i):
        (ids, codes, mode), kw = jobs[i]
        results[i] = model.generate(
            ids[None],
            audio_codes=codes,
            speech_mode=mode,
            output_audio=True,
            generator=torch.Generator().manual_seed(7),
            **kw,
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ours, ref in zip(results, alone):
        assert torch.equal(ours.sequences, ref.sequences)
        assert all(torch.equal(a, b) for a, b in zip(ours.audio_codes[0], ref.audio_codes[0]))


def _segments_in_context(seq, cfg):
    """Number of <audio_pad> between each <audiogen_start> and the next <audiogen_end> (or the end)."""
    counts, inside = [], False
    for token in seq:
        if token == cfg.audiogen_start_token_id:
            counts.append(0)
            inside = True
        elif token == cfg.audiogen_end_token_id:
            inside = False
        elif inside and token == cfg.audio_pad_token_id:
            counts[-1] += 1
    return counts


def test_switch_policies_layout(model, prompts, reference_fixture):
    ids, codes, _ = prompts[3]
    cfg = model.config
    tokenizer = load_fixture_tokenizer(str(reference_fixture.path))
    kwargs = dict(CAPS, output_audio=True, audio_codes=codes, tokenizer=tokenizer)
    default = model.generate(ids[None], **kwargs)
    reference = model.generate(ids[None], switch_policy="reference", **kwargs)

    # Default: the context holds every frame (N pads for N frames), everything but the last token was fed.
    seq = default.sequences[0, ids.shape[0] :].tolist()
    frames = [s.shape[0] for s in default.audio_codes[0]]
    assert _segments_in_context(seq, cfg) == frames
    assert default.cache.get_seq_length() == default.sequences.shape[1] - 1
    # The text segment that hit the token cap keeps all its tokens and gets <audiogen_start> appended.
    first = seq.index(cfg.audiogen_start_token_id)
    assert first == CAPS["text_segment_max_new_tokens"]

    # Reference: the capped first text segment's last token was overwritten; a capped audio segment's last frame
    # is spoken but not fed (its placeholder became <audiogen_end>).
    ref_seq = reference.sequences[0, ids.shape[0] :].tolist()
    assert ref_seq.index(cfg.audiogen_start_token_id) == CAPS["text_segment_max_new_tokens"] - 1
    assert ref_seq[: first - 1] == seq[: first - 1]
    ref_frames = [s.shape[0] for s in reference.audio_codes[0]]
    in_context = _segments_in_context(ref_seq, cfg)
    assert in_context == [n - 1 if n == CAPS["audio_max_frames"] else n for n in ref_frames]


def test_sampling_is_reproducible_with_a_generator(model, prompts):
    ids, codes, _ = prompts[0]
    kwargs = dict(
        output_audio=True,
        audio_codes=codes,
        do_sample=True,
        text_segment_max_new_tokens=8,
        audio_max_frames=10,
        max_rounds=2,
    )
    a = model.generate(ids[None], generator=torch.Generator().manual_seed(1), **kwargs)
    b = model.generate(ids[None], generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(a.sequences, b.sequences)
    assert all(torch.equal(x, y) for x, y in zip(a.audio_codes[0], b.audio_codes[0]))


def test_waveforms_and_streamed_chunks_before_the_phrase_end(reference_fixture, prompts):
    """With code2wav, waveform chunks are streamed while the phrase is generated (one chunk per
    ``frames_per_chunk`` frames; decoded in the generation loop, ``"inline"``: a consumer that comes after generation,
    as here, would catch up in one push, tests/test_streamer.py), and ``return_waveforms`` joins the per-segment
    decodes."""
    speech_model = load_fixture_model(str(reference_fixture.path), with_code2wav=True)
    code2wav = speech_model.code2wav
    per_chunk = code2wav.streaming_decoder().frames_per_chunk
    ids, _, _ = prompts[1]
    streamer = BaichuanAudioStreamer(
        code2wav=code2wav, decoder_kwargs={"generator": torch.Generator().manual_seed(0)}, decode_priority="inline"
    )
    frames = per_chunk + 5  # end-of-audio suppressed until then, so the segment spans more than one decoder chunk
    out = speech_model.generate(
        ids[None],
        output_audio=True,
        speech_mode="tts",
        do_sample=False,
        audio_min_frames=frames,
        audio_max_frames=frames,
        return_waveforms=True,
        streamer=streamer,
    )
    events = list(streamer)
    segment = out.audio_codes[0][0]
    assert segment.shape[0] == frames
    audio = [e for e in events if e.kind == "audio"]
    first_wave = next(i for i, e in enumerate(audio) if e.waveform is not None and e.waveform.numel())
    assert audio[first_wave].codes is not None and first_wave == per_chunk - 1  # pushed by the chunk's last frame
    streamed = torch.cat([e.waveform for e in audio if e.waveform is not None])
    decoded = code2wav.decode(segment, generator=torch.Generator().manual_seed(0)).audio_values[0]
    assert streamed.shape == decoded.shape  # same length as a one-shot decode (values: code2wav's tests)
    assert out.waveforms[0].shape == decoded.shape


def test_default_policy_closes_a_final_phrase(model, prompts):
    """End-of-text after a phrase: the phrase is spoken, then ``<audiogen_end><|endoftext|>`` close the answer
    (the reference policy ends on the audio placeholder instead, as the demo does)."""
    ids, codes, _ = prompts[0]  # s2s1: its first text segment ends with end-of-text after 7 tokens
    cfg = model.config
    default = model.generate(ids[None], output_audio=True, audio_codes=codes, **CAPS)
    reference = model.generate(ids[None], output_audio=True, audio_codes=codes, switch_policy="reference", **CAPS)
    seq, ref_seq = default.sequences[0].tolist(), reference.sequences[0].tolist()
    frames = default.audio_codes[0][0].shape[0]
    assert len(default.audio_codes[0]) == 1
    assert seq[-2:] == [cfg.audiogen_end_token_id, cfg.eos_token_id]
    assert ref_seq[-1] == cfg.audio_pad_token_id and ref_seq == seq[: len(ref_seq)]  # same tokens up to there
    assert _segments_in_context(seq[ids.shape[0] :], cfg) == [frames]


def test_static_cache_equals_dynamic_cache(model, prompts):
    """``cache_implementation="static"`` (fixed-shape cache for torch.compile / CUDA graphs) changes nothing: the
    left-padded batch of all four rows gives the same tokens and codes as with the default dynamic cache."""
    rows = [p[0] for p in prompts]
    ids, mask = _left_pad(rows, model.config.pad_token_id)
    codes = torch.cat([p[1] for p in prompts if p[1] is not None])
    kwargs = dict(CAPS, output_audio=True, attention_mask=mask, audio_codes=codes, speech_mode=[p[2] for p in prompts])
    dynamic = model.generate(ids, **kwargs)
    static = model.generate(ids, cache_implementation="static", static_cache_max_len=512, **kwargs)
    assert type(static.cache).__name__ == "StaticCache"
    assert torch.equal(dynamic.sequences, static.sequences)
    assert torch.equal(dynamic.sequence_lengths, static.sequence_lengths)
    for a, b in zip(dynamic.audio_codes, static.audio_codes, strict=True):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="cache_implementation"):
        model.generate(ids, cache_implementation="paged", **kwargs)


def test_compiled_decoding_equals_eager(model, prompts):
    """``compile_config`` with a static cache: the single-token LLM steps and the audio head's positions run through
    ``torch.compile`` (``fullgraph=True``: a graph break fails the test; backend ``eager``: dynamo captures the graphs
    that inductor would compile and runs them as captured, so the numbers are those of eager mode and the
    expectation is exact), giving the same tokens and codes as the eager dynamic-cache loop on a 2-row batch."""
    from transformers import CompileConfig

    from transformers_baichuan_audio.modeling.decode_steps import SpeechDecodeSteps

    rows = [prompts[0][0], prompts[1][0]]
    ids, mask = _left_pad(rows, model.config.pad_token_id)
    kwargs = dict(CAPS, output_audio=True, attention_mask=mask, audio_codes=prompts[0][1], speech_mode=["chat", "tts"])
    eager = model.generate(ids, **kwargs)
    compile_config = CompileConfig(fullgraph=True, dynamic=False, backend="eager", mode=None)
    calls = {"llm": 0, "head": 0}
    original_llm, original_frame = SpeechDecodeSteps.llm, SpeechDecodeSteps.audio_frame

    def count_llm(self, inputs):
        calls["llm"] += int(self.compiled and inputs["input_ids"].shape[1] == 1)
        return original_llm(self, inputs)

    def count_frame(self, hidden, select):
        calls["head"] += int(self.compiled)
        return original_frame(self, hidden, select)

    torch._dynamo.reset()
    try:
        SpeechDecodeSteps.llm, SpeechDecodeSteps.audio_frame = count_llm, count_frame
        compiled = model.generate(
            ids, cache_implementation="static", static_cache_max_len=256, compile_config=compile_config, **kwargs
        )
    finally:
        SpeechDecodeSteps.llm, SpeechDecodeSteps.audio_frame = original_llm, original_frame
    assert calls["llm"] > 10 and calls["head"] > 10  # the compiled path really ran
    assert torch.equal(eager.sequences, compiled.sequences)
    for a, b in zip(eager.audio_codes, compiled.audio_codes, strict=True):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    # Without a static cache the config is ignored (eager, same result).
    dynamic = model.generate(ids, compile_config=compile_config, **kwargs)
    assert torch.equal(eager.sequences, dynamic.sequences)
