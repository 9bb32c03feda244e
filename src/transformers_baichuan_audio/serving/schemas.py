"""OpenAI request parsing and response shapes of the HTTP API (plain Python: no FastAPI, no torch in here).

Errors: :class:`APIError` carries an HTTP status and the OpenAI error body ``{"error": {"message", "type",
"param", "code"}}``; every bad request is one of these (400 bad input, 401 missing / wrong key, 404 unknown model,
413 too large, 429 queue full, 503 shutting down), never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
import uuid

import numpy as np

#: OpenAI's voice names: the model has its own voices (the voice system prompt), so these mean its default voice.
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar"}
)
INPUT_AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
#: ``audio.format`` of chat completions: ``wav`` (a whole file, non-streamed only) or ``pcm16`` (24 kHz mono
#: 16-bit little-endian samples; the only streamed format, as in OpenAI's API).
CHAT_AUDIO_FORMATS = ("wav", "pcm16")
#: ``response_format`` of /v1/audio/speech: ``wav`` (streamed: a header with open length, then samples) or ``pcm``.
SPEECH_FORMATS = ("wav", "pcm")
OUTPUT_RATE = 24000


class APIError(Exception):
    """An HTTP error with the OpenAI error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def decode_base64(data, param: str, max_bytes: int) -> bytes:
    """Bytes of a base64 string (400 when it is not one, 413 beyond ``max_bytes``)."""
    if not isinstance(data, str) or not data:
        raise bad_request("expected a non-empty base64 string", param)
    if len(data) * 3 // 4 > max_bytes:
        raise APIError(413, f"the audio is larger than the limit of {max_bytes} bytes", param=param, code="too_large")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the audio data is not valid base64", param) from None


def pcm16_bytes(samples: np.ndarray) -> bytes:
    """24 kHz float samples -> little-endian 16-bit PCM (clipped at full scale)."""
    wave = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    return np.round(wave * 32767.0).astype("<i2").tobytes()


def streaming_wav_header(rate: int = OUTPUT_RATE) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown length" (0xFFFFFFFF), for a streamed body."""
    import struct

    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


def wav_file_bytes(samples: np.ndarray, rate: int = OUTPUT_RATE) -> bytes:
    """A complete 16-bit mono WAV file."""
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16_bytes(samples))
    return buffer.getvalue()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def chat_chunk(cid: str, model: str, created: int, delta: dict, finish_reason=None) -> dict:
    """One ``chat.completion.chunk`` of a streamed answer."""
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


__all__ = [
    "APIError",
    "CHAT_AUDIO_FORMATS",
    "INPUT_AUDIO_FORMATS",
    "OPENAI_VOICES",
    "SPEECH_FORMATS",
    "bad_request",
    "chat_chunk",
    "decode_base64",
    "new_id",
    "now",
    "pcm16_bytes",
    "streaming_wav_header",
    "usage",
    "wav_file_bytes",
]
