"""The training example scripts run end to end on the tiny random model: stage 1 / stage 2 ``Trainer`` runs train
exactly the recipe's parameters (frozen ones keep their initial values), LoRA SFT saves an adapter, and merge mode
writes a merged model whose weights equal base + the adapter's delta (checked against PEFT's own merge)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from test_training_accelerate import write_rows

from transformers_baichuan_audio.loading import load_model_and_processor

ROOT = Path(__file__).resolve().parents[1]


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    write_rows(path)
    return path


COMMON = ["--model", "tiny-random", "--max_steps", "2", "--use_cpu", "--batch_size", "2", "--learning_rate", "1e-2"]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("stage", [1, 2])
def test_stage_example(tmp_path, rows_file, stage):
    initial = {
        k: v.clone()
        for k, v in load_model_and_processor("tiny-random", device="cpu", training=True)[0].state_dict().items()
    }
    trainer = load_example("train_stage").main(
        ["--stage", str(stage), "--dataset", str(rows_file), "--output_dir", str(tmp_path), *COMMON]
    )
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    changed = {n for n, v in trainer.model.state_dict().items() if not torch.equal(v, initial[n])}
    assert changed and changed <= trained  # frozen parameters keep their initial values; the others train
    if stage == 1:
        assert all(n.startswith(("model.audio_embed.", "audio_head.")) for n in trained)
    else:
        assert "lm_head.weight" not in trained and "model.language_model.embed_tokens.weight" not in trained


@pytest.mark.filterwarnings("ignore")
def test_lora_example_save_and_merge(tmp_path, rows_file):
    from peft import PeftModel

    example = load_example("train_lora_sft")
    example.main(["--dataset", str(rows_file), "--output_dir", str(tmp_path / "lora"), *COMMON])
    merged_dir = tmp_path / "merged"
    example.main(
        ["--model", "tiny-random", "--merge_adapter", str(tmp_path / "lora"), "--merged_output_dir", str(merged_dir)]
    )
    from safetensors.torch import load_file

    merged = load_file(str(merged_dir / "model.safetensors"))
    base, _ = load_model_and_processor("tiny-random", device="cpu", training=True)
    reference = PeftModel.from_pretrained(base, str(tmp_path / "lora")).merge_and_unload().state_dict()
    for name, value in reference.items():
        torch.testing.assert_close(merged[name], value, rtol=0, atol=0)  # same ops, same order: bit-exact
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(
        merged[q], load_model_and_processor("tiny-random", device="cpu", training=True)[0].state_dict()[q]
    )
