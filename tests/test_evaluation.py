"""``baichuan-audio eval`` (issue 20): metrics on hand-computed strings, judges, every dataset source, the four tasks
on the tiny random model with a fake scoring ASR, resuming after a kill, the CLI end to end, and bad input.

The tiny model's answers are noise, so the model-side tests check what the harness computes from them against an
independent expectation (a Levenshtein distance written here, the judge applied again, the stored waveform
lengths), never the noise itself.
"""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import soundfile as sf
from demo_helpers import GREEDY, tiny_model_and_processor
from generation_helpers import one_thread  # noqa: F401  (autouse: one torch thread for the module)

from transformers_baichuan_audio import cli, tiny_random
from transformers_baichuan_audio.chat import SpeechChat
from transformers_baichuan_audio.evaluation import judges, metrics
from transformers_baichuan_audio.evaluation.datasets_io import DatasetError, open_dataset
from transformers_baichuan_audio.evaluation.runner import markdown_table, rows_path, run_evaluation
from transformers_baichuan_audio.evaluation.tasks import (
    EvalContext,
    EvalOptions,
    EvaluationError,
    make_task,
    transcribe_batch,
)
from transformers_baichuan_audio.processing.feature_extraction import resample

#: (seconds, sampling rate, channels, transcript, reference answer) of the synthetic clips.
CLIPS = [
    (0.6, 16000, 1, "Hello world", "Paris"),
    (0.5, 8000, 2, "Mr. Smith won't go", "paris"),
    (0.4, 22050, 1, "今天天气很好", "PARIS!"),
]


