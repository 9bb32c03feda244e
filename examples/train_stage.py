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

Arguments: ``--stage`` (1 | 2), ``--model``, ``--dataset``, ``--output_dir``, ``--learning_rate`` (1e-4),
``--batch_size`` (4), ``--grad_accum`` (1), ``--num_train_epochs`` (1), ``--max_steps`` (-1), ``--bf16``,
``--gradient_checkpointing``, ``--use_cpu``, ``--logging_steps`` (10), ``--save_steps`` (1000), ``--seed`` (0).
"""

from __future__ import annotations

import argparse

from transformers import Trainer, TrainingArguments

from transformers_baichuan_audio.loading import load_model_and_processor
from transformers_baichuan_audio.training import BaichuanAudioCollator, apply_stage, loading


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--dataset", required=True)
    loading.add_training_arguments(parser, learning_rate=1e-4, save_steps=1000)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dtype = "bfloat16" if args.bf16 else "float32"
    model, processor = load_model_and_processor(args.model, device="cpu", dtype=dtype, training=True)
    trainable = apply_stage(model, args.stage)
    print(f"stage {args.stage}: {len(trainable)} trainable tensors")
    if args.gradient_checkpointing:
        model.enable_input_require_grads()  # the frozen text embedding must still pass gradients
    training_args = TrainingArguments(**loading.training_arguments_kwargs(args))
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=loading.load_rows(args.dataset),
        data_collator=BaichuanAudioCollator(processor, model.config.codebook_sizes),
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
    return trainer


if __name__ == "__main__":
    main()
