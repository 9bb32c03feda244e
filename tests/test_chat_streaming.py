"""Speech streamed while it is generated: the chat engine yields a phrase's first audio chunk while ``generate`` is
still running (the chunk schedule of the code2wav streaming decoder), and ``baichuan-audio chat --stream-chunks``
writes the chunks as they come.

How "while it is still running" is made deterministic: ``generate`` is wrapped so that, right after the frame that
completes the first chunk (frame 25 by default, ``first_chunk_frames`` otherwise) has been handed to the streamer,
the generation thread waits (up to 20 s) until the consumer has received an audio event. An engine that held the
audio back until generation ended would make that wait time out and the audio would come after generation ended;
the test asserts the opposite: the audio came while generation was paused, after exactly that many frames.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile as sf
import torch
from demo_helpers import GREEDY, generation_paused_after, tiny_model_and_processor

from transformers_baichuan_audio import cli, tiny_random
from transformers_baichuan_audio.chat import PhraseJoiner, SpeechChat


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_processor()


def _gated_turn(chat: SpeechChat, gate_after: int):
    """One spoken turn with ``generate`` paused after ``gate_after`` audio frames until audio has arrived: (events,
    record) with ``frames_at_first_audio``, ``generation_done_at_first_audio``, ``resumed_by_audio`` and
    ``text_events_after_first_audio``."""
    audio_seen = threading.Event()
    events, record = [], {"text_events_after_first_audio": 0}
    with generation_paused_after(chat.model, gate_after, audio_seen) as state:
        for event in chat.stream_turn([chat.user_message(text="hello")]):
            if event.kind == "audio" and not audio_seen.is_set():
                record["frames_at_first_audio"] = state["frames"]
                record["generation_done_at_first_audio"] = state["done"]
                audio_seen.set()
            elif event.kind == "text" and audio_seen.is_set():
                record["text_events_after_first_audio"] += 1
            events.append(event)
    record["resumed_by_audio"] = state["resumed_by_event"]
    return events, record


@pytest.mark.parametrize("first_chunk_frames", [None, 10])
def test_first_audio_arrives_while_the_answer_is_generated(tiny, first_chunk_frames):
    """The tiny model answers text, a 27-frame phrase, more text, a second phrase, more text (greedy). Default
    schedule: the first audio after 25 frames, before the phrase (and the turn) ended; with a provisional first chunk
    after 10 frames. Either way the streamed chunks concatenate to ``decode_answer`` of the final codes (same
    schedule), and to the one-shot phrase lengths minus the 240-sample cross-fade per junction (nothing inserted)."""
    chat = SpeechChat(*tiny, GREEDY, first_chunk_frames=first_chunk_frames)
    expected_frames = first_chunk_frames or 25
    events, record = _gated_turn(chat, expected_frames)
    assert record["resumed_by_audio"] is True  # generation was paused when the first audio arrived
    assert record["generation_done_at_first_audio"] is False
    assert record["frames_at_first_audio"] == expected_frames
    assert record["text_events_after_first_audio"] > 0  # text still streamed after the first audio
    kinds = [e.kind for e in events]
    assert kinds.index("audio") < max(i for i, k in enumerate(kinds) if k == "text")
    done = events[-1]
    assert done.kind == "done" and not done.stopped
    streamed = torch.cat([e.audio for e in events if e.kind == "audio"])
    assert torch.equal(streamed, chat.decode_answer(done.codes))
    phrases = [c.shape[0] for c in done.codes if c.shape[0]]
    assert len(phrases) == 2
    assert streamed.numel() == sum((4 * n - 1) * 480 for n in phrases) - 240
    first = next(e.audio for e in events if e.kind == "audio")
    # the first chunk: (4 * frames - 20) mel frames of 480 samples (20: the streaming decoder's lookahead, the
    # vocoder's receptive field 15 + 5 F0 convs), less the 240 held back for a cross-fade
    assert first.numel() == (4 * expected_frames - 20) * 480 - 240


def test_schedule_is_checked_up_front(tiny):
    with pytest.raises(ValueError, match="first_chunk_frames must be an int >= 6"):
        SpeechChat(*tiny, GREEDY, first_chunk_frames=5)


def test_cli_chat_stream_chunks(tiny, tmp_path, capsys, monkeypatch):
    """``chat --stream-chunks DIR``: one wav per streamed chunk and one stderr line each; together they are the
    answer's wav (the same 16-bit samples); ``--chunk-frames 50`` reaches the decoders, the same answer. A bad
    ``--first-chunk-frames`` / ``--chunk-frames`` is a one-line error, no traceback."""
    monkeypatch.setattr(tiny_random, "build_tiny_random", lambda seed=0, dtype=None: tiny)
    out, chunks = tmp_path / "answer.wav", tmp_path / "chunks"
    args = ["chat", "--model", "tiny-random", "--greedy", "--text", "hello", "--out", str(out)]
    assert cli.main([*args, "--stream-chunks", str(chunks)]) == 0
    err = capsys.readouterr().err
    files = sorted(chunks.glob("chunk_*.wav"))
    assert len(files) >= 3 and err.count("[audio chunk ") == len(files)
    pieces = [sf.read(f, dtype="int16")[0] for f in files]
    whole, rate = sf.read(out, dtype="int16")
    assert rate == 24000 and np.array_equal(np.concatenate(pieces), whole)
    with pytest.raises(SystemExit, match="--first-chunk-frames: first_chunk_frames must be an int >= 6"):
        cli.main([*args, "--first-chunk-frames", "5"])
    # Later chunks of 50 frames reach every phrase's decoder and give the same answer (the mel is the default's bit
    # for bit on this model, tests/test_code2wav_streaming.py; other vocoder windows: up to one 16-bit step).
    schedules = []
    streaming_decoder = type(tiny[0].code2wav).streaming_decoder

    def recording(self, **kwargs):
        schedules.append(kwargs.get("chunk_frames"))
        return streaming_decoder(self, **kwargs)

    monkeypatch.setattr(type(tiny[0].code2wav), "streaming_decoder", recording)
    out50, chunks50 = tmp_path / "answer50.wav", tmp_path / "chunks50"
    args50 = ["chat", "--model", "tiny-random", "--greedy", "--text", "hello", "--out", str(out50)]
    assert cli.main([*args50, "--stream-chunks", str(chunks50), "--chunk-frames", "50"]) == 0
    files50 = sorted(chunks50.glob("chunk_*.wav"))
    assert len(files50) >= 2 and schedules and set(schedules) == {50}
    whole50, _ = sf.read(out50, dtype="int16")
    assert np.array_equal(np.concatenate([sf.read(f, dtype="int16")[0] for f in files50]), whole50)
    assert whole50.shape == whole.shape and np.abs(whole50.astype(int) - whole).max() <= 1
    with pytest.raises(SystemExit, match="--chunk-frames: chunk_frames must be a positive multiple of 25"):
        cli.main([*args, "--chunk-frames", "30"])


def test_cli_decoding_left_chunks(tiny, tmp_path, capsys, monkeypatch):
    """``--decoding-left-chunks N`` sets code2wav's bounded-context policy on the loaded model (the setting
    ``tests/test_code2wav_left_chunks.py`` checks); a value below -1 is argparse's one-line error (exit 2)."""
    monkeypatch.setattr(tiny_random, "build_tiny_random", lambda seed=0, dtype=None: tiny)
    fm = tiny[0].code2wav.config.flow_matching_config
    monkeypatch.setattr(fm, "num_decoding_left_chunks", fm.num_decoding_left_chunks)  # restored afterwards
    args = ["chat", "--model", "tiny-random", "--greedy", "--text", "hello", "--out", str(tmp_path / "a.wav")]
    assert cli.main([*args, "--decoding-left-chunks", "1"]) == 0
    assert fm.num_decoding_left_chunks == 1
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "--decoding-left-chunks", "-2"])
    assert exc.value.code == 2 and "must be -1 (every earlier chunk) or >= 0" in capsys.readouterr().err


