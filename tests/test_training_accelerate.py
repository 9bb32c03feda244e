"""``accelerate launch`` with 2 CPU processes (gloo) runs a few LoRA SFT steps of ``examples/train_lora_sft.py`` and
both ranks end with identical weights (DDP averages the gradients; any rank-local difference in the data path, the
loss or unused parameters would make them diverge or hang).

Each rank writes a digest of its trainable tensors; the two digests must be equal and differ from the initial one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformers_baichuan_audio.tiny_random import TINY_TRAINING_CODEBOOK_SIZES

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r"""
import hashlib, importlib.util, os, sys
import torch
torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location("train_lora_sft", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
out = sys.argv[2]
trainer = mod.main(sys.argv[3:])
digest = hashlib.sha256()
for name, p in sorted(trainer.model.named_parameters()):
    if p.requires_grad:
        digest.update(name.encode()); digest.update(p.detach().float().contiguous().numpy().tobytes())
rank = int(os.environ.get("RANK", "0"))
open(os.path.join(out, f"rank{rank}.txt"), "w").write(digest.hexdigest())
"""


def write_rows(path: Path, n=4, frames=None):
    """SFT rows with text and spoken codes; ``frames``: audio frames per row (default 2 or 3, alternating)."""
    g = torch.Generator().manual_seed(0)
    with open(path, "w") as f:
        for i in range(n):
            codes = torch.stack(
                [torch.randint(0, s, (frames or 2 + i % 2,), generator=g) for s in TINY_TRAINING_CODEBOOK_SIZES], 1
            )
            row = {
                "task": "sft",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": f"question {i}"}]},
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "text", "text": f"answer {i}"},
                            {"type": "audio_codes", "codes": codes.tolist()},
                        ],
                    },
                ],
            }
            f.write(json.dumps(row) + "\n")


@pytest.mark.filterwarnings("ignore")
def test_two_cpu_processes_identical_weights(tmp_path):
    data = tmp_path / "rows.jsonl"
    write_rows(data)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "examples/accelerate/ddp_cpu.yaml"),
        str(driver), str(ROOT / "examples/train_lora_sft.py"), str(tmp_path),
        "--model", "tiny-random", "--dataset", str(data), "--output_dir", str(tmp_path / "out"),
        "--max_steps", "3", "--batch_size", "1", "--learning_rate", "1e-2", "--use_cpu", "--lora_r", "4",
        "--logging_steps", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digests = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert digests[0] == digests[1]
    # the adapter was saved by the main process and loads back onto a fresh base model
    from peft import PeftModel

    from transformers_baichuan_audio.loading import load_model_and_processor

    base, _ = load_model_and_processor("tiny-random", device="cpu", training=True)
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "out"))
    import hashlib

    digest = hashlib.sha256()
    for name, p in sorted(reloaded.named_parameters()):
        if "lora_" in name or "modules_to_save" in name:
            digest.update(name.encode())
            digest.update(p.detach().float().contiguous().numpy().tobytes())
    lora_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero: the steps did train
    assert digest.hexdigest() == digests[0]  # the saved adapter is the trained state
