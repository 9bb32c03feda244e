"""Generation parity with the original on the tiny-a fixture (fp32, greedy).

* text: the stock ``generate`` (``output_audio=False``) and the speech loop's ``"text"`` rows reproduce the
  original ``model.generate`` calls (base ASR demo with repetition penalty 1.3; a text chat prompt);
* audio: ``"tts"`` rows reproduce ``GenerationAudioTokens.generate`` (tts1; tts2 continuing tts1's KV cache with the
  demo's ``<audiogen_end>`` overwrite; a left-padded batch);
* the whole speech-chat loop of ``s2s_gradio_demo_cosy_multiturn.py`` under ``switch_policy="reference"`` with the
  fixture's caps (text <= 12 tokens, audio <= 15 frames, 3 rounds).

Token ids and codes must be identical. Float comparisons use 1e-4 (the issue's bar): the fixture's own re-runs differ
by ~1e-6 (2 threads / other allocation history); measured here ~2e-6.
"""

from __future__ import annotations

import pytest
import torch
from generation_helpers import audio_segment, fixture_audio_codes, load_fixture_tokenizer, model_fixture, one_thread  # noqa: F401  (pytest fixtures)

ATOL = 1e-4
REFERENCE_CAPS = dict(do_sample=False, switch_policy="reference", text_segment_max_new_tokens=12, max_rounds=3)


@pytest.fixture(scope="module")
def eos_code(reference_fixture):
    return reference_fixture.config["audio_config"]["vq_config"]["codebook_sizes"][0]


# ---------------------------------------------------------------------------------------------------------- text
@pytest.mark.parametrize("case", ["asr", "text"])
def test_text_generation_matches_original(model, reference_fixture, case):
    expected = reference_fixture.expected("generate_text")
    kwargs = {"repetition_penalty": 1.3, "audio_codes": reference_fixture.expected("audio_tokenizer")["short.codes"]}
    kwargs = kwargs if case == "asr" else {}
    out = model.generate(
        expected[f"{case}.input_ids"],
        attention_mask=expected[f"{case}.attention_mask"],
        max_new_tokens=16,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
        **kwargs,
    )
    assert torch.equal(out.sequences, expected[f"{case}.sequences"])
    top = torch.stack(out.scores, dim=1).topk(5, dim=-1)
    assert torch.equal(top.indices, expected[f"{case}.scores_top5_ids"])
    torch.testing.assert_close(top.values, expected[f"{case}.scores_top5"], atol=ATOL, rtol=0)

    # The speech loop's text-only rows give the same tokens (its own sampling path, 1-based positions) when the
    # audio-block tokens are not masked as the original did not mask them (its "text" answer contains
    # <audiogen_start> as a plain token).
    loop_kwargs = dict(output_audio=True, speech_mode="text", max_new_tokens=16, do_sample=False)
    loop_kwargs.update({"attention_mask": expected[f"{case}.attention_mask"], "repetition_penalty": 1.0, **kwargs})
    loop = model.generate(expected[f"{case}.input_ids"], suppress_audio_tokens=False, **loop_kwargs)
    assert torch.equal(loop.sequences, expected[f"{case}.sequences"])
    assert loop.audio_codes == [[]]
    # By default a text-only row never switches: the same tokens up to the original's first <audiogen_start>.
    masked = model.generate(expected[f"{case}.input_ids"], **loop_kwargs).sequences[0].tolist()
    original = expected[f"{case}.sequences"][0].tolist()
    switch = model.config.audiogen_start_token_id
    prompt = expected[f"{case}.input_ids"].shape[1]
    assert switch not in masked[prompt:]
    cut = original.index(switch, prompt) if switch in original[prompt:] else len(original)
    assert masked[:cut] == original[:cut]
    assert (case == "text") == (cut < len(original))  # the text case really exercises the mask


# ---------------------------------------------------------------------------------------------------------- audio
def _check_step_logits(logits_per_iteration, expected, prefix, row, iterations):
    for i in range(len(logits_per_iteration[0])):
        ours = torch.stack([step[i] for step in logits_per_iteration[:iterations]])
        torch.testing.assert_close(ours, expected[f"{prefix}.step_logits.{i}"][:iterations, row], atol=ATOL, rtol=0)


def test_tts_generation_matches_original(model, reference_fixture, eos_code):
    expected = reference_fixture.expected("generate_audio")
    kwargs = dict(output_audio=True, speech_mode="tts", do_sample=False, audio_max_frames=20, output_audio_logits=True)
    kwargs["switch_policy"] = "reference"

    tts1 = model.generate(expected["tts1.input_ids"], **kwargs)
    # The original returns one <audio_pad> per loop iteration (the last one never fed) and appends an all-EOS frame
    # to the codes; our segments hold the frames before the end-of-audio frame.
    assert torch.equal(tts1.sequences, expected["tts1.sequences"])
    assert torch.equal(tts1.audio_codes[0][0], audio_segment(expected["tts1.audios_sequences"][0], eos_code))
    _check_step_logits(tts1.audio_logits[0], expected, "tts1", 0, expected["tts1.step_logits.0"].shape[0])
    assert tts1.cache.get_seq_length() == tts1.sequences.shape[1] - 1  # everything but the placeholder was fed

    # 2nd chunk: last token := <audiogen_end>, next chunk appended, tts1's cache reused (only the suffix is fed).
    assert torch.equal(expected["tts2.input_ids"][0, : tts1.sequences.shape[1] - 1], tts1.sequences[0, :-1])
    tts2 = model.generate(expected["tts2.input_ids"], cache=tts1.cache, **kwargs)
    assert torch.equal(tts2.sequences, expected["tts2.sequences"])
    assert torch.equal(tts2.audio_codes[0][0], audio_segment(expected["tts2.audios_sequences"][0], eos_code))
    _check_step_logits(tts2.audio_logits[0], expected, "tts2", 0, expected["tts2.step_logits.0"].shape[0])


