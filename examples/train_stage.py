"""Continued pre-training of Baichuan-Audio with the paper's two-stage recipe (``transformers.Trainer``).

* ``--stage 1``: the LLM is frozen; the audio embeddings and the audio head train.
* ``--stage 2``: everything trains except the text embedding, the LM head, the audio tokenizer and code2wav.

Data: rows of any task of the dataset format (``asr``, ``tts``, ``itts``, ``intlv``, ``aqa``, ``s2tt``, ``sft``),
mixed freely; each row's ``task`` selects its loss mask (INTLV: no audio loss; ITTS: all but the first text segment).
Pre-compute the codes first (``examples/precompute_codes.py``).

Examples::

    python examples/train_stage.py --stage 1 --model tiny-random --dataset data.jsonl --output_dir s1 --max_steps 5 --use_cpu
    accelerate launch --config_file examples/accelerate/fsdp.yaml examples/train_stage.py --stage 2 \
        --model s1 --dataset codes/ --output_dir s2 --bf16 --gradient_checkpointing --save_steps 500
    # resume from a (sharded) checkpoint, then export a checkpoint on its own (one process, no GPU):
    accelerate launch --config_file examples/accelerate/fsdp.yaml examples/train_stage.py ... \
        --resume_from_checkpoint s2/checkpoint-500
    python -c "from transformers_baichuan_audio.training.distributed import export_fsdp_checkpoint as e; \
        e('s2/checkpoint-500', 's2-step500')"

Under FSDP the final model is gathered and written as an ordinary safetensors model (``from_pretrained``); the
``checkpoint-N`` folders hold the shards (``SHARDED_STATE_DICT``), the optimizer state and the data position.

Large corpora: ``--streaming`` reads the JSON lines lazily, ``--task_weights asr=0.3,tts=0.5,itts=0.2`` (or
``paper``) samples the tasks with those weights (seeded by ``--seed``); both need ``--max_steps``.

Arguments (``transformers.HfArgumentParser``): ``--stage`` (1 | 2), ``--model``, ``--dataset``, ``--streaming``,
``--task_weights``, and every
``TrainingArguments`` field as ``--name``, e.g. ``--output_dir``, ``--learning_rate`` (1e-4 here),
``--per_device_train_batch_size`` or ``--batch_size`` (4 here), ``--gradient_accumulation_steps`` or ``--grad_accum``
(1), ``--num_train_epochs`` (1), ``--max_steps`` (-1), ``--bf16``, ``--gradient_checkpointing``, ``--use_cpu``,
``--logging_steps`` (10 here), ``--save_steps`` (1000 here), ``--seed`` (0 here), ``--resume_from_checkpoint``; ``--help`` lists them all.
"""

from dataclasses import dataclass, field
from typing import Literal

from transformers import Trainer, TrainingArguments

from transformers_baichuan_audio.loading import load_model_and_processor
from transformers_baichuan_audio.training import BaichuanAudioCollator, apply_stage, scripts
from transformers_baichuan_audio.training.distributed import check_distributed_setup, save_trained_model


@dataclass
class StageArguments:
    stage: Literal[1, 2] = field(metadata={"help": "1: audio embeddings + audio head; 2: all but text embed / LM head"})
    model: str = field(metadata={"help": "a converted checkpoint directory, or tiny-random"})
    dataset: str = field(metadata={"help": "JSON lines, a pre-computed shards directory or a saved dataset"})
    streaming: bool = field(default=False, metadata={"help": "read --dataset lazily (JSON lines); needs --max_steps"})
    task_weights: str | None = field(
        default=None, metadata={"help": "stream a seeded task mix: 'asr=0.3,tts=0.7' or 'paper' (hours of Table 4)"}
    )


def parse_args(argv=None) -> tuple[StageArguments, TrainingArguments]:
    parser = scripts.training_argument_parser(StageArguments, TrainingArguments, learning_rate=1e-4, save_steps=1000)
    return parser.parse_args_into_dataclasses(argv)


def main(argv=None):
    args, training_args = parse_args(argv)
    dtype = "bfloat16" if training_args.bf16 else "float32"
    model, processor = load_model_and_processor(args.model, device="cpu", dtype=dtype, training=True)
    trainable = apply_stage(model, args.stage)
    print(f"stage {args.stage}: {len(trainable)} trainable tensors")
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()  # the frozen text embedding must still pass gradients
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=scripts.training_rows(args.dataset, args.streaming, args.task_weights, training_args.seed),
        data_collator=BaichuanAudioCollator(processor, model.config.codebook_sizes),
    )
    check_distributed_setup(trainer)  # FSDP asked by the launcher but not running: a clear error, not silent DDP
    if trainer.accelerator.is_main_process:  # a sharded FSDP checkpoint-N has no config: export reads this one
        model.config.save_pretrained(training_args.output_dir)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_trained_model(trainer, training_args.output_dir)  # FSDP: gathered into one ordinary safetensors model
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
    return trainer


if __name__ == "__main__":
    main()
