"""Original checkpoint -> this layout: directory conversion, on-the-fly loading, sharding, errors, parity checker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig

import transformers_baichuan_audio
from transformers_baichuan_audio import BaichuanAudioForConditionalGeneration, BaichuanAudioProcessor
from transformers_baichuan_audio.conversion.config import ConversionError, config_from_original, read_added_tokens
from transformers_baichuan_audio.conversion.convert import (
    convert_checkpoint,
    convert_original_state_dict,
    load_original_model,
)
from transformers_baichuan_audio.parity import run_parity


@pytest.fixture(scope="module")
def original_dir(reference_fixture) -> Path:
    reference_fixture.tokenizer_dir()
    return reference_fixture.checkpoint_dir


@pytest.fixture(scope="module")
def fixture_config(reference_fixture):
    return config_from_original(
        reference_fixture.config,
        vocoder_config=reference_fixture.vocoder_config,
        added_tokens=read_added_tokens(reference_fixture.tokenizer_dir()),
    )


@pytest.fixture(scope="module")
def converted_dir(reference_fixture, original_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted")
    convert_checkpoint(
        original_dir,
        out,
        vocoder=reference_fixture.vocoder_path,
        vocoder_config=reference_fixture.vocoder_config,
        max_shard_size=64 * 1024**2,
        progress=False,
    )
    return out


def test_converted_directory_equals_on_the_fly_loading(reference_fixture, original_dir, converted_dir):
    files = sorted(p.name for p in converted_dir.iterdir())
    assert "model.safetensors.index.json" in files and "config.json" in files and "generation_config.json" in files
    assert "processor_config.json" in files and "chat_template.jinja" in files
    generation = GenerationConfig.from_pretrained(converted_dir)  # the original demo's settings (reference 11.2)
    assert (generation.do_sample, generation.temperature, generation.top_k, generation.top_p) == (True, 0.8, 20, 0.85)
    assert (generation.audio_temperature, generation.audio_top_k, generation.audio_repetition_penalty) == (0.5, 5, 1.3)
    assert (generation.later_text_temperature, generation.audio_max_frames, generation.max_rounds) == (0.3, 500, 100)
    assert generation.eos_token_id == reference_fixture.special_tokens["roles"]["eos_token_id"]

    from_dir = BaichuanAudioForConditionalGeneration.from_pretrained(converted_dir, dtype=torch.float32).eval()
    on_the_fly = transformers_baichuan_audio.load_original_model(
        original_dir, vocoder=reference_fixture.vocoder_path, vocoder_config=reference_fixture.vocoder_config
    ).eval()
    a, b = from_dir.state_dict(), on_the_fly.state_dict()
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert from_dir.code2wav.dequantizer.codebooks[0].weight.dtype == torch.float32

    llm = reference_fixture.expected("llm")
    inputs = {"input_ids": llm["chat.input_ids"], "audio_codes": llm["chat.audio_codes"]}
    with torch.no_grad():
        out_a, out_b = from_dir(**inputs, logits_to_keep=4), on_the_fly(**inputs, logits_to_keep=4)
    assert torch.equal(out_a.logits, out_b.logits)
    # the converted weights reproduce the original's recorded logits (parity tolerance 1e-4, see parity.py)
    assert (out_a.logits - llm["chat.logits_last8"][:, -4:]).abs().max() <= 1e-4


def test_converted_processor_reproduces_the_original_prompt(reference_fixture, converted_dir):
    processor = BaichuanAudioProcessor.from_pretrained(converted_dir)
    llm = reference_fixture.expected("llm")
    prompt = reference_fixture.meta["llm"]["chat"]["prompt"]
    wav, sr = reference_fixture.input_wav("short")
    inputs = processor(text=[prompt.replace('{"path": "<inputs/short.wav>"}', "")], audio=[wav], sampling_rate=sr)
    assert inputs["input_ids"].tolist() == llm["chat.input_ids"].tolist()


def _split_into_shards(src: Path, dst: Path, shard_bytes: int) -> int:
    """Rewrite a single-file original checkpoint as shards + index, as save_pretrained does."""
    dst.mkdir()
    state = load_file(str(src / "model.safetensors"))
    shards, current, size = [], {}, 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key], size = state[key], size + nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(dst / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for f in src.iterdir():
        if f.is_file() and f.suffix == ".json":
            shutil.copy2(f, dst / f.name)
    shutil.copytree(src / "tokenizer", dst / "tokenizer")
    return len(shards)


_PEAK_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    import transformers_baichuan_audio
    from transformers_baichuan_audio.conversion.convert import convert_checkpoint, expected_shapes, config_for_checkpoint
    from transformers_baichuan_audio.conversion.checkpoint import OriginalCheckpoint

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    src, dst, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    expected_shapes(config_for_checkpoint(OriginalCheckpoint(src)))  # same imports and meta model as a conversion
    before, peak, done = rss(), [0], []

    def sample():
        while not done:
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    t = threading.Thread(target=sample)
    t.start()
    if mode == "convert":
        convert_checkpoint(src, dst, max_shard_size=8 * 1024**2, save_processor=False, progress=False)
    else:
        state = OriginalCheckpoint(src).load_all()
        total = sum(float(v.float().sum()) for v in state.values())  # touch every tensor
    time.sleep(0.05)
    done.append(1)
    t.join()
    print(peak[0] - before)
    """
)


