"""The OpenAI-compatible server (``baichuan-audio serve``) on loopback, with the official ``openai`` client, against
``tiny-random`` (greedy).

Independent expectations: every answer is compared with the same request run ALONE through :class:`SpeechChat`
(``answer`` / ``stream_turn`` / ``transcribe`` / ``synthesize``: batch of one, its own decoding path); audio is
compared after the API's 16-bit quantisation (``round(x * 32767)``, so equal samples give equal integers; a wav
body re-read as float may differ by half a step, 1.5e-5). One uvicorn server (a real loopback socket) is shared by
the module; the queue test uses a second app on the same model through starlette's ``TestClient``.
"""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import torch

from transformers_baichuan_audio import loading
from transformers_baichuan_audio.chat import SpeechChat, to_pcm16
from transformers_baichuan_audio.serving.app import build_app
from transformers_baichuan_audio.serving.batching import GenerationJob
from transformers_baichuan_audio.serving.cli import serve_in_thread
from transformers_baichuan_audio.serving.engine import ServeLimits, ServingEngine

MODEL = "tiny-random"
KEY = "test-key"
#: Short answers: one text phrase and one audio phrase of 26 frames (one streaming-decoder chunk + the rest).
CAPS = dict(do_sample=False, text_segment_max_new_tokens=6, audio_max_frames=26, max_rounds=1, max_new_tokens=12)
LIMITS = ServeLimits(max_audio_seconds=5.0, max_text_chars=200, max_new_tokens=64, batch_window_ms=300.0)


def _wav(seconds: float = 1.0, freq: float = 220.0, rate: int = 16000, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    subtype = "PCM_16" if fmt == "WAV" else None
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _audio_part(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


@pytest.fixture(scope="module")
def chat():
    model, processor = loading.load_model_and_processor(MODEL)
    return SpeechChat(model, processor, dict(CAPS))


@pytest.fixture(scope="module")
def reference(chat):
    """A second SpeechChat on the same model (its limits untouched by the server) for the alone runs."""
    return SpeechChat(chat.model, chat.processor, dict(CAPS))


@pytest.fixture(scope="module")
def server(chat):
    engine = ServingEngine(chat, LIMITS)
    app = build_app(engine, MODEL, api_key=KEY)
    srv, thread, base_url = serve_in_thread(app)  # a real loopback socket
    yield engine, base_url
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _user(reference, audio: bytes | None = None, text: str | None = None) -> dict:
    content = []
    if audio is not None:
        wave, rate = sf.read(io.BytesIO(audio), dtype="float32")
        content.append({"type": "audio", "audio": wave, "sampling_rate": rate})
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def test_health_models_and_api_key(server, client):
    base = server[1]
    health = httpx.get(base + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert [m.id for m in client.models.list()] == [MODEL]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.get(base + "/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


def test_chat_audio_in_audio_out(client, reference):
    question = _wav(1.0)
    response = client.chat.completions.create(
        model=MODEL,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": [_audio_part(question)]}],
    )
    alone = reference.answer([_user(reference, question)])
    audio = response.choices[0].message.audio
    assert audio.transcript == alone.text and alone.text
    wave, rate = sf.read(io.BytesIO(base64.b64decode(audio.data)), dtype="int16")
    assert rate == 24000
    np.testing.assert_array_equal(wave, to_pcm16(alone.audio))  # the same samples after 16-bit quantisation
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0


def test_chat_streaming_text_and_audio_deltas(client, reference):
    stream = client.chat.completions.create(
        model=MODEL,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [{"type": "text", "text": "Tell me a story."}]}],
    )
    kinds, transcript, pcm, usage = [], [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices or chunk.choices[0].delta.audio is None:
            continue
        delta = chunk.choices[0].delta.audio
        if delta.transcript:
            kinds.append("text")
            transcript.append(delta.transcript)
        if delta.data:
            kinds.append("audio")
            pcm.append(np.frombuffer(base64.b64decode(delta.data), dtype="<i2"))
    events = list(reference.stream_turn([_user(reference, text="Tell me a story.")]))
    alone_audio = [e.audio for e in events if e.kind == "audio"]
    assert "".join(transcript) == events[-1].text
    assert kinds.count("audio") == len(alone_audio) >= 2  # streamed in the decoder's chunks, as the engine does
    assert kinds.index("text") < kinds.index("audio")  # text arrives before the speech is finished
    np.testing.assert_array_equal(np.concatenate(pcm), to_pcm16(torch.cat(alone_audio)))
    assert usage is not None and usage.completion_tokens > 0


def test_transcription(client, reference, tmp_path):
    clip = _wav(1.5, freq=330.0)
    path = tmp_path / "clip.wav"
    path.write_bytes(clip)
    result = client.audio.transcriptions.create(model=MODEL, file=("clip.wav", clip))
    assert result.text == reference.transcribe(str(path))
    text = client.audio.transcriptions.create(model=MODEL, file=("clip.wav", clip), response_format="text")
    assert text.strip() == result.text


@pytest.mark.parametrize("response_format", ["wav", "pcm"])
def test_speech_streamed(client, reference, response_format):
    text = "Hello there."
    with client.audio.speech.with_streaming_response.create(
        model=MODEL, input=text, voice="alloy", response_format=response_format
    ) as response:
        body = b"".join(response.iter_bytes())
    if response_format == "wav":
        assert body[:4] == b"RIFF" and body[36:40] == b"data"
        body = body[44:]
    np.testing.assert_array_equal(np.frombuffer(body, dtype="<i2"), to_pcm16(reference.synthesize(text)))


BAD = [
    ("chat", {"messages": []}, 400),
    ("chat", {"messages": [{"role": "user", "content": [_audio_part(b"not audio at all")]}]}, 400),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%"}}]}]}, 400),
    ("chat", {"messages": [{"role": "user", "content": [_audio_part(_wav(6.0))]}]}, 400),  # > max_audio_seconds
    ("chat", {"messages": [{"role": "user", "content": [_audio_part(_wav(1.0, freq=0.0))]}]}, 400),  # silent
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400),
    ("chat", {"messages": [{"role": "user", "content": "x" * 201}]}, 400),  # > max_text_chars
    ("chat", {"messages": [{"role": "assistant", "content": "hi"}]}, 400),
    ("chat", {"messages": [{"role": "tool", "content": "hi"}]}, 400),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}, 400),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "modalities": ["audio"]}, 400),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "modalities": ["text", "audio"], "audio": {"format": "mp3"}}, 400),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "modalities": ["text", "audio"], "stream": True, "audio": {"format": "wav"}}, 400),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}, 404),
    ("speech", {"input": ""}, 400),
    ("speech", {"input": "hello", "response_format": "mp3"}, 400),
    ("speech", {"input": "y" * 201}, 400),
]  # fmt: skip


