"""Running a task over a dataset: batches, progress bar, resumable rows, the result file and its Markdown table.

Files (for ``--out results.json``):

* ``results.rows.jsonl`` beside it: a header line ``{"run": {...}}`` (task, model, dataset, split, subset,
  options) and then one JSON line per finished example (``index`` = its position in the dataset), appended and
  flushed after every batch. A rerun with the same header skips the indices already there (a line cut short by a
  kill is dropped and redone); a rows file with another header is refused (:class:`.tasks.EvaluationError`), so two
  different runs never mix.
* ``results.json``: ``{"run", "summary", "rows"}`` (rows in dataset order), written when the run completes (to a
  temporary file, then renamed).

An example whose audio cannot be read, or whose prompt is refused (too long, too short for a code frame, invalid
audio), becomes a row with an ``error`` and counts as ``failed`` in the summary; when one example of a batch fails, the batch is rerun one example
at a time so the others still get their rows.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .datasets_io import DatasetError, EvalDataset
from .tasks import EvalContext, EvaluationError, Item, Task

#: Header fields that must match for a rows file to be resumed.
RUN_KEYS = ("task", "model", "dataset", "split", "subset", "options")


def rows_path(out: str | os.PathLike) -> Path:
    """The per-example rows file beside the result file (``results.json`` -> ``results.rows.jsonl``)."""
    out = Path(out)
    return out.with_name(out.stem + ".rows.jsonl")


def _row_errors() -> tuple[type[BaseException], ...]:
    from ..chat import AudioInputError, input_errors

    # ValueError: the processor's refusals of one clip (e.g. too short for a code frame); EvaluationError is not
    # one example's fault and is re-raised (see _run_items)
    return (*input_errors(), AudioInputError, DatasetError, ValueError)


def read_rows(path: Path, run: dict) -> dict[int, dict]:
    """Finished rows of an earlier run with the same header (a truncated last line dropped from the file)."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")
    good, rows = [], {}
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[number + 1 :]):
                raise EvaluationError(f"{path}:{number + 1} is not valid JSON (not a cut-off last line)") from None
            break  # cut short by a kill: redo that example
        if not good:
            if "run" not in record:
                raise EvaluationError(f"{path} has no run header: delete it or choose another --out")
            theirs = {k: record["run"].get(k) for k in RUN_KEYS}
            ours = {k: run.get(k) for k in RUN_KEYS}
            if theirs != ours:
                raise EvaluationError(
                    f"{path} belongs to another run ({theirs}); this run is {ours}: delete it or choose another --out"
                )
        else:
            rows[int(record["index"])] = record
        good.append(line)
    if len(good) != len([ln for ln in lines if ln.strip()]):
        path.write_text("".join(line + "\n" for line in good), encoding="utf-8")
    return rows


def _examples(dataset: EvalDataset, task: Task, limit: int | None):
    for index, row in enumerate(dataset):
        if limit is not None and index >= limit:
            return
        yield index, row


def _run_items(task: Task, items: list[Item], ctx: EvalContext) -> list[dict]:
    errors = _row_errors()
    try:
        return task.run_batch(items, ctx)
    except EvaluationError:
        raise
    except errors as err:
        if len(items) == 1:
            return [{"index": items[0].index, **items[0].fields, "error": f"{type(err).__name__}: {err}"}]
    return [row for it in items for row in _run_items(task, [it], ctx)]


def run_evaluation(
    task: Task,
    dataset: EvalDataset,
    ctx: EvalContext,
    out: str | os.PathLike,
    *,
    run: dict | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> dict:
    """Run ``task`` (already :meth:`~.tasks.Task.prepare`-d on ``dataset``) and write the result files.

    ``run``: the header fields (task, model, dataset, split, subset, options) that identify the run for resuming.
    Returns the result dict (``run``, ``summary``, ``rows``)."""
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise EvaluationError(f"limit must be at least 1, got {limit}")
    task.check_context(ctx)
    out = Path(out)
    if out.is_dir():
        raise EvaluationError(f"--out {out} is a directory: give a file name such as {out / 'results.json'}")
    if not out.parent.is_dir():
        raise EvaluationError(f"cannot write {out}: the directory {out.parent} does not exist")
    run = {"task": task.name, **(run or {})}
    path = rows_path(out)
    done = read_rows(path, run)
    total = len(dataset) if dataset.sized else None
    if total is not None and limit is not None:
        total = min(total, limit)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=task.name, unit="ex", disable=not progress, file=sys.stderr)
    bar.update(sum(1 for i in done if total is None or i < total))
    new_file = not path.exists()
    errors = _row_errors()
    with path.open("a", encoding="utf-8") as sink:
        if new_file:
            sink.write(json.dumps({"run": run}, ensure_ascii=False) + "\n")
            sink.flush()

        def flush(batch: list[Item], failed: list[dict]) -> None:
            rows = failed + (_run_items(task, batch, ctx) if batch else [])
            for row in rows:
                done[int(row["index"])] = row
                sink.write(json.dumps(row, ensure_ascii=False, default=float) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            bar.update(len(rows))

        batch: list[Item] = []
        failed: list[dict] = []
        seen = 0
        for index, row in _examples(dataset, task, limit):
            seen = index + 1
            if index in done:
                continue
            fields = task.fields(row)
            try:
                batch.append(Item(index, fields, dataset.decode_audio(row)))
            except errors as err:
                failed.append({"index": index, **fields, "error": f"{type(err).__name__}: {err}"})
            if len(batch) >= batch_size:
                flush(batch, failed)
                batch, failed = [], []
        if batch or failed:
            flush(batch, failed)
    bar.close()
    if seen == 0:
        raise DatasetError(f"{run.get('dataset')}: the dataset has no rows")
    rows = [done[i] for i in sorted(done) if i < seen]
    result = {"run": run, "summary": task.summarize(rows), "rows": rows}
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_text(json.dumps(result, ensure_ascii=False, indent=1, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return result


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(result: dict) -> str:
    """The summary as a two-column Markdown table (the run's task / model / dataset first)."""
    run = result.get("run", {})
    lines = ["| metric | value |", "| --- | --- |"]
    for key in ("task", "model", "dataset", "split"):
        if run.get(key) is not None:
            lines.append(f"| {key} | {_cell(run[key])} |")
    for key, value in result["summary"].items():
        lines.append(f"| {key} | {_cell(value)} |")
    return "\n".join(lines)


__all__ = ["RUN_KEYS", "markdown_table", "read_rows", "rows_path", "run_evaluation"]
