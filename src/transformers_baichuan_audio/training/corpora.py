"""Large corpora: rows streamed from JSON-lines files (never loaded whole), the paper's task mix, and a resumable
position.

* :func:`stream_rows` -- a ``datasets.IterableDataset`` over JSON-lines files (a file, a directory of ``*.jsonl``, or
  a pre-computed shards directory with ``manifest.json``). One ``datasets`` shard per file: with several processes
  each rank reads its own files (``datasets.distributed.split_dataset_by_node``, or accelerate's dispatching). Rows
  come out as the Python dicts of the file (no Arrow schema: the parts of ``content`` may differ row to row), ready
  for :class:`~.data.BaichuanAudioCollator`.
* :func:`mix_tasks` -- sample the next row from one stream per task with fixed weights (seeded, reproducible);
  :data:`PAPER_TASK_HOURS` are the hours of the paper's pre-training data per task (Table 4), and
  :func:`paper_task_weights` turns them into weights (the paper gives hours, not sampling weights: proportional to
  hours is this package's reading).
* Resume: ``stream.state_dict()`` after some rows, ``load_state_dict`` on a freshly built stream with the same
  arguments, and the stream continues with exactly the next row (``datasets``' resumable iteration; a test checks
  it). ``Trainer`` resumed from a checkpoint instead replays and skips the consumed batches, which lands on the same
  rows because the mix is seeded.
"""

from __future__ import annotations

import json
from pathlib import Path

from .data import TASKS

#: Hours of audio per task in the paper's audio-LLM pre-training data (Table 4; the 80 k h of pure audio have no
#: task of the dataset format).
PAPER_TASK_HOURS = {"asr": 185_000, "aqa": 21_000, "s2tt": 15_000, "intlv": 393_000, "tts": 51_000, "itts": 142_000}


def row_files(path: str | Path) -> list[str]:
    """The JSON-lines files of ``path``: the file itself, the shards of a pre-computed directory (its
    ``manifest.json``, in order), or every ``*.jsonl`` of a directory (sorted). ``FileNotFoundError`` when none."""
    p = Path(path)
    if p.is_file():
        return [str(p)]
    if (p / "manifest.json").exists():
        return [str(p / s["file"]) for s in json.loads((p / "manifest.json").read_text())["shards"]]
    files = sorted(str(f) for f in p.glob("*.jsonl")) if p.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no JSON-lines rows at {path} (a .jsonl file, a directory of them, or shards)")
    return files


def _read_rows(files: list[str]):
    for file in files:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{file}:{number}: not a JSON row ({err.msg})") from None


def stream_rows(path_or_files: str | Path | list[str], task: str | None = None):
    """``datasets.IterableDataset`` of the rows of :func:`row_files` (or of the given files), read lazily, one shard
    per file. ``task``: keep only rows of that task (rows without ``task`` count as ``"sft"``)."""
    from datasets import IterableDataset

    files = list(path_or_files) if isinstance(path_or_files, list) else row_files(path_or_files)
    stream = IterableDataset.from_generator(_read_rows, gen_kwargs={"files": files})
    if task is not None:
        _check_task(task)
        stream = stream.filter(lambda row: row.get("task", "sft") == task)
    return stream


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")


def paper_task_weights(tasks=None) -> dict[str, float]:
    """Sampling weights proportional to :data:`PAPER_TASK_HOURS`, over ``tasks`` (default: all of them), summing
    to 1."""
    tasks = list(PAPER_TASK_HOURS) if tasks is None else list(tasks)
    for task in tasks:
        if task not in PAPER_TASK_HOURS:
            raise ValueError(f"the paper gives no hours for task {task!r} (it has {', '.join(PAPER_TASK_HOURS)})")
    total = sum(PAPER_TASK_HOURS[t] for t in tasks)
    return {t: PAPER_TASK_HOURS[t] / total for t in tasks}


def mix_tasks(streams: dict, weights: dict[str, float] | None = None, seed: int = 0, until: str = "first_exhausted"):
    """One stream that draws each next row from ``streams[task]`` with probability ``weights[task]`` (normalised;
    default :func:`paper_task_weights`), seeded by ``seed``. ``streams``: task -> ``IterableDataset`` or a path for
    :func:`stream_rows`. ``until``: ``"first_exhausted"`` (stop when one task runs out: the mix stays as weighted)
    or ``"all_exhausted"`` (re-read the shorter ones). ``ValueError`` for unknown tasks or bad weights."""
    from datasets import IterableDataset, interleave_datasets

    if not streams:
        raise ValueError("mix_tasks needs at least one task stream")
    for task in streams:
        _check_task(task)
    weights = paper_task_weights(streams) if weights is None else dict(weights)
    if set(weights) != set(streams):
        raise ValueError(f"weights for tasks {sorted(weights)} but streams for {sorted(streams)}")
    if any(not (w > 0) for w in weights.values()):
        raise ValueError(f"task weights must be positive, got {weights}")
    total = sum(weights.values())
    tasks = list(streams)
    sources = [s if isinstance(s, IterableDataset) else stream_rows(s) for s in (streams[t] for t in tasks)]
    return interleave_datasets(
        sources, probabilities=[weights[t] / total for t in tasks], seed=seed, stopping_strategy=until
    )


def parse_task_weights(text: str) -> dict[str, float]:
    """``"asr=0.3,tts=0.7"`` -> ``{"asr": 0.3, "tts": 0.7}`` (the examples' ``--task_weights``); ``"paper"`` ->
    :func:`paper_task_weights`. ``ValueError`` on a malformed entry."""
    if text.strip() == "paper":
        return paper_task_weights()
    weights = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        task, sep, value = item.partition("=")
        try:
            weights[task.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"task weight {item!r} is not TASK=NUMBER") from None
    return weights


__all__ = [
    "PAPER_TASK_HOURS",
    "mix_tasks",
    "paper_task_weights",
    "parse_task_weights",
    "row_files",
    "stream_rows",
]
