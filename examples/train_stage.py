"""Continued pre-training of Baichuan-Audio with the paper's two-stage recipe (``transformers.Trainer``).

* ``--stage 1``: the LLM is frozen; the audio embeddings and the audio head train.
* ``--stage 2``: everything trains except the text embedding, the LM head, the audio tokenizer and code2wav.

Data: rows of any task of the dataset format (``asr``, ``tts``, ``itts``, ``intlv``, ``aqa``, ``s2tt``, ``sft``),
mixed freely; each row's ``task`` selects its loss mask (INTLV: no audio loss; ITTS: all but the first text segment).
Pre-compute the codes first (``examples/precompute_codes.py``).

Examples::

    python examples/train_stage.py --stage 1 --model tiny-random --dataset data.jsonl --output_dir s1 --max_steps 5 --use_cpu
    accelerate launch --config_file examples/accelerate/fsdp.yaml examples/train_stage.py --stage 2 \
        --model s1 --dataset codes/ --output_dir s2 --bf16 --gradient_checkpointing

Arguments (``transformers.HfArgumentParser``): ``--stage`` (1 | 2), ``--model``, ``--dataset``, and every
``TrainingArguments`` field as ``--name``, e.g. ``--output_dir``, ``--learning_rate`` (1e-4 here),
``--per_device_train_batch_size`` or ``--batch_size`` (4 here), ``--gradient_accumulation_steps`` or ``--grad_accum``
(1), ``--num_train_epochs`` (1), ``--max_steps`` (-1), ``--bf16``, ``--gradient_checkpointing``, ``--use_cpu``,
``--logging_steps`` (10 here), ``--save_steps`` (1000 here), ``--seed`` (0 here); ``--help`` lists them all.
"""

from dataclasses import dataclass, field
from typing import Literal

from transformers import Trainer, TrainingArguments

from transformers_baichuan_audio.loading import load_model_and_processor
from transformers_baichuan_audio.training import BaichuanAudioCollator, apply_stage, scripts


@dataclass
class StageArguments:
    stage: Literal[1, 2] = field(metadata={"help": "1: audio embeddings + audio head; 2: all but text embed / LM head"})
    model: str = field(metadata={"help": "a converted checkpoint directory, or tiny-random"})
    dataset: str = field(metadata={"help": "JSON lines, a pre-computed shards directory or a saved dataset"})


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
        train_dataset=scripts.load_rows(args.dataset),
        data_collator=BaichuanAudioCollator(processor, model.config.codebook_sizes),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    return trainer


if __name__ == "__main__":
    main()
