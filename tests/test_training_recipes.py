"""Training recipes: stage 1 / stage 2 / LoRA SFT leave exactly the documented parameters trainable.

The expected sets are built a second way, from the sub-modules' own ``named_parameters`` (not from the prefix lists the
recipes use): stage 1 = audio embeddings + audio head; stage 2 = everything but the text embedding, the LM head, the
audio tokenizer and code2wav; LoRA = A/B matrices on the 7 projections of every LLM layer + the saved module copies.
"""

from __future__ import annotations

import pytest
import torch

from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration
from transformers_baichuan_audio.tiny_random import tiny_random_processor, tiny_training_config
from transformers_baichuan_audio.training import apply_stage1, apply_stage2, lora_sft_config, trainable_parameter_names

PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


@pytest.fixture(scope="module")
def config():
    return tiny_training_config(tiny_random_processor(), enable_audio_output=True)


def names_of(module, prefix):
    return {f"{prefix}.{n}" for n, _ in module.named_parameters()}


def test_stage1(config):
    model = BaichuanAudioForConditionalGeneration(config)
    trainable = apply_stage1(model)
    expected = names_of(model.model.audio_embed, "model.audio_embed") | names_of(model.audio_head, "audio_head")
    assert set(trainable) == expected == set(trainable_parameter_names(model))
    assert not any(n.startswith("model.language_model.") for n in trainable)


def test_stage2(config):
    model = BaichuanAudioForConditionalGeneration(config)
    assert model.code2wav is not None and model.model.audio_tokenizer is not None
    trainable = apply_stage2(model)
    frozen = (
        names_of(model.model.language_model.embed_tokens, "model.language_model.embed_tokens")
        | names_of(model.lm_head, "lm_head")
        | names_of(model.model.audio_tokenizer, "model.audio_tokenizer")
        | names_of(model.code2wav, "code2wav")
    )
    everything = {n for n, _ in model.named_parameters()}
    assert set(trainable) == everything - frozen == set(trainable_parameter_names(model))
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in trainable
    assert "model.language_model.norm.weight" in trainable


@pytest.mark.parametrize("train_audio_embed", [False, True])
def test_lora_sft(config, train_audio_embed):
    from peft import get_peft_model

    model = BaichuanAudioForConditionalGeneration(config)
    head_params = [n for n, _ in model.audio_head.named_parameters()]  # before wrapping (PEFT edits in place)
    peft_model = get_peft_model(
        model, lora_sft_config(r=4, train_audio_embed=train_audio_embed, num_codebooks=config.num_codebooks)
    )
    trainable = set(trainable_parameter_names(peft_model))
    base = "base_model.model."
    expected = {
        f"{base}model.language_model.layers.{layer}.{proj}.lora_{ab}.default.weight"
        for layer in range(config.text_config.num_hidden_layers)
        for proj in PROJECTIONS
        for ab in "AB"
    }
    expected |= {f"{base}audio_head.modules_to_save.default.{n}" for n in head_params}
    if train_audio_embed:
        expected |= {
            f"{base}model.audio_embed.embeddings.{i}.modules_to_save.default.weight"
            for i in range(config.num_codebooks)
        }
    assert trainable == expected
    # nothing in the audio tokenizer, the audio head (beyond its saved copy) or code2wav got an adapter
    assert not any("lora_" in n and ".language_model." not in n for n, _ in peft_model.named_parameters())

    if train_audio_embed:
        # the audio head reads the trained copies of the embedding tables (gradient reaches them from the head alone)
        ids = torch.tensor([[5, config.audiogen_start_token_id, 7]])
        audio_labels = torch.full((1, 3, config.num_codebooks), -100)
        audio_labels[0, 1] = torch.tensor([1] * config.num_codebooks)
        peft_model(input_ids=ids, audio_labels=audio_labels).loss.backward()
        copy = peft_model.base_model.model.model.audio_embed.embeddings[0].modules_to_save["default"]
        assert copy.weight.grad is not None and copy.weight.grad.abs().sum() > 0