def _levenshtein(a: list, b: list) -> int:
    """Plain dynamic-programming edit distance (the independent check of jiwer's counts)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@pytest.fixture(scope="module")
def chat():
    model, processor = tiny_model_and_processor()
    return SpeechChat(model, processor, dict(GREEDY))


def _wave(seconds, rate, channels, seed):
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.2 * np.sin(2 * np.pi * (180 + 40 * seed) * t) * np.sin(2 * np.pi * 2 * t + seed)
    return np.stack([mono, 0.5 * mono], axis=1).astype(np.float32) if channels == 2 else mono.astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same clips as jsonl + wav, csv + audios/, audiofolder (split folder) and save_to_disk (DatasetDict)."""
    root = tmp_path_factory.mktemp("evalsets")
    (root / "audios").mkdir()
    rows, expected = [], []
    for i, (sec, rate, ch, text, answer) in enumerate(CLIPS):
        wave = _wave(sec, rate, ch, i)
        sf.write(root / "audios" / f"c{i}.wav", wave, rate, subtype="FLOAT")
        mono = wave.mean(axis=1, dtype=np.float32) if ch == 2 else wave
        expected.append(mono if rate == 16000 else resample(mono, rate, 16000).numpy())
        rows.append({"id": f"utt{i}", "file_name": f"c{i}.wav", "text": text, "answer": answer})
    with (root / "set.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps({"audio": f"audios/{r['file_name']}", "text": r["text"], "answer": r["answer"]}) + "\n")
    with (root / "set.csv").open("w") as f:  # OpenAudioBench layout: relative names resolved in audios/
        f.write("audio_filename,Questions,Answer\n")
        f.writelines(f"{r['file_name']},question {i},{r['answer']}\n" for i, r in enumerate(rows))
    folder = root / "folder" / "test"
    folder.mkdir(parents=True)
    with (folder / "metadata.jsonl").open("w") as f:
        for r in rows:
            (folder / r["file_name"]).write_bytes((root / "audios" / r["file_name"]).read_bytes())
            f.write(json.dumps({"file_name": r["file_name"], "transcription": r["text"]}) + "\n")
    audio = [{"bytes": (root / "audios" / r["file_name"]).read_bytes(), "path": r["file_name"]} for r in rows]
    table = datasets.Dataset.from_dict(
        {"id": [r["id"] for r in rows], "audio": audio, "sentence": [r["text"] for r in rows]}
    ).cast_column("audio", datasets.Audio(decode=False))
    datasets.DatasetDict({"test": table}).save_to_disk(str(root / "disk"))
    return root, expected


# ------------------------------------------------------------------------------------------------ metrics
def test_wer_and_cer_on_hand_computed_strings():
    # "the cat sat on the mat" -> "the cat sit on mat": sat->sit (S), the (D): 2 errors / 6 words
    assert metrics.word_errors("the cat sat on the mat", "the cat sit on mat") == (2, 6)
    # 今天天气很好 -> 今天天汽很好啊: 气->汽 (S), 啊 (I): 2 errors / 6 characters; spaces do not count
    assert metrics.char_errors("今天 天气很好", "今天天汽很好啊") == (2, 6)
    # pooled over the corpus (3 / 10), not the mean of 2/6 and 1/4
    assert metrics.corpus_rate([(2, 6), (1, 4)]) == pytest.approx(30.0)
    assert metrics.corpus_rate([]) is None
    # empty sides: every hypothesis word is an insertion / every reference word a deletion
    assert metrics.word_errors("", "a b") == (2, 0)
    assert metrics.word_errors("a b c", "") == (3, 3)


def test_whisper_english_normaliser():
    norm = metrics.normalizer("english")
    assert norm("Mr. Smith won't pay $20!") == norm("mister smith will not pay twenty dollars")
    assert norm("Hello, World.") == "hello world"
    assert metrics.normalizer("english", {"colour": "color"})("Colour") == "color"
    assert metrics.normalizer("basic")("你好，世界！") == "你好 世界"
    with pytest.raises(ValueError, match="unknown normalizer"):
        metrics.normalizer("klingon")


def test_match_judges_and_llm_judge_with_a_fake_client():
    refs = ["Paris", "the city of Paris"]
    assert judges.ExactMatchJudge()(None, "paris.", refs).score == 1.0
    assert judges.ExactMatchJudge()(None, "It is Paris.", refs).score == 0.0
    assert judges.ContainsJudge()(None, "It is Paris.", refs).score == 1.0
    assert judges.ContainsJudge()(None, "Parisian food", refs).score == 0.0  # whole words only

    class Client:
        def __init__(self, reply):
            self.reply, self.prompts = reply, []
            self.chat = self
            self.completions = self

        def create(self, model, messages, temperature):
            self.prompts.append(messages[0]["content"])
            message = type("M", (), {"content": self.reply})()
            return type("R", (), {"choices": [type("C", (), {"message": message})()]})()

    client = Client("Close enough, the score is [Incorrect]... no wait: [Correct]")
    verdict = judges.make_judge("llm", model="judge", client=client)("Capital of France?", "Paris", refs)
    assert verdict.score == 1.0
    assert "Capital of France?" in client.prompts[0] and "Paris; the city of Paris" in client.prompts[0]
    scaled = judges.LLMJudge("judge", scale=10, client=Client("fine answer [[7]]"))
    assert scaled(None, "x", []).score == pytest.approx(0.7)
    assert judges.LLMJudge("judge", client=Client("no verdict")).parse("no verdict").score == 0.0
    with pytest.raises(ValueError, match="--judge-model"):
        judges.make_judge("llm")


# ------------------------------------------------------------------------------------------------ datasets
def test_every_source_gives_the_same_examples(data):
    root, expected = data
    texts = [c[3] for c in CLIPS]
    sources = {
        str(root / "set.jsonl"): ("text", None),
        str(root / "set.csv"): ("Answer", None),
        str(root / "folder"): ("transcription", "test"),
        str(root / "disk"): ("sentence", "test"),
    }
    for source, (column, split) in sources.items():
        ds = open_dataset(source, split=split)
        rows = list(ds)
        assert len(ds) == len(CLIPS), source
        for row, want in zip(rows, expected, strict=True):
            # float wav files: exact at 16 kHz, and exactly the project's resampler otherwise
            np.testing.assert_allclose(ds.decode_audio(row), want, rtol=0, atol=1e-6)
        if column != "Answer":
            assert [r[column] for r in rows] == texts, source


def test_bad_sources_and_columns_are_clear_errors(data, tmp_path):
    root, _ = data
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="splits"):
        open_dataset(str(root / "disk"), split="train")
    task = make_task("asr")
    with pytest.raises(DatasetError, match=r"--text-column") as err:
        task.prepare(open_dataset(str(root / "set.csv")), EvalOptions())
    assert "Questions" in str(err.value)  # names the columns it has
    with pytest.raises(EvaluationError, match="unknown task"):
        make_task("bogus")
    (tmp_path / "noaudio.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DatasetError, match="--audio-column"):
        open_dataset(str(tmp_path / "noaudio.jsonl"))


# ------------------------------------------------------------------------------------------------ tasks
def _run(task_name, source, chat, out, options=None, split=None, **kwargs):
    task = make_task(task_name)
    ds = open_dataset(source, split=split)
    options = options or EvalOptions()
    task.prepare(ds, options)
    ctx = EvalContext(
        chat, scoring_asr=kwargs.pop("scoring_asr", None), judge=kwargs.pop("judge", None), options=options
    )
    return task, run_evaluation(task, ds, ctx, out, run={"dataset": source}, progress=False, **kwargs)


def test_asr_rows_summary_and_result_file(data, chat, tmp_path):
    root, _ = data
    bad = tmp_path / "with_bad.jsonl"
    (tmp_path / "notes.wav").write_text("not audio")
    lines = (root / "set.jsonl").read_text().replace('"audios/', f'"{root}/audios/').splitlines()
    sf.write(tmp_path / "short.wav", np.full(10, 0.1, np.float32), 16000)  # too short for one code frame
    extra = [{"audio": str(tmp_path / "notes.wav"), "text": "x"}, {"audio": str(tmp_path / "short.wav"), "text": "y"}]
    bad.write_text("\n".join([*lines, *map(json.dumps, extra)]) + "\n")
    out = tmp_path / "asr.json"
    _, result = _run("asr", str(bad), chat, out, batch_size=2)
    rows = result["rows"]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert "cannot be read" in rows[3]["error"]
    assert "too short" in rows[4]["error"]  # its batch (rows 2 and 4) was rerun one by one: row 2 still scored
    good = rows[:3]
    for row, clip in zip(good, CLIPS, strict=True):
        assert row["reference"] == clip[3] and row["hypothesis"]
        ref, hyp = row["reference_normalized"], row["hypothesis_normalized"]
        assert row["word_errors"] == _levenshtein(ref.split(), hyp.split())
        assert row["char_errors"] == _levenshtein(list(ref.replace(" ", "")), list(hyp.replace(" ", "")))
    # batched generate (2 rows, different lengths, left padding) gives the transcripts of one clip at a time (greedy)
    ds = open_dataset(str(bad))
    singles = [transcribe_batch(chat, [ds.decode_audio(row)])[0] for row in list(ds)[:3]]
    assert [r["hypothesis"] for r in good] == singles
    assert [r["language"] for r in good] == ["en", "en", "zh"]
    assert good[1]["reference_normalized"] == "mister smith will not go"
    summary = result["summary"]
    assert summary["examples"] == 5 and summary["failed"] == 2 and summary["primary"] == "wer"
    words = sum(r["word_errors"] for r in good) / sum(r["reference_words"] for r in good)
    assert summary["wer"] == pytest.approx(100 * words)
    assert json.loads(out.read_text()) == result
    assert "| wer |" in markdown_table(result)


def test_resume_after_a_kill_skips_the_done_rows(data, chat, tmp_path):
    root, _ = data
    out = tmp_path / "r.json"
    task = make_task("asr")
    source = str(root / "set.jsonl")
    ds = open_dataset(source)
    task.prepare(ds, EvalOptions())
    ctx = EvalContext(chat)
    calls = []
    original = task.run_batch

    def killed_after_one(items, ctx):
        if calls:
            raise KeyboardInterrupt  # the kill, between batches
        calls.append([it.index for it in items])
        return original(items, ctx)

    task.run_batch = killed_after_one
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(task, ds, ctx, out, run={"dataset": source}, progress=False)
    lines = rows_path(out).read_text().splitlines()
    assert len(lines) == 2 and not out.exists()  # header + row 0; no result yet
    first = json.loads(lines[1])
    with rows_path(out).open("a") as f:
        f.write('{"index": 1, "hypoth')  # a line cut short by the kill
    seen = []

    def counting(items, ctx):
        seen.extend(it.index for it in items)
        return original(items, ctx)

    task.run_batch = counting
    result = run_evaluation(task, ds, ctx, out, run={"dataset": source}, progress=False)
    assert seen == [1, 2]  # row 0 skipped, the cut-off row redone
    assert [r["index"] for r in result["rows"]] == [0, 1, 2] and result["rows"][0] == first
    seen.clear()
    run_evaluation(task, ds, ctx, out, run={"dataset": source}, progress=False)
    assert seen == []  # a complete run reruns nothing
    with pytest.raises(EvaluationError, match="another run"):
        run_evaluation(task, ds, ctx, out, run={"dataset": "other"}, progress=False)


def test_spoken_qa_speech_and_consistency_with_a_fake_scoring_asr(data, chat, tmp_path):
    root, _ = data
    heard = []

    def fake_asr(clips):
        heard.extend(clips)
        return ["it is paris" for _ in clips]

    options = EvalOptions(answer="speech")
    source = str(root / "set.csv")
    _, result = _run(
        "spoken-qa", source, chat, tmp_path / "qa.json", options, limit=2, batch_size=2,
        scoring_asr=fake_asr, judge=judges.ContainsJudge(),
    )  # fmt: skip
    rows = result["rows"]
    assert len(rows) == 2 and [r["question"] for r in rows] == ["question 0", "question 1"]
    assert all(r["speech_score"] == 1.0 for r in rows)  # "it is paris" contains every reference
    for row in rows:
        assert row["text_score"] == judges.ContainsJudge()(row["question"], row["answer_text"], row["references"]).score
        ref = metrics.normalizer("english")(row["answer_text"]).split()
        assert row["consistency_word_errors"] == _levenshtein(ref, ["it", "is", "paris"])
    assert [sr for _, sr in heard] == [24000, 24000]
    assert [w.shape[0] / 24000 for w, _ in heard] == [r["speech_seconds"] for r in rows]
    assert result["summary"]["speech_accuracy"] == 100.0
    assert result["summary"]["text_accuracy"] == 100.0 * np.mean([r["text_score"] for r in rows])

    _, result = _run(
        "consistency",
        source,
        chat,
        tmp_path / "c.json",
        limit=1,
        scoring_asr=lambda clips: ["hello there"] * len(clips),
    )
    row = result["rows"][0]
    ref = metrics.normalizer("english")(row["answer_text"]).split()
    assert row["word_errors"] == _levenshtein(ref, ["hello", "there"]) and row["reference_words"] == len(ref)
    with pytest.raises(EvaluationError, match="scoring ASR"):
        _run("consistency", source, chat, tmp_path / "c2.json", limit=1)


def test_latency_rows(data, chat, tmp_path):
    root, _ = data
    _, result = _run(
        "latency", str(root / "set.jsonl"), chat, tmp_path / "lat.json", EvalOptions(warmup=False), limit=1
    )
    row, summary = result["rows"][0], result["summary"]
    assert 0 < row["first_text_s"] <= row["total_s"] and 0 < row["first_audio_s"] <= row["total_s"]
    assert row["audio_frames"] > 0 and row["audio_s"] > 0
    assert summary["real_time_factor"] == pytest.approx(row["total_s"] / row["audio_s"])
    assert summary["frames_per_s"] == pytest.approx(row["audio_frames"] / row["total_s"])
    assert summary["first_audio_s_p50"] == row["first_audio_s"]


# ------------------------------------------------------------------------------------------------ command line
def test_cli_end_to_end_on_tiny_random(data, tmp_path, capsys, monkeypatch):
    root, _ = data
    # the tiny-random path of the loader, with the module's model instead of a second build (test time)
    monkeypatch.setattr(tiny_random, "build_tiny_random", lambda *a, **k: tiny_model_and_processor())
    out = tmp_path / "cli.json"
    argv = ["eval", "asr", "--model", "tiny-random", "--dataset", str(root / "disk"), "--split", "test"]
    assert cli.main([*argv, "--limit", "2", "--batch-size", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 2 and [r["id"] for r in result["rows"]] == ["utt0", "utt1"]
    assert f"| wer | {result['summary']['wer']:.4g} |" in printed
    assert result["run"]["model"] == "tiny-random" and result["run"]["options"]["sample"] is False


def test_cli_bad_input(data, tmp_path, capsys):
    root, _ = data
    out = str(tmp_path / "x.json")
    assert cli.main(["eval", "asr", "--model", "tiny-random", "--dataset", str(tmp_path / "nope"), "--out", out]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli.main(["eval", "asr", "--model", "tiny-random", "--dataset", str(root / "set.csv"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--text-column" in err and "audio_filename" in err
    argv = ["eval", "spoken-qa", "--model", "tiny-random", "--dataset", str(root / "set.csv"), "--judge", "llm"]
    assert cli.main([*argv, "--out", out]) == 2
    assert "--judge-model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "wer", "--dataset", "x"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_eval_help_lists_the_tasks_and_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--help"])
    out = "".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert exit_info.value.code == 0 and out.startswith("usage:baichuan-audioeval")
    assert "{asr,spoken-qa,consistency,latency}" in out and "--dataset" in out and "tiny-random" in out