def test_sharded_conversion_is_memory_bounded_and_identical(original_dir, tmp_path, converted_dir):
    sharded = tmp_path / "sharded"
    n_shards = _split_into_shards(original_dir, sharded, shard_bytes=24 * 1024**2)
    assert n_shards >= 4
    out = tmp_path / "out"
    convert_checkpoint(sharded, out, max_shard_size=8 * 1024**2, save_processor=False, progress=False)

    def tensors(d):
        state = {}
        for f in sorted(d.glob("*.safetensors")):
            state.update(load_file(str(f)))
        return state

    a = tensors(out)
    b = {k: v for k, v in tensors(converted_dir).items() if not k.startswith("code2wav.vocoder.")}
    # no vocoder given here -> audio output disabled -> no code2wav at all
    b = {k: v for k, v in b.items() if not k.startswith("code2wav.")}
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Peak memory, measured in fresh processes: streaming conversion vs simply loading every original tensor.
    env = dict(os.environ)
    peaks = {}
    for mode in ("convert", "load_all"):
        res = subprocess.run(
            [sys.executable, "-c", _PEAK_SCRIPT, str(sharded), str(tmp_path / f"peak_{mode}"), mode],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        peaks[mode] = int(res.stdout.strip().splitlines()[-1])
    total = sum(f.stat().st_size for f in sharded.glob("*.safetensors"))
    largest_shard = max(f.stat().st_size for f in sharded.glob("*.safetensors"))
    print(
        f"peak RSS growth: convert {peaks['convert'] / 2**20:.0f} MiB, load_all {peaks['load_all'] / 2**20:.0f} MiB, checkpoint {total / 2**20:.0f} MiB, largest shard {largest_shard / 2**20:.0f} MiB"
    )
    assert peaks["load_all"] >= 0.9 * total  # sanity: the measurement sees tensor memory
    # bound: one original shard + one output shard (8 MB, or one tensor when larger: the shard holds it) + slack
    assert peaks["convert"] <= largest_shard + largest_shard + 32 * 1024**2, (peaks, total, largest_shard)


def test_error_names_the_key(reference_fixture, original_state_dict, fixture_config):
    vocoder = reference_fixture.vocoder_state_dict()
    unknown = dict(original_state_dict)
    unknown["model.layers.0.self_attn.rotary_extra.weight"] = torch.zeros(3)
    with pytest.raises((ConversionError, KeyError), match="rotary_extra"):
        convert_original_state_dict(unknown, fixture_config, vocoder)

    missing = dict(original_state_dict)
    del missing["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ConversionError, match=r"model\.language_model\.layers\.1\.mlp\.down_proj\.weight"):
        convert_original_state_dict(missing, fixture_config, vocoder)

    wrong = dict(original_state_dict)
    wrong["model.norm.weight"] = torch.ones(7)
    with pytest.raises(ConversionError, match=r"model\.language_model\.norm\.weight"):
        convert_original_state_dict(wrong, fixture_config, vocoder)

    bad_vocoder = dict(vocoder)
    bad_vocoder["conv_extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="conv_extra"):
        convert_original_state_dict(original_state_dict, fixture_config, bad_vocoder)


def test_load_original_without_vocoder_disables_audio_output(original_dir):
    model = load_original_model(original_dir)
    assert model.code2wav is None and model.config.enable_audio_output is False


def test_check_parity_passes_on_the_reference_fixture(reference_fixture, capsys):
    report = run_parity(reference_fixture.path)
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert report.ok, out
    assert summary["failed"] == 0 and summary["passed"] == len(summary["stages"]) >= 15
    for stage in ("features", "codes", "llm_logits", "audio_head", "generate_text", "generate_audio", "s2s"):
        assert stage in summary["stages"]
    for stage in ("decoder_hidden", "flow_mel", "vocoder"):
        assert stage in summary["stages"]


def _fixture_copy(src: Path, dst: Path) -> Path:
    """A copy of the fixture directory whose large files are symlinks (cheap)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "expected":
            (dst / f.name).symlink_to(f.resolve())
    (dst / "expected").mkdir()
    for f in (src / "expected").iterdir():
        (dst / "expected" / f.name).symlink_to(f.resolve())
    return dst


def test_check_parity_cli_fails_on_a_wrong_or_missing_stage(reference_fixture, tmp_path):
    broken = _fixture_copy(reference_fixture.path, tmp_path / "broken")
    head = load_file(str(reference_fixture.path / "expected" / "audio_head.safetensors"))
    head["logits.3"] = head["logits.3"] + 1e-3  # 10x the tolerance
    (broken / "expected" / "audio_head.safetensors").unlink()
    save_file(head, str(broken / "expected" / "audio_head.safetensors"))
    (broken / "expected" / "vocoder.safetensors").unlink()
    env = dict(os.environ, BAICHUAN_AUDIO_FIXTURE_CACHE=str(tmp_path / "cache"))
    res = subprocess.run(
        [sys.executable, "-m", "transformers_baichuan_audio.cli", "check-parity", str(broken)]
        + ["--stages", "audio_head", "vocoder", "resample"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["passed"] == 1 and summary["failed"] == 2
    assert 9e-4 < summary["stages"]["audio_head"] < 1.1e-3
    assert summary["stages"]["vocoder"] is None
    assert "missing expected/vocoder.safetensors" in res.stdout


def test_from_pretrained_on_an_original_directory_says_how_to_load_it(tmp_path):
    import json

    from transformers_baichuan_audio import BaichuanAudioForConditionalGeneration

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "omni", "hidden_size": 128}))
    with pytest.raises(ValueError, match="load_original_model"):
        BaichuanAudioForConditionalGeneration.from_pretrained(tmp_path)
