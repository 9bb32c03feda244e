"""LoRA speech-chat SFT of Baichuan-Audio with TRL ``SFTTrainer`` + PEFT (one GPU, or many through accelerate).

Data: rows of the training dataset format (``transformers_baichuan_audio.training.data``), e.g. ``task: "sft"`` chats
whose assistant answers hold text and pre-computed ``audio_codes`` (``examples/precompute_codes.py``).

Trained: LoRA on the LLM projections only (regex scoped to ``model.language_model``), plus the audio head (and with
``--train_audio_embed`` the audio embedding tables) as fully trained modules saved with the adapter.

Examples::

    # smoke run on CPU with the tiny random model
    python examples/train_lora_sft.py --model tiny-random --dataset data.jsonl --output_dir out --max_steps 20 --use_cpu
    # one GPU, bf16, gradient checkpointing
    python examples/train_lora_sft.py --model ./baichuan-audio-hf --dataset codes/ --output_dir out --bf16 \
        --gradient_checkpointing
    # several GPUs / nodes
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/train_lora_sft.py --model ... --bf16
    # merge the adapter into the base weights afterwards
    python examples/train_lora_sft.py --model ./baichuan-audio-hf --merge_adapter out --merged_output_dir merged

Arguments: ``--model`` (path or ``tiny-random``), ``--dataset`` (JSON lines / pre-computed shards dir / saved
dataset), ``--output_dir``, ``--lora_r`` (16), ``--lora_alpha`` (32), ``--lora_dropout`` (0.05), ``--no_train_audio_head``,
``--train_audio_embed``, ``--learning_rate`` (2e-4), ``--batch_size`` (per device, 4), ``--grad_accum`` (1),
``--num_train_epochs`` (1), ``--max_steps`` (-1), ``--bf16``, ``--gradient_checkpointing``, ``--use_cpu``,
``--logging_steps`` (10), ``--save_steps`` (500), ``--merge_adapter DIR`` + ``--merged_output_dir DIR`` (merge mode).
"""

from __future__ import annotations

import argparse

from transformers_baichuan_audio.loading import load_model_and_processor
from transformers_baichuan_audio.training import BaichuanAudioCollator, lora_sft_config
from transformers_baichuan_audio.training.loading import add_training_arguments, load_rows, training_arguments_kwargs
from transformers_baichuan_audio.training.recipes import load_lora


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_training_arguments(p, learning_rate=2e-4, save_steps=500)
    p.add_argument("--dataset")
    p.add_argument("--lora_r", type=int, default=16)
    p.add_argument("--lora_alpha", type=int, default=32)
    p.add_argument("--lora_dropout", type=float, default=0.05)
    p.add_argument("--no_train_audio_head", action="store_true")
    p.add_argument("--train_audio_embed", action="store_true")
    p.add_argument("--merge_adapter", help="merge mode: adapter directory to merge into --model")
    p.add_argument("--merged_output_dir")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dtype = "bfloat16" if args.bf16 else "float32"
    model, processor = load_model_and_processor(args.model, device="cpu", dtype=dtype, training=True)
    if args.merge_adapter:
        merged = load_lora(model, args.merge_adapter, merge=True)
        merged.save_pretrained(args.merged_output_dir)
        processor.save_pretrained(args.merged_output_dir)
        return merged

    from trl import SFTConfig

    from transformers_baichuan_audio.training.trainer import BaichuanAudioSFTTrainer

    config = model.config
    sft_args = SFTConfig(
        **training_arguments_kwargs(args),
        # our collator renders, masks and pads: TRL must not tokenize the rows
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
    )
    trainer = BaichuanAudioSFTTrainer(  # SFTTrainer with the model's text + audio loss
        model=model,
        args=sft_args,
        train_dataset=load_rows(args.dataset),
        processing_class=processor,
        data_collator=BaichuanAudioCollator(processor, config.codebook_sizes),
        peft_config=lora_sft_config(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            train_audio_head=not args.no_train_audio_head,
            train_audio_embed=args.train_audio_embed,
            num_codebooks=config.num_codebooks,
        ),
    )
    trainer.train()
    trainer.save_model(args.output_dir)  # the adapter + the saved modules (audio head ...)
    return trainer


if __name__ == "__main__":
    main()