def test_tts_batch_matches_original(model, reference_fixture, eos_code):
    expected = reference_fixture.expected("generate_audio")
    out = model.generate(
        expected["ttsbatch.input_ids"],
        attention_mask=expected["ttsbatch.attention_mask"],
        output_audio=True,
        speech_mode="tts",
        do_sample=False,
        audio_max_frames=20,
        switch_policy="reference",
        output_audio_logits=True,
    )
    for row in range(2):
        segment = audio_segment(expected["ttsbatch.audios_sequences"][row], eos_code)
        assert torch.equal(out.audio_codes[row][0], segment)
        # The original keeps finished rows in the loop (fed zero codes); ours stops a row at its end-of-audio frame,
        # so the row's sequence is the original's up to that frame's placeholder.
        length = int(out.sequence_lengths[row])
        assert length == expected["ttsbatch.input_ids"].shape[1] + min(segment.shape[0] + 1, 20)
        assert torch.equal(out.sequences[row, :length], expected["ttsbatch.sequences"][row, :length])
        _check_step_logits(out.audio_logits[row], expected, "ttsbatch", row, len(out.audio_logits[row]))


# ---------------------------------------------------------------------------------------------------------- s2s loop
@pytest.mark.parametrize(("run", "wav", "segments"), [("s2s0", "zh", 3), ("s2s1", "en", 1)])
def test_speech_chat_reference_policy_matches_original(model, reference_fixture, eos_code, run, wav, segments):
    expected = reference_fixture.expected("s2s")
    fixture_dir = str(reference_fixture.path)
    out = model.generate(
        expected[f"{run}.text0.input_ids"],
        output_audio=True,
        audio_codes=fixture_audio_codes(fixture_dir, wav),
        tokenizer=load_fixture_tokenizer(fixture_dir),
        audio_max_frames=15,
        **REFERENCE_CAPS,
    )
    assert torch.equal(out.sequences, expected[f"{run}.final_sequences"])
    assert len(out.audio_codes[0]) == segments
    for k, codes in enumerate(out.audio_codes[0]):
        assert torch.equal(codes, audio_segment(expected[f"{run}.audio{k}.audios_sequences"][0], eos_code))
    # Every intermediate call of the demo saw a prefix of the final sequence, up to the demo's overwrites.
    final = expected[f"{run}.final_sequences"][0]
    for k in range(segments):
        call_input = expected[f"{run}.audio{k}.input_ids"][0]
        assert torch.equal(call_input, final[: call_input.shape[0]])


def test_chunked_tts_in_one_call_matches_the_demo(model, reference_fixture, eos_code):
    """``tts_chunks``: the base TTS demo's chunk loop (``<audiogen_end>`` overwrite, KV cache kept) in one call."""
    expected = reference_fixture.expected("generate_audio")
    n1 = expected["tts1.input_ids"].shape[1]
    n2 = expected["tts1.sequences"].shape[1]
    chunks = [expected["tts1.input_ids"][0, :-1], expected["tts2.input_ids"][0, n2:-1]]
    out = model.generate(
        tts_chunks=[chunks],
        output_audio=True,
        speech_mode="tts",
        do_sample=False,
        audio_max_frames=20,
        switch_policy="reference",
    )
    assert n1 == chunks[0].shape[0] + 1
    assert torch.equal(out.sequences, expected["tts2.sequences"])
    for k, name in enumerate(["tts1", "tts2"]):
        assert torch.equal(out.audio_codes[0][k], audio_segment(expected[f"{name}.audios_sequences"][0], eos_code))


def test_tts_from_text_chunks_like_the_demo(model, reference_fixture, eos_code):
    """A row given as text: split like the base TTS demo, tokenized, same result as the token chunks."""
    expected = reference_fixture.expected("generate_audio")
    prompts = reference_fixture.meta["generate_audio"]
    text = prompts["tts1"]["prompt"].replace("<audiogen_start_baichuan>", "")
    tokenizer = load_fixture_tokenizer(str(reference_fixture.path))
    assert tokenizer.encode(text, add_special_tokens=False) == expected["tts1.input_ids"][0, :-1].tolist()
    out = model.generate(
        tts_chunks=[text],
        tokenizer=tokenizer,
        output_audio=True,
        speech_mode="tts",
        do_sample=False,
        audio_max_frames=20,
        switch_policy="reference",
    )
    assert torch.equal(out.sequences, expected["tts1.sequences"])
    assert torch.equal(out.audio_codes[0][0], audio_segment(expected["tts1.audios_sequences"][0], eos_code))
