"""Streamed corpora (``training/corpora.py``): lazy JSON-lines rows, the seeded task mix, resume by state dict, and
the collator on streamed rows."""

from __future__ import annotations

import json
import math
from itertools import islice
from pathlib import Path

import pytest

from transformers_baichuan_audio.training.corpora import (
    PAPER_TASK_HOURS,
    mix_tasks,
    paper_task_weights,
    parse_task_weights,
    row_files,
    stream_rows,
)


def write_task_file(path: Path, task: str, n: int) -> list[dict]:
    rows = [
        {
            "task": task,
            "id": f"{task}-{i}",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": f"{task} question {i}"}]},
                {"role": "assistant", "content": [{"type": "text", "text": f"answer {i}"}]},
            ],
        }
        for i in range(n)
    ]
    # heterogeneous parts (codes in some rows only) must stream as they are written
    rows[0]["messages"][1]["content"].append({"type": "audio_codes", "codes": [[1] * 8, [2] * 8]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    files = {task: root / f"{task}.jsonl" for task in ("asr", "tts", "itts")}
    rows = {task: write_task_file(path, task, 400) for task, path in files.items()}
    return root, files, rows


def test_stream_reads_files_lazily_in_order(corpus):
    root, files, rows = corpus
    assert row_files(root) == sorted(str(p) for p in files.values())
    stream = stream_rows(files["asr"])
    assert stream.num_shards == 1
    assert list(islice(stream, 3)) == rows["asr"][:3]  # the rows as written, heterogeneous parts included
    whole = list(stream_rows(root))
    assert [r["id"] for r in whole] == [r["id"] for t in sorted(rows) for r in rows[t]]
    assert [r["id"] for r in stream_rows(root, task="tts")] == [r["id"] for r in rows["tts"]]
    with pytest.raises(ValueError, match="unknown task"):
        stream_rows(root, task="chat")
    with pytest.raises(FileNotFoundError):
        row_files(root / "missing")


def test_task_mix_follows_weights_and_is_seeded(corpus):
    _, files, rows = corpus
    weights = {"asr": 0.5, "tts": 0.3, "itts": 0.2}
    n = 600
    drawn = [r["id"] for r in islice(mix_tasks(files, weights, seed=3), n)]
    assert drawn == [r["id"] for r in islice(mix_tasks(files, weights, seed=3), n)]  # same seed, same rows
    assert drawn != [r["id"] for r in islice(mix_tasks(files, weights, seed=4), n)]
    for task, w in weights.items():
        ids = [i for i in drawn if i.startswith(task + "-")]
        # within one task the file order is kept
        assert ids == [r["id"] for r in rows[task][: len(ids)]]
        # binomial count: 5 standard deviations (the chance of a false failure is below 1e-6)
        assert abs(len(ids) - n * w) < 5 * math.sqrt(n * w * (1 - w)), (task, len(ids))


def test_task_mix_resumes_at_the_same_row(corpus):
    _, files, _ = corpus
    weights = {"asr": 2.0, "tts": 1.0, "itts": 1.0}  # normalised inside
    stream = mix_tasks(files, weights, seed=0)
    iterator = iter(stream)
    head = [next(iterator)["id"] for _ in range(37)]
    state = stream.state_dict()
    rest = [next(iterator)["id"] for _ in range(25)]
    resumed = mix_tasks(files, weights, seed=0)
    resumed.load_state_dict(state)
    assert [r["id"] for r in islice(resumed, 25)] == rest
    assert [r["id"] for r in islice(mix_tasks(files, weights, seed=0), 62)] == head + rest


def test_paper_weights_and_parsing():
    weights = paper_task_weights()
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["intlv"] == pytest.approx(393 / 807)  # 393 k h of 807 k h with a task
    assert sum(PAPER_TASK_HOURS.values()) == 807_000
    assert paper_task_weights(["asr", "tts"]) == pytest.approx({"asr": 185 / 236, "tts": 51 / 236})
    assert parse_task_weights("asr=0.3, tts=0.7") == {"asr": 0.3, "tts": 0.7}
    assert parse_task_weights("paper") == weights
    with pytest.raises(ValueError, match="TASK=NUMBER"):
        parse_task_weights("asr:0.3")
    with pytest.raises(ValueError, match="positive"):
        mix_tasks({"asr": "x.jsonl"}, {"asr": 0.0})
    with pytest.raises(ValueError, match="weights for tasks"):
        mix_tasks({"asr": "x.jsonl"}, {"tts": 1.0})
    with pytest.raises(ValueError, match="no hours"):
        paper_task_weights(["sft"])


def test_collator_takes_streamed_rows(corpus):
    from transformers_baichuan_audio.tiny_random import build_tiny_random
    from transformers_baichuan_audio.training import BaichuanAudioCollator

    _, files, rows = corpus
    model, processor = build_tiny_random(0, training=True)
    collator = BaichuanAudioCollator(processor, model.config.codebook_sizes)
    streamed = collator(list(islice(stream_rows(files["asr"]), 2)))
    direct = collator(rows["asr"][:2])
    assert streamed.keys() == direct.keys()
    for key in direct:
        assert (streamed[key] == direct[key]).all(), key


def test_train_stage_streams_a_task_mix(corpus, tmp_path):
    """``examples/train_stage.py --task_weights`` trains on the streamed mix (Trainer over an IterableDataset)."""
    import importlib.util

    from datasets import IterableDataset

    root, _, _ = corpus
    spec = importlib.util.spec_from_file_location(
        "train_stage_stream", Path(__file__).parents[1] / "examples/train_stage.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    trainer = mod.main(["--stage", "2", "--model", "tiny-random", "--dataset", str(root), "--task_weights",
                        "asr=0.7,tts=0.3", "--max_steps", "2", "--batch_size", "2", "--use_cpu", "--logging_steps",
                        "1", "--report_to", "none", "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert isinstance(trainer.train_dataset, IterableDataset)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)
    assert (tmp_path / "out" / "model.safetensors").exists()
