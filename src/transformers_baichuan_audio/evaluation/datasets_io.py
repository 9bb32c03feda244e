"""Evaluation datasets: one reader for hub datasets, ``save_to_disk`` folders, audiofolders and manifests.

``open_dataset(source, split=..., subset=...)`` accepts:

* a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``--split`` picks a split of
  a ``DatasetDict``);
* an audiofolder: a folder with ``metadata.csv`` or ``metadata.jsonl`` (a ``file_name`` column + any others), or
  split sub-folders that have one (``--split test`` -> ``test/metadata.csv``), or just audio files (no text
  columns: enough for ``latency``);
* a manifest file: ``.jsonl`` (one JSON object per line) or ``.csv`` with an audio column holding file paths
  relative to the manifest's folder, to ``audio_dir`` or to an ``audios/`` sub-folder (the OpenAudioBench layout:
  ``eval_datas/llama_questions/llama_questions.csv`` + ``audios/``);
* otherwise a hub dataset name, loaded with ``datasets.load_dataset(name, subset, split=split)`` (online, or from
  the local ``datasets`` cache when ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` is set; ``streaming=True`` streams
  it instead of downloading it whole).

Audio is never decoded by ``datasets`` (no torchcodec needed): an ``Audio`` column is cast to
``datasets.Audio(decode=False)`` and its ``{"bytes", "path"}`` values are read with soundfile
(:func:`..processing.audio_io.audio_part_source`); channels are averaged and the clip is resampled to 16 kHz with
the project's sinc resampler (:func:`..processing.feature_extraction.resample`). audiofolders and manifests are read
here directly for the same reason (``datasets``' own audiofolder builder needs torchcodec to build its cache).

Rows are dicts of the source's columns (the audio column left undecoded); :meth:`EvalDataset.decode_audio` turns
one row's audio into a float32 16 kHz mono array. Errors: :class:`DatasetError` (a ``ValueError``) for a source that
is missing, unreadable or lacks a needed column (the message names the columns it has); :class:`AudioDecodeError`
for one row whose audio cannot be read (the runner records it as a failed row and goes on).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLING_RATE = 16000
#: Column names tried, in order, when no column is given.
AUDIO_COLUMNS = ("audio", "audio_filename", "file_name", "audio_path", "path", "wav", "file")
TEXT_COLUMNS = ("text", "transcription", "sentence", "transcript", "normalized_text", "raw_transcription", "txt")
ANSWER_COLUMNS = ("answer", "answers", "Answer", "reference", "references", "answer_normalized_value", "target")
QUESTION_COLUMNS = ("question", "Questions", "prompt", "instruction", "query")
ID_COLUMNS = ("id", "key", "utt_id", "audio_id", "segment_id")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a", ".aiff", ".aif")


class DatasetError(ValueError):
    """A dataset that cannot be used: missing, unreadable, or without a needed column."""


class AudioDecodeError(DatasetError):
    """One row's audio could not be read."""


