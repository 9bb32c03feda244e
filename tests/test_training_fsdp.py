"""FSDP 2 through ``accelerate launch`` with 2 CPU processes (gloo), ``examples/accelerate/fsdp_cpu.yaml``, on the
tiny training model, stage 2 (text embedding / LM head / audio tokenizer frozen), in ONE launch:

1. 4 steps with activation checkpointing, a sharded checkpoint at step 2 and 4, the final model gathered;
2. a second trainer resumed from the sharded ``checkpoint-2`` runs steps 3-4 again.

Checked against a single-process run of the same script in this process (batch 2 = 2 ranks x 1, no checkpointing):
the loss curves agree (relative 1e-4: the same fp32 math, reduced in another order over ranks; measured about
1e-7), the resumed steps repeat the first run's (relative 1e-5), the gathered model and the export of the sharded
checkpoint-4 load with ``from_pretrained``, are identical to each other, close to the single-process weights
(elementwise atol 5e-4, half an Adam step of lr 1e-3, which bounds how far a near-zero gradient's update can differ;
and the L2 gap below 1 % of the L2 training update; measured 7.6e-5 and 2.1e-4) and leave the frozen text
embedding bit-identical;
3. LoRA SFT (``examples/train_lora_sft.py``) under FSDP takes 2 steps and saves an adapter that loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training_accelerate import write_rows

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples/accelerate/fsdp_cpu.yaml"

DRIVER = r"""
import importlib.util, json, sys
import torch
torch.set_num_threads(1)
from accelerate import PartialState
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FSDPModule
state = PartialState(cpu=True)
state.distributed_type = DistributedType.MULTI_GPU  # accelerate enables FSDP on accelerators only (see the yaml)
spec = importlib.util.spec_from_file_location("train_stage", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
out, common = sys.argv[2], sys.argv[3:] + ["--accelerator_config", json.dumps({"use_configured_state": True})]
first = mod.main(common + ["--output_dir", out + "/run", "--gradient_checkpointing"])
units = sorted({type(m).__name__.removeprefix("FSDP") for m in first.model.modules() if isinstance(m, FSDPModule)})
resumed = mod.main(common + ["--output_dir", out + "/resumed", "--resume_from_checkpoint", out + "/run/checkpoint-2"])
losses = lambda t: {r["step"]: r["loss"] for r in t.state.log_history if "loss" in r}
spec = importlib.util.spec_from_file_location("train_lora_sft", sys.argv[1].replace("train_stage", "train_lora_sft"))
lora_mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(lora_mod)
lora = lora_mod.main(["--model", "tiny-random", "--dataset", common[common.index("--dataset") + 1], "--use_cpu",
    "--max_steps", "2", "--batch_size", "1", "--learning_rate", "1e-2", "--lora_r", "4", "--logging_steps", "1",
    "--report_to", "none", "--output_dir", out + "/lora"] + common[-2:])
if state.is_main_process:
    result = {"fsdp": [first.is_fsdp_enabled, resumed.is_fsdp_enabled, lora.is_fsdp_enabled], "units": units,
              "first": losses(first), "resumed": losses(resumed), "lora": losses(lora)}
    open(out + "/result.json", "w").write(json.dumps(result))
"""


def write_equal_rows(path: Path, n: int = 8) -> None:
    """SFT rows with the same number of text and audio label positions each, so that the mean of the two ranks'
    mean losses equals the single-process mean over the batch of 2."""
    write_rows(path, n, frames=3)


def common_args(data: Path) -> list[str]:
    return [
        "--stage", "2", "--model", "tiny-random", "--dataset", str(data), "--max_steps", "4", "--save_steps", "2",
        "--learning_rate", "1e-3", "--use_cpu", "--logging_steps", "1", "--report_to", "none",
    ]  # fmt: skip


def run_stage_script(argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_stage_ref", ROOT / "examples/train_stage.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


def test_fsdp_config_names_the_model_units():
    """The shipped FSDP configs wrap exactly the classes the model names (``fsdp_wrap_classes``)."""
    import yaml

    from transformers_baichuan_audio.tiny_random import build_tiny_random
    from transformers_baichuan_audio.training.distributed import fsdp_wrap_classes

    model, _ = build_tiny_random(0, training=True)
    expected = fsdp_wrap_classes(model)
    assert expected == ["BaichuanAudioHead", "BaichuanWhisperLayer", "Qwen2DecoderLayer"]
    for name in ("fsdp.yaml", "fsdp_cpu.yaml"):
        config = yaml.safe_load((ROOT / "examples/accelerate" / name).read_text())["fsdp_config"]
        assert config["fsdp_transformer_layer_cls_to_wrap"].split(",") == expected, name
        assert config["fsdp_version"] == 2 and config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"


@pytest.mark.filterwarnings("ignore")
def test_fsdp_two_cpu_processes_curve_resume_export(tmp_path):
    from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration
    from transformers_baichuan_audio.tiny_random import build_tiny_random
    from transformers_baichuan_audio.training.distributed import export_fsdp_checkpoint

    data = tmp_path / "rows.jsonl"
    write_equal_rows(data)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), str(driver),
           str(ROOT / "examples/train_stage.py"), str(tmp_path), *common_args(data), "--batch_size", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # the single-process reference runs here while the two ranks run
    torch.set_num_threads(1)
    reference = run_stage_script([*common_args(data), "--batch_size", "2", "--output_dir", str(tmp_path / "ref")])
    ref_losses = {r["step"]: r["loss"] for r in reference.state.log_history if "loss" in r}

    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["fsdp"] == [True, True, True]
    # the model's units, plus the text embedding and LM head that accelerate always carves out
    units = ["BaichuanAudioForConditionalGeneration", "BaichuanAudioHead", "BaichuanWhisperLayer", "Embedding",
             "Linear", "Qwen2DecoderLayer"]  # fmt: skip
    assert result["units"] == units
    first = {int(k): v for k, v in result["first"].items()}
    resumed = {int(k): v for k, v in result["resumed"].items()}
    assert sorted(first) == sorted(ref_losses) == [1, 2, 3, 4]
    assert ref_losses[4] < ref_losses[1]  # it trains
    print(
        "max relative loss difference FSDP vs single process:",
        max(abs(first[s] - ref_losses[s]) / abs(ref_losses[s]) for s in first),
    )
    for step in first:
        assert first[step] == pytest.approx(ref_losses[step], rel=1e-4), (step, first, ref_losses)
    for step in (3, 4):
        assert resumed[step] == pytest.approx(first[step], rel=1e-5), (step, resumed, first)

    gathered = BaichuanAudioForConditionalGeneration.from_pretrained(str(tmp_path / "run"))
    exported = export_fsdp_checkpoint(str(tmp_path / "run/checkpoint-4"), str(tmp_path / "export"))
    reloaded = BaichuanAudioForConditionalGeneration.from_pretrained(str(tmp_path / "export"))
    initial, _ = build_tiny_random(0, training=True)
    ref_state = reference.model.state_dict()
    init_state = initial.state_dict()
    gap = moved_by = 0.0
    for name, tensor in gathered.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(exported.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(tensor, ref_state[name], rtol=0, atol=5e-4, msg=name)
        gap += (tensor - ref_state[name]).square().sum().item()
        moved_by += (ref_state[name] - init_state[name]).square().sum().item()
    print("weights: FSDP - single process / training update (L2):", (gap / moved_by) ** 0.5)
    assert (gap / moved_by) ** 0.5 < 1e-2
    embed = "model.language_model.embed_tokens.weight"
    assert torch.equal(gathered.state_dict()[embed], init_state[embed])  # frozen in stage 2
    # LoRA SFT under FSDP: trains, and the adapter is saved (gathered) and loads onto a fresh base model
    lora_losses = list(result["lora"].values())
    assert len(lora_losses) == 2 and all(0 < x < float("inf") for x in lora_losses)
    from peft import PeftModel

    adapter = PeftModel.from_pretrained(build_tiny_random(0, training=True)[0], str(tmp_path / "lora"))
    lora_b = [p for n, p in adapter.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero: the steps trained it
    moved = [n for n in ref_state if n.startswith("audio_head.") and not torch.equal(ref_state[n], init_state[n])]
    assert moved  # the trainable parts did change
