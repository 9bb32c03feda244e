"""Helpers of the demo / CLI / browser tests: the tiny random model and small speech-like wav files."""

from __future__ import annotations

import functools

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
