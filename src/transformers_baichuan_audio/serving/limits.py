"""The limits of the HTTP API (plain Python, importable without torch: the command line reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeLimits:
    """Limits of the HTTP API (every one refused with a 4xx JSON error).

    ``max_upload_bytes``: request bodies and decoded audio files; ``max_audio_seconds``: one input clip;
    ``max_text_chars``: one text part / the TTS input; ``max_new_tokens``: the most a request may ask for
    (``max_tokens``); ``max_batch_size`` / ``batch_window_ms``: dynamic batching; ``max_queue``: waiting requests
    before 429; ``max_messages``: messages of one chat request.
    """

    max_upload_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 60.0
    max_text_chars: int = 4000
    max_new_tokens: int = 1024
    max_batch_size: int = 8
    batch_window_ms: float = 20.0
    max_queue: int = 32
    max_messages: int = 64


__all__ = ["ServeLimits"]
