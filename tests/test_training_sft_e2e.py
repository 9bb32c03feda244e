"""End to end: TRL ``SFTTrainer`` + a PEFT LoRA config fine-tune a tiny random model on a few speech-chat rows until
``generate(output_audio=True)`` (greedy) reproduces a trained spoken answer exactly (text AND audio codes).

This proves that the collator's labels / masks, the model's text + audio losses (through ``BaichuanAudioSFTTrainer``:
TRL 1.x computes its own text loss and would drop the audio one) and the generation loop's layout agree: a mismatch in the label shift of the audio frames, the end-of-audio frame or the text labels of
``<audiogen_start>`` / end-of-text makes greedy decoding diverge from the memorised answer.
"""

from __future__ import annotations

import pytest
import torch

from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration
from transformers_baichuan_audio.tiny_random import tiny_random_processor, tiny_training_config
from transformers_baichuan_audio.training import BaichuanAudioCollator, lora_sft_config

ANSWERS = [("hello", "Hi there."), ("weather", "Sunny."), ("name", "Bai.")]


def _rows(codebook_sizes, seed=1):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, (question, answer) in enumerate(ANSWERS):
        codes = torch.stack([torch.randint(0, s, (2 + i,), generator=g) for s in codebook_sizes], dim=1).tolist()
        rows.append(
            {
                "task": "sft",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": question}]},
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": answer}, {"type": "audio_codes", "codes": codes}],
                    },
                ],
            }
        )
    return rows


@pytest.mark.filterwarnings("ignore")
def test_sft_trainer_lora_reproduces_spoken_answer(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig

    from transformers_baichuan_audio.training.trainer import BaichuanAudioSFTTrainer

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention on the 2-core CI box
    try:
        processor = tiny_random_processor()
        # initializer_range 0.1: the LM head stays frozen under LoRA, so its random rows must be large enough for the
        # text logits to separate (with 0.02 the greedy margins are tiny)
        config = tiny_training_config(processor, initializer_range=0.1)
        model = BaichuanAudioForConditionalGeneration(config)
        rows = _rows(config.codebook_sizes)
        args = SFTConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            bf16=False,
            remove_unused_columns=False,
            dataset_kwargs={"skip_prepare_dataset": True},
            max_length=None,
            per_device_train_batch_size=len(rows),
            max_steps=100,
            learning_rate=5e-3,
            lr_scheduler_type="constant",
            logging_steps=50,
            report_to=[],
            save_strategy="no",
            gradient_checkpointing=False,
            disable_tqdm=True,
            seed=0,
        )
        trainer = BaichuanAudioSFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=processor,
            data_collator=BaichuanAudioCollator(processor, config.codebook_sizes),
            peft_config=lora_sft_config(r=16, lora_alpha=32, lora_dropout=0.0, num_codebooks=config.num_codebooks),
        )
        trainer.train()
        # adapters on the LLM projections only; the audio head is a fully trained copy
        trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
        assert all(("lora_" in n and ".language_model.layers." in n) or ".audio_head." in n for n in trained)

        merged = trainer.model.merge_and_unload().eval()
        for row in rows:
            prompt = processor.apply_chat_template(
                row["messages"][:1], add_generation_prompt=True, audio_output=True, tokenize=True, return_dict=True
            )
            out = merged.generate(
                input_ids=prompt["input_ids"],
                attention_mask=prompt["attention_mask"],
                output_audio=True,
                do_sample=False,
                audio_do_sample=False,
                tokenizer=processor.tokenizer,
                audio_max_frames=12,
            )
            answer_text, answer_codes = (
                row["messages"][1]["content"][0]["text"],
                row["messages"][1]["content"][1]["codes"],
            )
            new = out.sequences[0, prompt["input_ids"].shape[1] : int(out.sequence_lengths[0])].tolist()
            n = len(answer_codes)
            ids = processor.special_token_ids
            expected = (
                processor.tokenizer.encode(answer_text, add_special_tokens=False)
                + [ids["audiogen_start_token_id"]]
                + [ids["audio_pad_token_id"]] * n
                + [ids["audiogen_end_token_id"], processor.tokenizer.eos_token_id]
            )
            assert new == expected, processor.tokenizer.decode(new)
            assert len(out.audio_codes[0]) == 1
            assert out.audio_codes[0][0].tolist() == answer_codes
    finally:
        torch.set_num_threads(threads)
