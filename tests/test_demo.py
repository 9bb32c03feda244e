"""The voice-chat app and its streaming turn, with the tiny random model (greedy, so every run is reproducible).

* the streaming turn: text deltas and audio chunks reach the consumer while generation is still running (the last
  LLM forward is held until the consumer has seen both), and the concatenated chunks equal the non-streamed answer
  of the same greedy turn (same tokens, same codes, decoded in one go) exactly: both paths run the same float ops
  on the same codes with the same seeded draws, so no tolerance is needed;
* the Gradio send function (the app's generator): 16-bit 24 kHz WAV chunks that concatenate to the same answer, the
  history keeps CODES, a second turn uses it; bad input (not audio, 10 minutes, silence, nothing) gives a message;
* the phrase join of the streamed chunks equals ``join_waveforms`` (the non-streamed join) on random chunkings.
"""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from demo_helpers import GREEDY, single_thread, tiny_model_and_processor, write_tone

from transformers_baichuan_audio.chat import (
    AudioInputError,
    InputLimits,
    PhraseJoiner,
    SpeechChat,
    load_user_audio,
    to_pcm16,
)
from transformers_baichuan_audio.demo import make_demo
from transformers_baichuan_audio.modeling.generation import join_waveforms


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def chat():
    model, processor = tiny_model_and_processor()
    return SpeechChat(model, processor, GREEDY, seed=0)


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    return write_tone(tmp_path_factory.mktemp("demo") / "question.wav")


@pytest.fixture(scope="module")
def reference(chat, wav):
    """The non-streamed answer and the number of LLM forwards it took."""
    calls = []
    forward = chat.model.model.forward
    chat.model.model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    try:
        answer = chat.answer([chat.user_message(wav)])
    finally:
        del chat.model.model.forward
    return answer, len(calls)


def test_streamed_turn_arrives_early_and_equals_non_streamed(chat, wav, reference):
    answer, num_forwards = reference
    assert answer.audio is not None and len(answer.codes) == 2  # two phrases (max_rounds=2)

    seen_both = threading.Event()
    released_by_consumer = []
    forward, calls = chat.model.model.forward, []

    def held_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == num_forwards:  # the last forward of the turn waits for the consumer
            released_by_consumer.append(seen_both.wait(timeout=60))
        return forward(*args, **kwargs)

    chat.model.model.forward = held_forward
    try:
        kinds, text, audio, done = set(), [], [], None
        for event in chat.stream_turn([chat.user_message(wav)]):
            kinds.add(event.kind)
            if {"text", "audio"} <= kinds:
                seen_both.set()
            if event.kind == "text":
                text.append(event.text)
            elif event.kind == "audio":
                audio.append(event.audio)
            else:
                done = event
    finally:
        del chat.model.model.forward
    assert released_by_consumer == [True], "text and audio chunks must arrive before generation ends"
    assert len(audio) >= 3  # several chunks, not one waveform at the end
    assert done is not None and not done.stopped
    assert done.text == answer.text and "".join(text) == answer.text
    assert all(torch.equal(a, b) for a, b in zip(done.codes, answer.codes, strict=True))
    assert torch.equal(torch.cat(audio), answer.audio)


def _app_functions(chat, **kwargs):
    demo = make_demo(chat.model, chat.processor, GREEDY, stream_audio=True, **kwargs)
    return {f.name: f.fn for f in demo.fns.values() if f.name}


def test_app_send_streams_wav_chunks_and_keeps_codes(chat, wav, reference):
    answer, _ = reference
    respond = _app_functions(chat)["respond"]
    updates = list(respond(wav, "", "邻家女声", True, []))
    chunks = [u[1] for u in updates if isinstance(u[1], bytes)]
    decoded = [sf.read(io.BytesIO(c), dtype="int16") for c in chunks]
    assert len(chunks) >= 3 and all(rate == 24000 for _, rate in decoded)
    assert np.array_equal(np.concatenate([d for d, _ in decoded]), to_pcm16(answer.audio))
    # text grows over several updates before the last one
    texts = [u[0][-1]["content"] for u in updates[1:]]
    assert len({t for t in texts}) > 3 and texts[-1] == answer.text
    chatbot, _, status, history = updates[-1][:4]
    assert status == "Done." and chatbot[-2]["content"].startswith("🎤")
    content = history[-1]["message"]["content"]
    stored = [c["codes"] for c in content if c["type"] == "audio_codes"]
    assert all(torch.equal(a, b) for a, b in zip(stored, answer.codes, strict=True))
    assert not any(c["type"] == "audio" for c in content)  # codes, never waveforms

    # the next turn continues the same session's history (typed, text-only answer)
    follow = list(respond(None, "and then?", "邻家女声", False, history))
    assert follow[-1][2] == "Done." and len(follow[-1][3]) == 4
    assert len(history) == 2  # the caller's state object is not mutated