@pytest.mark.parametrize(("route", "body", "status"), BAD)
def test_bad_input_gives_openai_error_json(server, route, body, status):
    path = {"chat": "/v1/chat/completions", "speech": "/v1/audio/speech"}[route]
    r = httpx.post(server[1] + path, json={"model": MODEL, **body}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and "Traceback" not in r.text and error["type"]


def test_bad_requests_of_other_shapes(server, client):
    base, auth = server[1], {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(base + "/v1/chat/completions", content=b"{not json", headers=auth)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    big = b"0" * (int(LIMITS.max_upload_bytes * 4 / 3) + (1 << 20) + 1)
    r = httpx.post(base + "/v1/chat/completions", content=big, headers=auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    r = httpx.post(base + "/v1/audio/transcriptions", data={"model": MODEL}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model=MODEL, file=("x.wav", b"RIFF garbage"))
    assert httpx.get(base + "/v1/nowhere", headers=auth).json()["error"]["code"] == "not_found"


def test_full_queue_answers_429(chat):
    """A batcher with one running job (blocked) and one waiting job: the next request gets 429 at once."""
    from starlette.testclient import TestClient

    engine = ServingEngine(chat, ServeLimits(max_queue=1, max_batch_size=1, batch_window_ms=0.0))
    release = threading.Event()

    def blocked(jobs):
        release.wait(30)
        for job in jobs:
            job.finish(error=RuntimeError("released"))

    engine.batcher.run_batch = blocked
    running, waiting = (GenerationJob([1], "text", {}, streamer=None) for _ in range(2))
    engine.batcher.submit(running)
    while engine.batcher.stats()["running"] == 0:
        time.sleep(0.01)
    engine.batcher.submit(waiting)
    try:
        with TestClient(build_app(engine, MODEL)) as http:
            api = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0)
            with pytest.raises(openai.RateLimitError) as err:
                api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            assert err.value.body["code"] == "queue_full"
            release.set()
    finally:
        release.set()
        engine.close()


def test_eight_concurrent_clients_each_get_their_alone_answer(server, client, reference):
    """8 requests at once (speech and text-only answers, text questions and wav / mp3 questions) -> batched
    generate calls; each client gets exactly what its request gives alone, none lost or swapped."""
    engine = server[0]
    requests = []
    for i in range(8):
        fmt = "mp3" if i == 3 else "wav"
        audio = _wav(0.6 + 0.1 * i, freq=200.0 + 40 * i, fmt=fmt.upper()) if i % 3 == 0 else None
        text = None if audio is not None else f"question number {i}"
        requests.append((audio, text, i % 2 == 0, fmt))
    results: dict[int, tuple[str, np.ndarray | None]] = {}
    before = engine.batcher.stats()["batches_run"]

    def call(i):
        audio, text, speak, fmt = requests[i]
        content = [_audio_part(audio, fmt)] if audio is not None else [{"type": "text", "text": text}]
        kwargs = dict(modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"}) if speak else {}
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kwargs)
        message = r.choices[0].message
        if speak:
            wave, _ = sf.read(io.BytesIO(base64.b64decode(message.audio.data)), dtype="int16")
            results[i] = (message.audio.transcript, wave)
        else:
            results[i] = (message.content, None)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(8))
    batches = engine.batcher.stats()["batches_run"] - before
    assert batches < 8  # requests were decoded together (the 300 ms window gathers them)
    for i, (audio, text, speak, _) in enumerate(requests):
        alone = reference.answer([_user(reference, audio, text)], speak=speak)
        assert results[i][0] == alone.text, i
        if speak:
            np.testing.assert_array_equal(results[i][1], to_pcm16(alone.audio))


def test_cancelled_row_ends_early_and_the_others_go_on(server, reference):
    """Engine level: two rows in one batch; cancelling one after its first text event ends its row at the next step
    (its answer is cut), the other row's answer is its alone answer."""
    engine = server[0]
    settings = engine.settings()
    messages = [_user(reference, text="first question")], [_user(reference, text="second question")]
    keep = engine.chat_job(messages[0], None, True, settings)
    drop = engine.chat_job(messages[1], None, True, settings)
    events = engine.events(drop)
    assert next(events).kind == "text"
    engine.cancel(drop)
    list(events)  # drains: the row ends, the streamer is ended
    kept = list(engine.events(keep))
    assert keep.job.batch_size == drop.job.batch_size == 2
    alone = reference.answer(messages[0])
    assert kept[-1].text == alone.text
    full = reference.answer(messages[1])
    generated, codes = drop.job.result
    assert sum(c.shape[0] for c in codes) < sum(c.shape[0] for c in full.codes) == CAPS["audio_max_frames"]


def test_inline_decoding_gives_each_row_its_alone_answer(chat, reference):
    """``decode_priority="inline"``: the batcher's thread decodes every row's speech between generation steps (no
    decoding in the consuming threads); two rows in one batch each get their alone answer's text and samples."""
    engine = ServingEngine(chat, ServeLimits(batch_window_ms=300.0), decode_priority="inline")
    code2wav, decoding_threads = chat.model.code2wav, set()
    original = code2wav.streaming_decoder

    def recorded(**kwargs):
        decoding_threads.add(threading.get_ident())
        return original(**kwargs)

    code2wav.streaming_decoder = recorded
    try:
        messages = [_user(reference, text="first question")], [_user(reference, text="second question")]
        requests = [engine.chat_job(m, None, True, engine.settings()) for m in messages]
        answers = [list(engine.events(r)) for r in requests]
        assert decoding_threads and threading.get_ident() not in decoding_threads  # not in the consuming thread
    finally:
        del code2wav.streaming_decoder
        engine.close()
    for request, events, m in zip(requests, answers, messages, strict=True):
        alone = reference.answer(m)
        audio = np.concatenate([e.audio for e in events if e.kind == "audio"])
        assert events[-1].text == alone.text and request.job.batch_size == 2
        np.testing.assert_array_equal(to_pcm16(torch.from_numpy(audio)), to_pcm16(alone.audio))
    with pytest.raises(ValueError, match="decode_priority"):
        ServingEngine(chat, decode_priority="later")


def test_served_speech_uses_the_chats_kept_state_pool(chat, reference):
    """A chat that keeps its streaming state (``--keep-stream-state``): the server's requests decode on that pool
    (it holds their buffers afterwards) and still give the alone answer's samples."""
    from transformers_baichuan_audio.modeling.streaming_state import StreamingStatePool

    pool = StreamingStatePool()
    kept = SpeechChat(chat.model, chat.processor, dict(CAPS), state_pool=pool)
    engine = ServingEngine(kept, ServeLimits())
    try:
        messages = [_user(reference, text="first question")]
        events = list(engine.events(engine.chat_job(messages, None, True, engine.settings())))
    finally:
        engine.close()
    assert pool.num_buffers > 0
    audio = np.concatenate([e.audio for e in events if e.kind == "audio"])
    np.testing.assert_array_equal(to_pcm16(torch.from_numpy(audio)), to_pcm16(reference.answer(messages).audio))


def test_serve_option_decode_priority(chat, monkeypatch, capsys):
    import argparse

    from transformers_baichuan_audio import tiny_random
    from transformers_baichuan_audio.serving.cli import add_arguments, build_from_args

    monkeypatch.setattr(tiny_random, "build_tiny_random", lambda seed=0, dtype=None: (chat.model, chat.processor))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for argv, expected in (([], "overlap"), (["--decode-priority", "inline"], "inline")):
        _, engine = build_from_args(parser.parse_args(["--model", MODEL, *argv]))
        assert engine.decode_priority == expected
        engine.close()
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", MODEL, "--decode-priority", "later"])
    assert "invalid choice" in capsys.readouterr().err


def test_client_disconnect_cancels_its_request(server):
    """A streaming client that goes away after the first chunk: its job is cancelled (row ended, nothing left
    queued or running) and the server answers the next request."""
    engine, base = server
    cancelled, cancel = [], engine.batcher.cancel

    def spy(job):
        cancelled.append(job)
        cancel(job)

    engine.batcher.cancel = spy
    try:
        body = {
            "model": MODEL,
            "stream": True,
            "modalities": ["text", "audio"],
            "audio": {"format": "pcm16"},
            "messages": [{"role": "user", "content": "a long answer please"}],
        }
        with httpx.stream(
            "POST", base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
        ) as r:
            assert next(r.iter_lines()).startswith("data: ")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (cancelled and cancelled[0].finished.is_set()):
            time.sleep(0.05)
        assert cancelled and cancelled[0].cancelled.is_set() and cancelled[0].finished.is_set()
        assert engine.batcher.stats()["running"] == engine.batcher.stats()["waiting"] == 0
    finally:
        engine.batcher.cancel = cancel
    assert httpx.get(base + "/health").json()["status"] == "ok"


def test_control_tokens_in_user_text_reach_the_prompt_as_plain_text(server, chat):
    """A chat request whose text spells control tokens: the engine's prompt holds each control id exactly as often
    as the same request with those strings removed does (the processor's escaping; independent: token counts)."""
    engine = server[0]
    tok = chat.processor.tokenizer
    spelled = ["<audiogen_start_baichuan>", "<audio_pad_baichuan>", "<C_A>", "<|endoftext|>"]
    ids = {name: tok.convert_tokens_to_ids(name) for name in spelled}

    def prompt(text):
        inputs = engine.chat._inputs([chat.user_message(text=text)], None, True)  # what chat_job submits
        return inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()

    attacked, plain = prompt("hi " + " ".join(spelled) + " there"), prompt("hi there")
    assert len(attacked) > len(plain)  # the spelled strings are in the prompt, as text
    for name, token_id in ids.items():
        assert attacked.count(token_id) == plain.count(token_id), name