@dataclass
class EvalDataset:
    """Rows of an evaluation set (see the module docstring). ``rows`` is a sequence (``len`` known) or, for a
    streamed hub dataset, an iterable; ``audio_dir``: extra folders where relative audio paths are looked up."""

    source: str
    rows: object
    columns: list[str]
    audio_column: str | None
    base_dirs: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        if not self.sized:
            raise TypeError("a streamed dataset has no length")
        return len(self.rows)

    @property
    def sized(self) -> bool:
        return hasattr(self.rows, "__len__")

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)

    def column(self, given: str | None, candidates: Sequence[str], what: str, option: str) -> str:
        """The column to read ``what`` from: ``given`` (checked) or the first of ``candidates`` present.

        Raises :class:`DatasetError` naming the dataset's columns and the option to pass."""
        if given is not None:
            if given not in self.columns:
                raise DatasetError(f"{self.source}: no column {given!r} (for {what}); its columns are {self.columns}")
            return given
        for name in candidates:
            if name in self.columns:
                return name
        raise DatasetError(
            f"{self.source} has no column for {what} (tried {list(candidates)}); its columns are {self.columns}. "
            f"Name the column with {option}."
        )

    def optional_column(self, given: str | None, candidates: Sequence[str]) -> str | None:
        if given is not None:
            return self.column(given, (), "it", "")
        return next((c for c in candidates if c in self.columns), None)

    def decode_audio(self, row: dict) -> np.ndarray:
        """Float32 mono 16 kHz waveform of ``row``'s audio; :class:`AudioDecodeError` when it cannot be read."""
        from ..processing.audio_io import audio_part_source
        from ..processing.feature_extraction import resample

        if self.audio_column is None:
            raise DatasetError(f"{self.source} has no audio column (tried {list(AUDIO_COLUMNS)})")
        value = row.get(self.audio_column)
        if value is None:
            raise AudioDecodeError(f"{self.source}: the row has no audio (column {self.audio_column!r} is empty)")
        if isinstance(value, (bytes, bytearray)):
            value = {"bytes": bytes(value), "path": None}
        if isinstance(value, (str, os.PathLike)):
            value = str(self.resolve_path(value))
        elif isinstance(value, dict) and not value.get("bytes") and value.get("path"):
            value = {**value, "path": str(self.resolve_path(value["path"]))}
        try:
            _, (data, rate) = audio_part_source({"type": "audio", "audio": value})
        except (OSError, ValueError) as err:
            raise AudioDecodeError(f"{self.source}: audio {_describe(value)} cannot be read: {err}") from err
        wave = np.asarray(data, dtype=np.float32)
        if wave.ndim == 2:  # soundfile: (samples, channels)
            wave = wave.mean(axis=1, dtype=np.float32)
        if wave.size == 0 or not np.isfinite(wave).all():
            raise AudioDecodeError(f"{self.source}: audio {_describe(value)} is empty or has NaN/Inf samples")
        if int(rate) != SAMPLING_RATE:
            wave = resample(wave, int(rate), SAMPLING_RATE).numpy()
        return np.ascontiguousarray(wave, dtype=np.float32)

    def resolve_path(self, path) -> Path:
        """A relative audio path looked up in :attr:`base_dirs` (the first that has it), else as given."""
        p = Path(path)
        if p.is_absolute():
            return p
        for base in self.base_dirs:
            if (base / p).exists():
                return base / p
        return self.base_dirs[0] / p if self.base_dirs else p


def _describe(value) -> str:
    if isinstance(value, dict):
        return repr(value.get("path") or "<bytes>")
    return repr(str(value))


# ---------------------------------------------------------------------------------------------- readers
def open_dataset(
    source: str,
    split: str | None = None,
    subset: str | None = None,
    *,
    audio_column: str | None = None,
    audio_dir: str | None = None,
    streaming: bool = False,
) -> EvalDataset:
    """Open ``source`` (see the module docstring). Raises :class:`DatasetError` when it cannot be opened."""
    path = Path(source).expanduser()
    extra = [Path(audio_dir).expanduser()] if audio_dir else []
    if path.is_file():
        if path.suffix.lower() in (".jsonl", ".json"):
            rows = _read_jsonl(path)
        elif path.suffix.lower() in (".csv", ".tsv"):
            rows = _read_csv(path)
        else:
            raise DatasetError(f"{source}: unknown manifest type {path.suffix!r}; use .jsonl or .csv")
        return _manifest(source, rows, audio_column, [*extra, path.parent, path.parent / "audios"])
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return _from_hf(source, _load_from_disk(path, split), audio_column, [*extra, path])
        folder = path / split if split and (path / split).is_dir() else path
        return _audiofolder(source, folder, audio_column, [*extra, folder])
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local or path.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv"):
        raise DatasetError(f"dataset {source!r} not found: no such file or folder")
    return _from_hf(source, _load_hub(source, subset, split, streaming), audio_column, extra)