def _turn_threads(chat: SpeechChat, monkeypatch) -> tuple[list, dict[str, set[int]]]:
    """One spoken turn: (events, thread ids that ran forwards of the LLM / code2wav modules and phrase joins)."""
    threads: dict[str, set[int]] = {"llm": set(), "code2wav": set(), "join": set()}
    hooks = [
        module.register_forward_pre_hook(lambda *_, part=part: threads[part].add(threading.get_ident()))
        for part, root in (("llm", chat.model.model.language_model), ("code2wav", chat.model.code2wav))
        for module in root.modules()
    ]
    push = PhraseJoiner.push

    def recorded_push(joiner, chunk):
        threads["join"].add(threading.get_ident())
        return push(joiner, chunk)

    monkeypatch.setattr(PhraseJoiner, "push", recorded_push)
    try:
        events = list(chat.stream_turn([chat.user_message(text="hello")]))
    finally:
        monkeypatch.undo()
        for hook in hooks:
            hook.remove()
    return events, threads


def test_a_turns_tensor_work_runs_on_its_generation_thread(tiny, monkeypatch):
    """Default ``decode_priority="inline"``: generation, code2wav and the phrase joins of a turn all run on one
    thread, not the consuming one (see ``cpu_threads``), and the answer's audio is the same as with the chunks
    decoded and joined in the consuming thread (``"first_chunk"``)."""
    caller = threading.get_ident()
    events, threads = _turn_threads(SpeechChat(*tiny, GREEDY), monkeypatch)
    assert len(threads["llm"]) == 1 and caller not in threads["llm"]
    assert threads["code2wav"] == threads["join"] == threads["llm"]
    consumer_events, consumer_threads = _turn_threads(
        SpeechChat(*tiny, GREEDY, decode_priority="first_chunk"), monkeypatch
    )
    assert consumer_threads["code2wav"] == consumer_threads["join"] == {caller}
    assert caller not in consumer_threads["llm"]
    inline_audio = torch.cat([e.audio for e in events if e.kind == "audio"])
    consumer_audio = torch.cat([e.audio for e in consumer_events if e.kind == "audio"])
    assert inline_audio.numel() > 0 and torch.equal(inline_audio, consumer_audio)
    assert events[-1].text == consumer_events[-1].text
