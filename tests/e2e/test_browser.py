"""End to end in a real headless browser: the app served on 127.0.0.1, a wav uploaded, send pressed; the answer text
appears in the chat and the answer's audio element receives data (streamed). A screenshot is saved as a test
artifact (``$BAICHUAN_TEST_ARTIFACTS`` or pytest's tmp dir). And the audio plays while the answer is generated:
with generation paused after the first chunk's frames, the audio element already has media data.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` Python package (never its browser
download); ``.ci/run`` installs both. Skipped with the reason when either is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import threading
from pathlib import Path

import pytest
from demo_helpers import GREEDY, generation_paused_after, single_thread, tiny_model_and_processor, write_tone

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (apt-get install chromium)"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="playwright is not installed (pip install playwright)"
    ),
]


@pytest.fixture(params=["streamed", "whole"])
def served_demo(request):
    """The app on 127.0.0.1: audio streamed chunk by chunk (Gradio re-encodes streams with ffmpeg) or, the fallback
    without ffmpeg, sent whole at the end of the turn."""
    from transformers_baichuan_audio.demo import make_demo
    from transformers_baichuan_audio.tiny_random import NOISE_NOTICE

    streamed = request.param == "streamed"
    if streamed and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed: Gradio needs it to stream audio (apt-get install ffmpeg)")
    model, processor = tiny_model_and_processor()
    demo = make_demo(model, processor, GREEDY, notice=NOISE_NOTICE, stream_audio=streamed)
    demo.streamed = streamed
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, share=False, quiet=True)
    try:
        yield demo
    finally:
        demo.close()


@contextlib.contextmanager
def question_sent(url: str, wav: str):
    """A headless chromium page on the app at ``url``: ``wav`` uploaded as the question, send pressed."""
    from playwright.sync_api import sync_playwright

    with single_thread(), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.click('#audio_in button[aria-label="Upload file"]', timeout=60_000)
            page.set_input_files("#audio_in input[type=file]", wav)
            page.wait_for_selector("#audio_in audio", state="attached", timeout=30_000)
            page.click("#send")
            yield page
        finally:
            browser.close()


def test_upload_send_text_and_audio_arrive(served_demo, tmp_path):
    wav = write_tone(tmp_path / "question.wav")
    artifacts = Path(os.environ.get("BAICHUAN_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    assert served_demo.local_url.startswith("http://127.0.0.1:")
    with question_sent(served_demo.local_url, wav) as page:
        page.wait_for_function(
            "() => { const b = document.querySelectorAll('#chatbot [data-testid=bot]');"
            " return b.length && b[b.length - 1].innerText.trim().length > 0 }",
            timeout=120_000,
        )
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('Done')", timeout=180_000)
        answer = page.locator("#chatbot [data-testid=bot]").last.inner_text()
        # the answer's audio component got data: its download link serves the audio it plays
        href = page.wait_for_selector("#answer_audio a[download]", timeout=60_000).get_attribute("href")
        audio_bytes = page.request.get(href).body()
        duration = None
        if served_demo.streamed:  # the <audio> element plays the stream: decodable media of positive duration
            # (its duration grows as the streamed media is buffered: wait until it covers more than 1 s; measured
            # once at 0.98 s when read at the first metadata)
            page.wait_for_function(
                "() => { const a = document.querySelector('#answer_audio audio');"
                " return a && a.src && a.readyState >= 1 && a.duration > 1.0 }",
                timeout=60_000,
            )
            duration = page.evaluate("() => document.querySelector('#answer_audio audio').duration")
        shot = artifacts / f"e2e_voice_chat_{'streamed' if served_demo.streamed else 'whole'}.png"
        page.screenshot(path=str(shot), full_page=True)
    assert answer.strip() and "⚠️" not in answer
    # the tiny model speaks two ~2 s phrases: 16-bit 24 kHz wav (whole) is ~200 kB, the AAC stream a few kB
    assert len(audio_bytes) > 2000
    if served_demo.streamed:
        assert duration > 1.0
    else:
        assert audio_bytes[:4] == b"RIFF" and len(audio_bytes) > 2 * 24000 * 2
    assert shot.stat().st_size > 0


def test_audio_plays_while_the_answer_is_generated(tmp_path):
    """The spoken answer starts playing before the turn's generation ends: generation pauses right after the frame
    that completes the first audio chunk (frame 25) until the page's answer <audio> element has media data; at that
    moment the status still says the answer is being generated and ``generate`` has not returned. (Without
    streaming, the element would get data only after generation, so the wait for it would time out.)"""
    from transformers_baichuan_audio.demo import make_demo

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed: Gradio needs it to stream audio (apt-get install ffmpeg)")
    model, processor = tiny_model_and_processor()
    demo = make_demo(model, processor, GREEDY, stream_audio=True)
    wav, heard = write_tone(tmp_path / "question.wav"), threading.Event()
    with generation_paused_after(model, 25, heard, timeout=90) as state:
        demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, share=False, quiet=True)
        try:
            with question_sent(demo.local_url, wav) as page:
                page.wait_for_function(  # media of the first chunk (an HLS segment) appended to the element
                    "() => { const a = document.querySelector('#answer_audio audio');"
                    " return a && a.readyState >= 1 && a.buffered.length > 0 && a.buffered.end(0) > 0 }",
                    timeout=60_000,
                )
                buffered = page.evaluate("() => document.querySelector('#answer_audio audio').buffered.end(0)")
                status = page.locator("#status").inner_text()
                paused, done = state["paused"], state["done"]
                heard.set()
                page.wait_for_function(
                    "() => document.querySelector('#status').innerText.includes('Done')", timeout=120_000
                )
        finally:
            heard.set()
            demo.close()
    assert paused and not done  # generation was waiting at frame 25 when the page had the audio
    assert "Answering" in status and buffered > 0
    assert state["resumed_by_event"] is True  # the pause ended because the page had audio, not by the timeout
