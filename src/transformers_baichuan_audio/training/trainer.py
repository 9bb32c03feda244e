"""``BaichuanAudioSFTTrainer``: TRL's ``SFTTrainer`` with the model's own loss (text + audio head).

TRL 1.x ``SFTTrainer.compute_loss`` computes its own text cross-entropy from the LM-head log-probs and ignores the
model's ``loss``, so the audio-head loss (``audio_labels``) would silently not train. This subclass uses the
``transformers.Trainer`` loss path instead: one forward, ``outputs.loss = text_loss_weight * text CE + sum_i
audio_loss_weights[i] * CE_i`` (``num_items_in_batch`` is forwarded to the text loss for gradient accumulation). TRL's
entropy / token-accuracy metrics are not logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import Trainer
from trl import SFTConfig, SFTTrainer


class BaichuanAudioSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss is the model's ``outputs.loss`` (text + audio). Use it with
    :class:`~transformers_baichuan_audio.training.data.BaichuanAudioCollator`, ``remove_unused_columns=False`` and
    ``dataset_kwargs={"skip_prepare_dataset": True}``."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {**inputs, "use_cache": False}
        return Trainer.compute_loss(
            self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )


@dataclass
class BaichuanAudioSFTConfig(SFTConfig):
    """TRL's ``SFTConfig`` with ``bf16`` a plain switch that is off by default, as in ``TrainingArguments`` (TRL
    turns it on unless ``fp16``, and ``HfArgumentParser`` would then want ``--bf16 True``); importable, so that the
    ``training_args.bin`` the trainer saves loads anywhere. Used by ``examples/train_lora_sft.py``."""

    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (the example loads the model in bf16)"})


__all__ = ["BaichuanAudioSFTConfig", "BaichuanAudioSFTTrainer"]
