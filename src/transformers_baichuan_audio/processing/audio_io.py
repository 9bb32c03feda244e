"""Audio files in and out, and the ``{"type": "audio", ...}`` content part shared by inference and training.

Reading (:func:`read_audio_file`): a missing file raises :class:`FileNotFoundError`; a file that is empty, not audio,
truncated (a WAV whose header promises more data than the file holds) or undecodable raises
:class:`InvalidAudioError` (a ``ValueError``) naming the file and the reason. Arrays are validated by the feature
extractor (empty, NaN/Inf, dtype); a sampling rate must be a positive integer.

Content part (:func:`audio_part_source`, ONE format for ``apply_chat_template`` and the training rows)::

    {"type": "audio", "path": "q.wav"}                              # a file (or "url": "https://...")
    {"type": "audio", "array": samples, "sampling_rate": 16000}     # the training key
    {"type": "audio", "audio": path | samples | {"array", "sampling_rate"} | {"bytes"|"path"}}
    {"type": "audio_codes", "codes": (frames, num_codebooks) ints}  # pre-computed / generated codes

``sampling_rate`` of an array may be omitted or ``None`` where a default rate applies (the processor's 16 kHz or the
``sampling_rate=`` given to ``apply_chat_template``); training rows have no default and need it.

Writing (:func:`save_wav`): the file is written under a temporary name in the target directory and renamed when
complete, so a failure never leaves a partial file; :func:`check_output_path` validates a path BEFORE any work.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from pathlib import Path

import numpy as np
import torch

INPUT_SAMPLING_RATE = 16000
OUTPUT_SAMPLING_RATE = 24000
#: Audio file extensions :func:`save_wav` writes (libsndfile formats).
OUTPUT_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
_TRUNCATED_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
_STREAMED_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}  # header sizes of streamed (unfinished-by-design) WAV files


class InvalidAudioError(ValueError):
    """Audio that cannot be used. ``source`` names the file (or part), ``reason`` says why."""

    def __init__(self, source, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class OutputPathError(ValueError):
    """An output path that cannot be written (checked before generating)."""


def read_audio_file(path) -> tuple[np.ndarray, int]:
    """``(float32 waveform (samples,) or (samples, channels), sampling_rate)`` of a local file (int PCM / 32768 like
    torchaudio) or, for ``http(s)://`` URLs, of the download resampled to 16 kHz by transformers' ``load_audio``.

    Raises :class:`FileNotFoundError` (missing file) or :class:`InvalidAudioError` (a directory, empty, not audio,
    truncated, undecodable or without samples).
    """
    if str(path).startswith(("http://", "https://")):
        from transformers.audio_utils import load_audio

        try:
            wave = load_audio(str(path), sampling_rate=INPUT_SAMPLING_RATE)
        except Exception as err:  # network and decoder errors of several types
            raise InvalidAudioError(path, f"could not be downloaded or decoded ({type(err).__name__}: {err})") from err
        return np.asarray(wave, dtype=np.float32), INPUT_SAMPLING_RATE
    import soundfile as sf

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "audio file not found", path)
    if os.path.isdir(path):
        raise InvalidAudioError(path, "is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise InvalidAudioError(path, "the file is empty")
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / TypeError for unreadable files
        raise InvalidAudioError(path, f"not an audio file that can be read (WAV, FLAC, OGG...): {err}") from err
    truncated = _TRUNCATED_DATA.search(getattr(info, "extra_info", "") or "")
    if (
        truncated
        and int(truncated.group(1)) > int(truncated.group(2))
        and int(truncated.group(1)) not in _STREAMED_SIZES
    ):
        raise InvalidAudioError(
            path,
            f"truncated: the header declares {truncated.group(1)} bytes of audio but the file holds "
            f"{truncated.group(2)}",
        )
    try:
        data, rate = sf.read(path, dtype="float32")
    except Exception as err:
        raise InvalidAudioError(path, f"could not be decoded (truncated or corrupt?): {err}") from err
    if data.shape[0] == 0:
        raise InvalidAudioError(path, "contains no audio samples")
    return data, int(rate)


def check_sampling_rate(rate, source="audio") -> int:
    """``rate`` as an int; :class:`InvalidAudioError` unless it is a positive integer."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or int(rate) <= 0:
        raise InvalidAudioError(source, f"sampling_rate must be a positive integer (Hz), got {rate!r}")
    return int(rate)


