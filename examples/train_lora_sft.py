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

Arguments (``transformers.HfArgumentParser``): ``--model`` (path or ``tiny-random``), ``--dataset`` (JSON lines /
pre-computed shards dir / saved dataset), ``--lora_r`` (16), ``--lora_alpha`` (32), ``--lora_dropout`` (0.05),
``--no_train_audio_head``, ``--train_audio_embed``, ``--merge_adapter DIR`` + ``--merged_output_dir DIR`` (merge
mode), and every TRL ``SFTConfig`` field as ``--name`` (``BaichuanAudioSFTConfig``), e.g. ``--output_dir``, ``--learning_rate`` (2e-4 here),
``--per_device_train_batch_size`` or ``--batch_size`` (4 here), ``--gradient_accumulation_steps`` or ``--grad_accum``
(1), ``--num_train_epochs`` (1), ``--max_steps`` (-1), ``--bf16`` (off here), ``--gradient_checkpointing`` (off here),
``--use_cpu``, ``--logging_steps`` (10), ``--save_steps`` (500), ``--seed`` (0 here); ``--help`` lists them all.
"""

from dataclasses import dataclass, field

from transformers_baichuan_audio.loading import load_model_and_processor
from transformers_baichuan_audio.training import BaichuanAudioCollator, lora_sft_config
from transformers_baichuan_audio.training.distributed import save_trained_model
from transformers_baichuan_audio.training.recipes import load_lora
from transformers_baichuan_audio.training.scripts import load_rows, training_argument_parser
from transformers_baichuan_audio.training.trainer import BaichuanAudioSFTConfig, BaichuanAudioSFTTrainer


@dataclass
class LoraArguments:
    model: str = field(metadata={"help": "a converted checkpoint directory, or tiny-random"})
    dataset: str | None = field(default=None, metadata={"help": "JSON lines, pre-computed shards dir or saved dataset"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    no_train_audio_head: bool = False
    train_audio_embed: bool = False
    merge_adapter: str | None = field(
        default=None, metadata={"help": "merge mode: adapter directory to merge into --model"}
    )
    merged_output_dir: str | None = None


def parse_args(argv=None) -> tuple[LoraArguments, BaichuanAudioSFTConfig]:
    parser = training_argument_parser(
        LoraArguments,
        BaichuanAudioSFTConfig,
        learning_rate=2e-4,
        save_steps=500,
        # our collator renders, masks and pads: TRL must not tokenize the rows
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
    )
    return parser.parse_args_into_dataclasses(argv)


def main(argv=None):
    args, sft_args = parse_args(argv)
    dtype = "bfloat16" if sft_args.bf16 else "float32"
    model, processor = load_model_and_processor(args.model, device="cpu", dtype=dtype, training=True)
    if args.merge_adapter:
        merged = load_lora(model, args.merge_adapter, merge=True)
        merged.save_pretrained(args.merged_output_dir)
        processor.save_pretrained(args.merged_output_dir)
        return merged

    config = model.config
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
    trainer.train(resume_from_checkpoint=sft_args.resume_from_checkpoint)
    save_trained_model(trainer, sft_args.output_dir)  # the adapter + the saved modules (audio head ...); FSDP too
    return trainer


if __name__ == "__main__":
    main()
