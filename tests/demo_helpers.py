"""Helpers of the demo / CLI / browser tests: the tiny random model and small speech-like wav files."""

from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np
import soundfile as sf
from generation_helpers import single_thread  # noqa: F401  (re-exported for the demo tests)

from transformers_baichuan_audio.tiny_random import TINY_GENERATION_KWARGS, build_tiny_random

#: Greedy settings of every demo test, so that two runs of a turn give the same tokens and codes.
GREEDY = dict(TINY_GENERATION_KWARGS, do_sample=False)


@functools.lru_cache(maxsize=1)
def tiny_model_and_processor():
    return build_tiny_random(seed=0)


def write_tone(path, seconds: float = 2.0, rate: int = 16000, amplitude: float = 0.2) -> str:
    """A 220 Hz tone with a 2 Hz envelope (not silent, speech-like loudness) as 16-bit wav."""
    t = np.arange(int(seconds * rate)) / rate
    wave = amplitude * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 2 * t)
    sf.write(str(path), wave.astype(np.float32), rate, subtype="PCM_16")
    return str(path)


@contextlib.contextmanager
def generation_paused_after(model, frames: int, until: threading.Event, timeout: float = 20.0):
    """While active, ``model.generate`` pauses right after handing its ``frames``-th audio frame to the streamer,
    until ``until`` is set (at most ``timeout`` s). Yields a state dict: ``frames`` (handed over so far), ``paused``
    (waiting now), ``done`` (generate returned), ``resumed_by_event`` (the pause ended because ``until`` was set)."""
    original = model.generate
    state = {"frames": 0, "paused": False, "done": False, "resumed_by_event": None}

    def generate(*args, streamer=None, **kwargs):
        if streamer is not None:
            put_audio = streamer.put_audio

            def counted(row, codes):
                put_audio(row, codes)
                state["frames"] += codes.shape[0]
                if state["frames"] == frames:
                    state["paused"] = True
                    state["resumed_by_event"] = until.wait(timeout)
                    state["paused"] = False

            streamer.put_audio = counted
        try:
            return original(*args, streamer=streamer, **kwargs)
        finally:
            state["done"] = True

    model.generate = generate
    try:
        yield state
    finally:
        del model.generate  # back to the class's method
