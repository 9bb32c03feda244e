"""The ``baichuan-audio`` command line: every sub-command's ``--help``, and ``chat`` / ``asr`` / ``tts`` / ``bench``
with the offline ``tiny-random`` model (a wav file must be a valid 24 kHz 16-bit mono file; the text is noise but
must be printed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from demo_helpers import single_thread, write_tone

from transformers_baichuan_audio import cli, loading
from transformers_baichuan_audio.tiny_random import NOISE_NOTICE

SUBCOMMANDS = ["convert", "check-parity", "demo", "chat", "asr", "tts", "bench"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    return write_tone(tmp_path_factory.mktemp("cli") / "sample.wav")


def _assert_24k_wav(path):
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (24000, 1, "PCM_16", "WAV")
    assert info.frames > 0


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: baichuan-audio {command}")
    squeezed = "".join(out.split())  # argparse wraps lines (also at hyphens)
    if command in ("demo", "chat", "asr", "tts"):
        assert "--model" in out and "tiny-random" in squeezed and "originallayout" in squeezed


def test_model_help_names_the_default_and_the_conversion(capsys):
    with pytest.raises(SystemExit):
        cli.main(["chat", "--help"])
    out = "".join(capsys.readouterr().out.split())
    assert cli.DEFAULT_MODEL in out and "snapshot_download" in out and "--vocoder" in out


def test_chat_typed_text_only_in_process(tmp_path, capsys):
    out = tmp_path / "answer.wav"
    assert cli.main(["chat", "--model", "tiny-random", "--text", "hi", "--no-speech", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() and NOISE_NOTICE in captured.err and not out.exists()


def test_chat_rejects_bad_audio(tmp_path, capsys):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    assert cli.main(["chat", "--model", "tiny-random", "--audio", str(bad), "--out", str(tmp_path / "a.wav")]) == 2
    assert "not an audio file" in capsys.readouterr().err and not (tmp_path / "a.wav").exists()


def test_asr_prints_text(wav, capsys):
    assert cli.main(["asr", "--model", "tiny-random", "--greedy", wav]) == 0
    assert capsys.readouterr().out.strip()


def test_tts_writes_wav(tmp_path):
    out = tmp_path / "speech.wav"
    assert cli.main(["tts", "--model", "tiny-random", "Hello!", "--out", str(out)]) == 0
    _assert_24k_wav(out)


def test_bench_lists_the_benchmark_scripts(capsys):
    assert cli.main(["bench", "--list"]) == 0
    names = capsys.readouterr().out.split()
    expected = sorted(p.stem.removeprefix("bench_") for p in cli.benchmarks_dir().glob("bench_*.py"))
    assert names == expected and names
    with pytest.raises(SystemExit, match="unknown benchmark"):
        cli.main(["bench", "no_such_thing"])


def test_console_script_chat(wav, tmp_path):
    """The installed entry point with speech in and out, as the README shows it (a real subprocess)."""
    exe = shutil.which("baichuan-audio", path=str(Path(sys.executable).parent))
    assert exe is not None, "the baichuan-audio console script is missing: install the package as the README says"
    out = tmp_path / "answer.wav"
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [exe, "chat", "--model", "tiny-random", "--audio", wav, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() and NOISE_NOTICE in proc.stderr
    _assert_24k_wav(out)


def test_converted_directory_loads_the_same_model(wav, tmp_path, capsys):
    """``--model DIR`` (a converted / saved directory) gives the model that was saved: same ASR output as the
    in-memory tiny model (greedy)."""
    from demo_helpers import tiny_model_and_processor

    from transformers_baichuan_audio.chat import SpeechChat

    model, processor = tiny_model_and_processor()
    model.save_pretrained(tmp_path / "tiny")
    processor.save_pretrained(tmp_path / "tiny")
    expected = SpeechChat(model, processor, {"do_sample": False, "max_new_tokens": 16}).transcribe(wav)
    assert cli.main(["asr", "--model", str(tmp_path / "tiny"), "--greedy", "--max-new-tokens", "16", wav]) == 0
    assert capsys.readouterr().out.strip() == expected


def test_hub_id_of_an_original_layout_checkpoint_is_downloaded_then_converted(tmp_path, monkeypatch):
    """Dispatch of ``--model``: a hub id goes through ``snapshot_download``; the snapshot is in the original layout
    (``model_type: omni``), so it is converted on the fly with the HiFT weights found in it (the conversion itself is
    tested by the conversion tests; here it is replaced by a recorder)."""
    import json

    import huggingface_hub
    import transformers
    from demo_helpers import tiny_model_and_processor

    from transformers_baichuan_audio.conversion import convert

    snapshot = tmp_path / "snapshot"
    (snapshot / "third_party").mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "omni"}))
    (snapshot / "model.safetensors").write_bytes(b"")
    (snapshot / "third_party" / "hift.pt").write_bytes(b"")
    model, processor = tiny_model_and_processor()
    calls = {}
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo: calls.setdefault("repo", repo) and snapshot)
    monkeypatch.setattr(
        convert, "load_original_model", lambda path, vocoder, **kw: calls.update(path=path, vocoder=vocoder) or model
    )
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: processor.tokenizer)
    loaded, loaded_processor = loading.load_model_and_processor(cli.DEFAULT_MODEL, device="cpu")
    assert calls == {"repo": cli.DEFAULT_MODEL, "path": snapshot, "vocoder": snapshot / "third_party" / "hift.pt"}
    assert loaded is model and loaded_processor.tokenizer is processor.tokenizer