@pytest.mark.parametrize("case", ["not_audio", "ten_minutes", "silence", "nothing"])
def test_bad_input_gets_a_message(chat, tmp_path, case):
    if case == "not_audio":
        value = tmp_path / "notes.wav"
        value.write_text("this is not audio")
    elif case == "ten_minutes":
        value = tmp_path / "long.wav"
        sf.write(str(value), np.full(600 * 8000, 1000, dtype=np.int16), 8000, subtype="PCM_16")
    elif case == "silence":
        value = tmp_path / "silence.wav"
        sf.write(str(value), np.zeros(16000, dtype=np.int16), 16000, subtype="PCM_16")
    else:
        value = None
    respond = _app_functions(chat)["respond"]
    updates = list(respond(None if value is None else str(value), "", "邻家女声", True, []))
    assert len(updates) == 1
    chatbot, audio, status, history = updates[0][:4]
    assert status.startswith("⚠️") and "Traceback" not in status and audio is None and history == []
    expected = {"not_audio": "not an audio file", "ten_minutes": "limit is 60 s", "silence": "silent"}
    assert expected.get(case, "record or upload") in status


def test_input_limits():
    with pytest.raises(AudioInputError, match="short"):
        load_user_audio((16000, np.full(100, 3000, dtype=np.int16)))
    wave, rate = load_user_audio((8000, np.full((8000, 2), 16384, dtype=np.int16)))
    assert rate == 8000 and wave.shape == (8000,) and np.allclose(wave, 0.5)  # int16 / 32768, channels averaged
    with pytest.raises(AudioInputError, match="MB"):
        load_user_audio(__file__, InputLimits(max_megabytes=1e-6))
    with pytest.raises(AudioInputError, match="limit is 5"):
        SpeechChat(None, None, limits=InputLimits(max_text_chars=5)).user_message(text="too long a message")


def test_asr_and_tts_tabs(chat, wav):
    fns = _app_functions(chat)
    text, status = fns["transcribe"](wav)
    assert status == "" and isinstance(text, str)
    (rate, pcm), status = fns["synthesize"]("Hello!")
    assert status == "" and rate == 24000 and pcm.dtype == np.int16 and pcm.size > 0
    assert fns["synthesize"]("  ")[1].startswith("⚠️")
    assert fns["transcribe"](None)[1].startswith("⚠️")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phrase_joiner_equals_join_waveforms(seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = [int(n) for n in torch.randint(1, 2000, (4,), generator=gen)] + [100, 240, 241]
    phrases = [torch.randn(n, generator=gen) for n in lengths[seed:]]
    joiner, out = PhraseJoiner(240), []
    for phrase in phrases:
        cuts = sorted(torch.randint(0, phrase.shape[0], (3,), generator=gen).tolist())
        for piece in torch.tensor_split(phrase, cuts):
            out.append(joiner.push(piece))
        out.append(joiner.end_phrase())
        if seed == 1:
            out.append(joiner.end_phrase())  # an empty phrase (end-of-audio first) changes nothing
    out.append(joiner.finish())
    torch.testing.assert_close(torch.cat(out), join_waveforms(phrases, 240), rtol=0, atol=0)


def test_stop_button_ends_only_its_own_sessions_turn(chat, wav, reference):
    fns = _app_functions(chat)
    mine, other = SimpleNamespace(session_hash="mine"), SimpleNamespace(session_hash="other")
    turn = fns["respond"](wav, "", "邻家女声", True, [], mine)
    assert next(turn)[2] == "Thinking…"
    assert next(turn)[2] == "Answering…"  # the first text delta
    fns["stop_turn"](other)  # another session's stop button: no effect on this turn
    fns["stop_turn"](mine)
    rest = list(turn)
    status, history = rest[-1][2], rest[-1][3]
    assert status == "Stopped." and len(history) == 2
    partial = history[-1]["message"]["content"]
    assert [c["type"] for c in partial] == ["text"]  # the text so far, no codes
    text = partial[0]["text"]
    assert reference[0].text.startswith(text) and len(text) < len(reference[0].text)


def test_tiny_random_model_matches_its_tokenizer():
    from transformers_baichuan_audio.configuration import TOKEN_ID_FIELDS
    from transformers_baichuan_audio.tiny_random import build_tiny_random

    model, processor = tiny_model_and_processor()
    config, tok = model.config, processor.tokenizer
    assert config.text_config.vocab_size == len(tok) == model.lm_head.weight.shape[0]
    assert all(getattr(config, name) == processor.special_token_ids[name] for name in TOKEN_ID_FIELDS)
    assert config.eos_token_id == tok.eos_token_id and model.code2wav is not None
    again, _ = build_tiny_random(seed=0)  # deterministic in the seed
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
