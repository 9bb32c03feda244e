"""The training example scripts run end to end on the tiny random model: stage 1 / stage 2 ``Trainer`` runs train
exactly the recipe's parameters (frozen ones keep their initial values), LoRA SFT saves an adapter, and merge mode
writes a merged model whose weights equal base + the adapter's delta (checked against PEFT's own merge). Their
arguments come from ``HfArgumentParser`` (every ``TrainingArguments`` / ``SFTConfig`` field, the examples' defaults
and short names)."""

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


def assert_common_arguments(args):
    """The trainer got what ``COMMON`` asked for, and the examples' fixed settings."""
    assert (args.max_steps, args.per_device_train_batch_size, args.learning_rate) == (2, 2, 1e-2)
    assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing
    assert args.remove_unused_columns is False  # the collator needs the raw rows
    assert (args.seed, args.logging_steps, args.report_to) == (0, 10, [])


@pytest.mark.parametrize("name", ["train_stage", "train_lora_sft"])
def test_example_arguments(name):
    """Short names and the TrainingArguments field names give the same arguments; the examples' defaults differ
    from transformers' where they say; an unknown flag is an error."""
    from transformers import TrainingArguments

    parse = load_example(name).parse_args
    required = ["--model", "m", "--dataset", "d"] + (["--stage", "1"] if name == "train_stage" else [])
    script, short = parse([*required, "--batch_size", "3", "--grad_accum", "5", "--bf16", "--use_cpu"])
    assert script.model == "m" and script.dataset == "d"
    assert isinstance(short, TrainingArguments)
    assert (short.per_device_train_batch_size, short.gradient_accumulation_steps, short.bf16) == (3, 5, True)
    _, long = parse(
        [*required, "--per_device_train_batch_size", "3", "--gradient_accumulation_steps", "5", "--bf16", "--use_cpu"]
    )
    assert (long.per_device_train_batch_size, long.gradient_accumulation_steps, long.bf16) == (3, 5, True)
    _, default = parse(required)
    assert default.learning_rate == (1e-4 if name == "train_stage" else 2e-4)
    assert default.save_steps == (1000 if name == "train_stage" else 500)
    assert (default.per_device_train_batch_size, default.gradient_accumulation_steps) == (4, 1)
    assert default.output_dir == "baichuan-audio-training" and default.seed == 0 and not default.bf16
    assert not default.gradient_checkpointing and default.remove_unused_columns is False
    with pytest.raises(ValueError, match="--no_such_flag"):
        parse([*required, "--no_such_flag", "1"])


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
    assert_common_arguments(trainer.args)
    assert trainer.state.global_step == 2 and (tmp_path / "model.safetensors").exists()
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
    from trl import SFTConfig

    example = load_example("train_lora_sft")
    trainer = example.main(["--dataset", str(rows_file), "--output_dir", str(tmp_path / "lora"), *COMMON])
    assert isinstance(trainer.args, SFTConfig) and trainer.state.global_step == 2
    assert_common_arguments(trainer.args)
    assert trainer.args.dataset_kwargs == {"skip_prepare_dataset": True} and trainer.args.max_length is None
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
