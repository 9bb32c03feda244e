"""The scripts a user runs as they are shipped, each in its own process: the Space's ``spaces/app.py`` (what a
Hugging Face Space runs: ``python app.py``) serves the voice-chat app with the model named by
``$BAICHUAN_AUDIO_MODEL``, and ``examples/quickstart_tiny.py`` runs to its end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from transformers_baichuan_audio.tiny_random import NOISE_NOTICE

ROOT = Path(__file__).resolve().parents[1]

#: Seconds the Space may take to import gradio, build the tiny random model and start serving (about 10 s here).
START_TIMEOUT = 180


def _offline_env(**extra: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    env.pop("GRADIO_SERVER_NAME", None)
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
        return response.status, response.read().decode("utf-8", "replace")


def test_space_app_serves_the_voice_chat_with_the_model_of_its_environment(tmp_path):
    port = _free_port()
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)],
            cwd=ROOT / "spaces",
            env=_offline_env(BAICHUAN_AUDIO_MODEL="tiny-random"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline, status = time.monotonic() + START_TIMEOUT, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status, _ = _get(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                time.sleep(0.5)
        assert process.poll() is None, f"spaces/app.py exited with {process.returncode}:\n{log.read_text()}"
        assert status == 200, f"no answer on port {port} within {START_TIMEOUT} s:\n{log.read_text()}"
        # the app's own page: its config names the chat's components and the tiny model's noise notice
        _, config = _get(f"http://127.0.0.1:{port}/config")
        assert NOISE_NOTICE.split(".")[0] in config
        assert '"chatbot"' in config and '"audio"' in config
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_quickstart_example_runs_and_round_trips():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart_tiny.py")],
        env=_offline_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical logits: True" in result.stdout