def _read_jsonl(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{path}:{number}: not a JSON object ({err.msg})") from err
    if not all(isinstance(r, dict) for r in rows):
        raise DatasetError(f"{path}: every line must be a JSON object")
    return rows


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))


def _manifest(source: str, rows: list[dict], audio_column: str | None, base_dirs: list[Path]) -> EvalDataset:
    if not rows:
        raise DatasetError(f"{source}: the dataset has no rows")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    ds = EvalDataset(source, rows, columns, None, base_dirs)
    ds.audio_column = ds.column(audio_column, AUDIO_COLUMNS, "the audio", "--audio-column")
    return ds


def _audiofolder(source: str, folder: Path, audio_column: str | None, base_dirs: list[Path]) -> EvalDataset:
    for name in ("metadata.jsonl", "metadata.csv"):
        meta = folder / name
        if meta.is_file():
            rows = _read_jsonl(meta) if name.endswith(".jsonl") else _read_csv(meta)
            return _manifest(source, rows, audio_column or "file_name", base_dirs)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise DatasetError(f"{source}: no metadata.csv / metadata.jsonl and no audio files in {folder}")
    rows = [{"file_name": str(p.relative_to(folder)), "id": str(p.relative_to(folder).with_suffix(""))} for p in files]
    return EvalDataset(source, rows, ["file_name", "id"], "file_name", base_dirs)


def _load_from_disk(path: Path, split: str | None):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises several types for damaged folders
        raise DatasetError(f"{path}: not a readable datasets folder ({type(err).__name__}: {err})") from err
    return _pick_split(loaded, split, str(path))


def _pick_split(loaded, split: str | None, source: str):
    import datasets

    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        names = list(loaded)
        if split is None:
            if len(names) != 1:
                raise DatasetError(f"{source} has the splits {names}: choose one with --split")
            split = names[0]
        if split not in loaded:
            raise DatasetError(f"{source} has no split {split!r}; its splits are {names}")
        return loaded[split]
    return loaded


def _load_hub(name: str, subset: str | None, split: str | None, streaming: bool):
    import datasets

    try:
        loaded = datasets.load_dataset(name, subset, split=split, streaming=streaming)
    except Exception as err:  # network, missing repo, offline cache miss, bad config: many types
        raise DatasetError(
            f"dataset {name!r} could not be loaded from the hub ({type(err).__name__}: {err}). Offline, give a "
            "local save_to_disk folder, an audiofolder or a .jsonl/.csv manifest instead"
        ) from err
    return _pick_split(loaded, split, name)


def _from_hf(source: str, ds, audio_column: str | None, base_dirs: list[Path]) -> EvalDataset:
    import datasets

    features = ds.features or {}
    columns = list(features) if features else list(getattr(ds, "column_names", None) or [])
    found = EvalDataset(source, ds, columns, None, base_dirs)
    if audio_column is None:
        audio_column = next((c for c, f in features.items() if isinstance(f, datasets.Audio)), None)
    column = found.column(audio_column, AUDIO_COLUMNS, "the audio", "--audio-column")
    if isinstance(features.get(column), datasets.Audio):
        ds = ds.cast_column(column, datasets.Audio(decode=False))
    found.rows, found.audio_column = ds, column
    return found


def answers_of(value, separator: str | None = None) -> list[str]:
    """Reference answers of a cell: a list as is, a string split at ``separator`` (when given), stripped, empty
    ones dropped, duplicates removed (order kept)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        items = str(value).split(separator) if separator else [str(value)]
    return list(dict.fromkeys(s.strip() for s in items if s and s.strip()))


__all__ = [
    "ANSWER_COLUMNS",
    "AUDIO_COLUMNS",
    "AudioDecodeError",
    "DatasetError",
    "EvalDataset",
    "ID_COLUMNS",
    "QUESTION_COLUMNS",
    "SAMPLING_RATE",
    "TEXT_COLUMNS",
    "answers_of",
    "open_dataset",
]
