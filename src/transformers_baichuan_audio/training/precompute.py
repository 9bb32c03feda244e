"""Pre-compute the audio codes of a training dataset, so that training never runs the audio encoder.

Every waveform audio part (``{"type": "audio", "path" | "array" | "audio": ...}``) of every row's ``messages`` is
encoded by the audio tokenizer and replaced by ``{"type": "audio_codes", "codes": (frames, num_codebooks)}``; the rest
of the row is kept. Rows are processed in order, in batches (all clips of a batch in one encoder call), and written to
JSON-lines shards under ``output_dir``::

    output_dir/
      manifest.json          {"rows_done": N, "shards": [{"file": "shard-00000.jsonl", "start": 0, "rows": 256}, ...]}
      shard-00000.jsonl      one output row per line
      ...

Resuming: a shard is written to a temporary file, renamed into place, and only then recorded in the manifest (each
step atomic). A run that is interrupted (crash, Ctrl-C, pre-emption) leaves at most an unrecorded temporary file; the
next run with the same arguments reads the manifest, skips the ``rows_done`` rows already written and continues, so no
row is duplicated or lost. Load the result with ``datasets.load_dataset("json", data_files=f"{output_dir}/shard-*.jsonl")``
or :func:`read_precomputed`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..audio_encoding import encode_audio
from ..processing.feature_extraction import BaichuanAudioFeatureExtractor
from .data import _audio_source, _is_audio, _parts

MANIFEST = "manifest.json"


def _read_manifest(output_dir: Path) -> dict:
    path = output_dir / MANIFEST
    if not path.exists():
        return {"rows_done": 0, "shards": []}
    return json.loads(path.read_text(encoding="utf-8"))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _waveform_parts(row: dict) -> list[dict]:
    return [
        part
        for message in row.get("messages") or []
        for part in _parts(message.get("content"))
        if _is_audio(part) and part.get("codes") is None and part.get("type") != "audio_codes"
    ]


def encode_rows(rows: list[dict], audio_tokenizer) -> list[dict]:
    """Copies of ``rows`` whose waveform audio parts are replaced by ``audio_codes`` parts (one encoder call)."""
    rows = json.loads(json.dumps(_jsonable(rows)))  # deep copy, plain python
    parts = [p for row in rows for p in _waveform_parts(row)]
    if parts:
        fe = BaichuanAudioFeatureExtractor.from_tokenizer_config(audio_tokenizer.config)
        clips = [fe.prepare_waveform(*_audio_source(p)[1]) for p in parts]
        with torch.no_grad():
            codes = encode_audio(audio_tokenizer, clips, fe.sampling_rate, feature_extractor=fe)
        for part, c in zip(parts, codes, strict=True):
            part.clear()
            part.update({"type": "audio_codes", "codes": c.cpu().long().tolist()})
    return rows


def precompute_audio_codes(
    rows: Iterable[dict],
    audio_tokenizer,
    output_dir: str | os.PathLike,
    batch_size: int = 16,
    shard_size: int = 1024,
    total: int | None = None,
    progress: bool = True,
) -> dict:
    """Encode the audio of ``rows`` (an iterable of dataset rows, e.g. a ``datasets.Dataset``) into shards; resumable.

    Args:
        rows: the rows, always in the same order (the resume point is a row index).
        audio_tokenizer: :class:`BaichuanAudioTokenizerModel` (eval mode, on any device).
        output_dir: where ``manifest.json`` and the shards go (created if needed).
        batch_size: rows per encoder call. shard_size: rows per shard file (a multiple of ``batch_size`` is best).
        total: number of rows for the progress bar (default ``len(rows)`` when available).
        progress: show a tqdm progress bar.
    Returns:
        The final manifest.
    """
    from tqdm.auto import tqdm

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out)
    done = int(manifest["rows_done"])
    if total is None and hasattr(rows, "__len__"):
        total = len(rows)
    bar = tqdm(total=total, initial=done, disable=not progress, desc="audio codes", unit="row")
    pending: list[dict] = []
    batch: list[dict] = []

    def flush_shard():
        nonlocal done
        if not pending:
            return
        name = f"shard-{len(manifest['shards']):05d}.jsonl"
        _write_atomic(out / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pending))
        manifest["shards"].append({"file": name, "start": done, "rows": len(pending)})
        done += len(pending)
        manifest["rows_done"] = done
        _write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
        pending.clear()

    iterator: Iterator[dict] = iter(rows)
    for index, row in enumerate(iterator):
        if index < done:
            continue
        batch.append(row)
        if len(batch) == batch_size:
            pending.extend(encode_rows(batch, audio_tokenizer))
            bar.update(len(batch))
            batch = []
            if len(pending) >= shard_size:
                flush_shard()
    if batch:
        pending.extend(encode_rows(batch, audio_tokenizer))
        bar.update(len(batch))
    flush_shard()
    bar.close()
    manifest["complete"] = True
    _write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def read_precomputed(output_dir: str | os.PathLike) -> list[dict]:
    """All rows written so far, in order (the shards listed in the manifest)."""
    out = Path(output_dir)
    rows = []
    for shard in _read_manifest(out)["shards"]:
        with open(out / shard["file"], encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


__all__ = ["precompute_audio_codes", "encode_rows", "read_precomputed", "MANIFEST"]
