"""Training on more than one device: the FSDP wrap policy of the model, saving a trained model from a sharded run,
and exporting a sharded (``SHARDED_STATE_DICT``) FSDP checkpoint to an ordinary ``from_pretrained`` directory.

FSDP (``examples/accelerate/fsdp.yaml``, FSDP 2) shards each module of :func:`fsdp_wrap_classes` as one unit and the
rest (embeddings, LM head, norms, everything frozen outside the units) as the root unit:

* ``Qwen2DecoderLayer`` -- the LLM layers;
* ``BaichuanAudioHead`` -- the depth-transformer audio head;
* ``BaichuanWhisperLayer`` -- the audio tokenizer's encoder layers (frozen; sharding them only saves memory).

``BaichuanAudioEmbeddings`` is in the model's ``_no_split_modules`` (it must stay on one device for ``device_map``)
but is NOT an FSDP unit: the audio head indexes its tables directly, outside the embeddings' own ``forward``, where
a unit of its own would still be sharded. In the root unit its tables are gathered for the whole forward.

Frozen parameters (stage 1 / stage 2 / LoRA) need nothing special under FSDP 2 (it shards per parameter, and mixed
``requires_grad`` within a unit is allowed).
"""

from __future__ import annotations

import os
from pathlib import Path

#: ``_no_split_modules`` entries that must not become FSDP units (see the module docstring).
FSDP_NOT_WRAPPED = ("BaichuanAudioEmbeddings",)
#: The folder of the model's shards inside a ``checkpoint-N`` directory written by ``Trainer`` under FSDP.
FSDP_MODEL_DIR = "pytorch_model_fsdp_0"


class FsdpSetupError(RuntimeError):
    """``accelerate launch`` asked for FSDP but the trainer runs without it, or a checkpoint is not an FSDP one."""


def fsdp_wrap_classes(model) -> list[str]:
    """Class names to shard as FSDP units (``fsdp_transformer_layer_cls_to_wrap``): every ``_no_split_modules``
    entry of ``model`` and of its sub-models that occurs in ``model``, except :data:`FSDP_NOT_WRAPPED`; sorted."""
    present = {type(module).__name__ for module in model.modules()}
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return sorted((names & present) - set(FSDP_NOT_WRAPPED))


def check_distributed_setup(trainer) -> None:
    """Raise :class:`FsdpSetupError` when the launcher asked for FSDP (``ACCELERATE_USE_FSDP``) but the trainer does
    not shard (accelerate runs FSDP on accelerators only: with ``--use_cpu`` it falls back to plain DDP)."""
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and not trainer.is_fsdp_enabled:
        raise FsdpSetupError(
            f"accelerate was launched with FSDP but the trainer runs {trainer.accelerator.distributed_type}: "
            "accelerate enables FSDP on GPUs / accelerators only (not with --use_cpu); "
            "use examples/accelerate/ddp_cpu.yaml on CPUs"
        )


def save_trained_model(trainer, output_dir: str) -> None:
    """Save the trained model to ``output_dir`` as an ordinary ``from_pretrained`` directory (safetensors).

    Under FSDP the full state dict is gathered (every rank must call this; rank 0 writes); otherwise, and for PEFT
    models (adapter only), ``trainer.save_model``."""
    if not trainer.is_fsdp_enabled:
        trainer.save_model(output_dir)
        return
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # collective: full tensors on rank 0, on CPU
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(output_dir, state_dict=state_dict)
    trainer.accelerator.wait_for_everyone()


def export_fsdp_checkpoint(checkpoint_dir: str, output_dir: str, config=None):
    """Export a sharded FSDP checkpoint (``checkpoint-N`` of a ``Trainer`` run with ``SHARDED_STATE_DICT``, or its
    ``pytorch_model_fsdp_0`` folder) to ``output_dir`` as a normal model directory (``config.json`` +
    safetensors). Runs in ONE process, no process group needed; holds one full copy of the model in CPU memory.

    ``config``: a ``BaichuanAudioConfig`` or a directory with ``config.json``; default: the checkpoint's parent
    directory (the run's ``output_dir``, where ``examples/train_stage.py`` writes the config first). Returns the
    exported model (fp32 or the dtype of the config). Raises :class:`FsdpSetupError` for a directory without FSDP
    shards and ``RuntimeError`` (torch's) when the shards do not hold every tensor of the model."""
    import torch.distributed.checkpoint as dcp

    from ..configuration import BaichuanAudioConfig
    from ..modeling.baichuan_audio import BaichuanAudioForConditionalGeneration

    checkpoint_dir = Path(checkpoint_dir)
    shards = checkpoint_dir if (checkpoint_dir / ".metadata").exists() else checkpoint_dir / FSDP_MODEL_DIR
    if not (shards / ".metadata").exists():
        raise FsdpSetupError(f"{checkpoint_dir} holds no FSDP model shards ({FSDP_MODEL_DIR}/.metadata)")
    if config is None:
        config = shards.parent.parent if shards.name == FSDP_MODEL_DIR else shards.parent
    if not isinstance(config, BaichuanAudioConfig):
        if not (Path(config) / "config.json").exists():
            raise FsdpSetupError(f"no config.json in {config}: pass config= (the trained model's configuration)")
        config = BaichuanAudioConfig.from_pretrained(str(config))
    model = BaichuanAudioForConditionalGeneration(config)
    state_dict = model.state_dict()
    # accelerate writes the model's state dict under a "model" key (tensor names "model.<name>")
    saved = set(dcp.FileSystemReader(str(shards)).read_metadata().state_dict_metadata)
    target = {"model": state_dict} if all(f"model.{name}" in saved for name in state_dict) else state_dict
    dcp.load(target, checkpoint_id=str(shards), no_dist=True)  # every tensor of the model must be there
    model.save_pretrained(output_dir)
    return model


__all__ = [
    "FSDP_MODEL_DIR",
    "FSDP_NOT_WRAPPED",
    "FsdpSetupError",
    "check_distributed_setup",
    "export_fsdp_checkpoint",
    "fsdp_wrap_classes",
    "save_trained_model",
]
