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

Several processes (``accelerate launch examples/precompute_codes.py``, or any ``rank`` / ``world_size``):
:func:`precompute_audio_codes_shard` gives rank ``r`` of ``W`` the contiguous block of rows
``[r * N // W, (r + 1) * N // W)`` and writes it, resumable as above, to ``output_dir/rank-0000r-of-0000W/``; once
every rank has finished, :func:`merge_shard_manifests` (rank 0) writes ONE ``output_dir/manifest.json`` that lists
all ranks' shards in row order (``"file": "rank-00000-of-00002/shard-00000.jsonl"``), so the directory trains like a
one-process output. Re-running with the same ``W`` resumes every rank; another ``W`` on a started directory is an
error (the blocks would differ).
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


def rank_dir_name(rank: int, world_size: int) -> str:
    """``rank-0000r-of-0000W``: the folder of one rank's shards."""
    return f"rank-{rank:05d}-of-{world_size:05d}"


def _check_world_size(out: Path, world_size: int) -> None:
    others = sorted({p.name.split("-of-")[1] for p in out.glob("rank-*-of-*") if p.is_dir()} - {f"{world_size:05d}"})
    if others:
        raise ValueError(
            f"{out} was started with {int(others[0])} processes, now {world_size}: resume with the same number of "
            "processes (the row blocks depend on it) or use a new output directory"
        )
    root = _read_manifest(out)
    if root["rows_done"] and "world_size" not in root:
        raise ValueError(f"{out} holds a one-process pre-computation; resume it with one process")


def shard_bounds(num_rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``rank`` among ``world_size`` contiguous blocks (sizes differ by at most one)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return rank * num_rows // world_size, (rank + 1) * num_rows // world_size


def precompute_audio_codes_shard(
    rows,
    audio_tokenizer,
    output_dir: str | os.PathLike,
    rank: int,
    world_size: int,
    **kwargs,
) -> dict:
    """:func:`precompute_audio_codes` of rank ``rank``'s block of ``rows`` (which must have a length: a list or a
    ``datasets.Dataset``) into ``output_dir/`` :func:`rank_dir_name`; resumable per rank. ``kwargs`` go to
    :func:`precompute_audio_codes`. Returns the rank's manifest (with its global ``start`` and ``stop``)."""
    import itertools

    if not hasattr(rows, "__len__"):
        raise TypeError("sharded pre-computation needs rows with a length (a list or a datasets.Dataset)")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_world_size(out, world_size)
    start, stop = shard_bounds(len(rows), rank, world_size)
    block = rows.select(range(start, stop)) if hasattr(rows, "select") else itertools.islice(rows, start, stop)
    manifest = precompute_audio_codes(block, audio_tokenizer, out / rank_dir_name(rank, world_size),
                                      total=stop - start, **kwargs)  # fmt: skip
    manifest.update(start=start, stop=stop)
    _write_atomic(out / rank_dir_name(rank, world_size) / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def merge_shard_manifests(output_dir: str | os.PathLike, world_size: int) -> dict:
    """Write ``output_dir/manifest.json`` listing the shards of all ``world_size`` ranks in row order (run once,
    after every rank finished). ``ValueError`` when a rank is missing or unfinished (resume it first) or the blocks
    do not join up."""
    out = Path(output_dir)
    shards, done = [], 0
    for rank in range(world_size):
        name = rank_dir_name(rank, world_size)
        if not (out / name / MANIFEST).exists():
            raise ValueError(f"rank {rank} has written nothing under {out / name}: run it before merging")
        part = _read_manifest(out / name)
        if not part.get("complete") or part["rows_done"] != part["stop"] - part["start"]:
            raise ValueError(f"rank {rank} is unfinished ({part['rows_done']} rows done): resume it before merging")
        if part["start"] != done:
            raise ValueError(f"rank {rank} starts at row {part['start']}, expected {done}")
        for shard in part["shards"]:
            shards.append({"file": f"{name}/{shard['file']}", "start": done + shard["start"], "rows": shard["rows"]})
        done += part["rows_done"]
    manifest = {"rows_done": done, "shards": shards, "world_size": world_size, "complete": True}
    _write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


__all__ = [
    "MANIFEST",
    "encode_rows",
    "merge_shard_manifests",
    "precompute_audio_codes",
    "precompute_audio_codes_shard",
    "rank_dir_name",
    "read_precomputed",
    "shard_bounds",
]