def audio_part_source(part: dict, default_rate: int | None = None):
    """``("codes", (frames, K) int64 tensor)`` or ``("wave", (array, rate))`` of a content part (see the module
    docstring for the accepted forms). ``default_rate``: rate of arrays without (or with a ``None``)
    ``sampling_rate``; None: such arrays are refused."""
    if part.get("type") == "audio_codes" or part.get("codes") is not None:
        codes = torch.as_tensor(np.asarray(part.get("codes"), dtype=np.int64))
        if codes.ndim != 2 or codes.shape[0] == 0:
            raise ValueError(f"audio_codes must be (frames > 0, num_codebooks), got shape {tuple(codes.shape)}")
        return "codes", codes
    src = next((part[k] for k in ("audio", "path", "array", "url") if part.get(k) is not None), None)
    if src is None:
        raise ValueError(
            f"an audio part needs 'path', 'array' (+ 'sampling_rate'), 'audio', 'url' or 'codes': {sorted(part)}"
        )
    if isinstance(src, (str, os.PathLike)):
        return "wave", read_audio_file(src)
    if isinstance(src, dict) and src.get("array") is None:  # datasets' Audio(decode=False): {"bytes", "path"}
        if src.get("bytes"):
            import soundfile as sf

            try:
                data, rate = sf.read(io.BytesIO(src["bytes"]), dtype="float32")
            except Exception as err:
                raise InvalidAudioError("audio bytes", f"not audio that can be decoded: {err}") from err
            return "wave", (data, int(rate))
        if src.get("path") is None:
            raise ValueError("an audio dict needs 'array' (+ 'sampling_rate'), 'bytes' or 'path'")
        return "wave", read_audio_file(src["path"])
    rate = src.get("sampling_rate") if isinstance(src, dict) else part.get("sampling_rate")
    array = src["array"] if isinstance(src, dict) else src
    if rate is None:
        if default_rate is None:
            raise ValueError("an audio part given as an array needs 'sampling_rate'")
        rate = default_rate
    return "wave", (array, check_sampling_rate(rate, "audio part"))


def check_output_path(path) -> Path:
    """``path`` as a ``Path`` if an audio file can be written there, else :class:`OutputPathError` (a missing or
    read-only directory, a directory given as the file, an extension other than .wav / .flac / .ogg)."""
    out = Path(path)
    if out.is_dir():
        raise OutputPathError(f"{out} is a directory: give a file name such as {out / 'answer.wav'}")
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise OutputPathError(f"{out}: unknown audio format {out.suffix!r}; use one of {sorted(OUTPUT_FORMATS)}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"cannot write {out}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {out}: the directory {parent} is not writable")
    return out


def save_wav(path: str | os.PathLike, waveform, sampling_rate: int = OUTPUT_SAMPLING_RATE) -> None:
    """Write a mono waveform (float in [-1, 1], torch or numpy, any leading singleton dims) as 16-bit PCM (WAV,
    FLAC; Vorbis for .ogg).

    The file appears complete or not at all (written to a temporary file in the same directory, then renamed).
    """
    import soundfile as sf

    out = check_output_path(path)
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().float().cpu().numpy()
    wav = np.clip(np.asarray(waveform, dtype=np.float32).reshape(-1), -1.0, 1.0)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
    audio_format, subtype = OUTPUT_FORMATS[out.suffix.lower()]
    try:
        sf.write(str(tmp), wav, sampling_rate, subtype=subtype, format=audio_format)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


__all__ = [
    "InvalidAudioError",
    "OutputPathError",
    "audio_part_source",
    "check_output_path",
    "check_sampling_rate",
    "read_audio_file",
    "save_wav",
]
