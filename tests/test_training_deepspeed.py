"""DeepSpeed ZeRO-2 / ZeRO-3 through ``accelerate launch`` (``examples/accelerate/deepspeed_zero{2,3}.yaml``).

DeepSpeed is an optional dependency (``pip install deepspeed``, not in this package's requirements) and needs a
GPU per process: the run is skipped, with the reason, where ``import deepspeed`` fails or no GPU is present. Where
both are there it takes 4 stage-2 steps on the tiny model in one process (bf16) and checks that the losses are finite
and fall, and that the model is written. The configs themselves are always checked (they parse and name the ZeRO stage).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_parse(stage):
    config = yaml.safe_load((ROOT / f"examples/accelerate/deepspeed_zero{stage}.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"]["zero_stage"] == stage


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_takes_steps(stage, tmp_path):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (optional: pip install deepspeed)")
    if not torch.cuda.is_available():
        pytest.skip("DeepSpeed ZeRO needs a GPU per process; none here")
    from test_training_fsdp import common_args, write_equal_rows

    data = tmp_path / "rows.jsonl"
    write_equal_rows(data)
    args = [a for a in common_args(data) if a != "--use_cpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / f"examples/accelerate/deepspeed_zero{stage}.yaml"), "--num_processes", "1",
           str(ROOT / "examples/train_stage.py"), *args, "--bf16", "--batch_size", "1",
           "--output_dir", str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "out" / "config.json").exists()
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    losses = [r["loss"] for r in state["log_history"] if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
