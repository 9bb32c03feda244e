"""Memory figures of the training recipes (``training/memory.py``): parameter counts against the model's own tensors
(tiny config) and the byte formula against hand-computed values."""

from __future__ import annotations

import pytest

from transformers_baichuan_audio.training.memory import memory_per_gpu, parameter_counts


def test_parameter_counts_match_the_model():
    from transformers_baichuan_audio.configuration import BaichuanAudioConfig
    from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration

    config = BaichuanAudioConfig.tiny()
    counts = parameter_counts(config, lora_r=4)
    model = BaichuanAudioForConditionalGeneration(config)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    total = sum(sizes.values())
    for recipe in ("stage1", "stage2"):
        c = counts[recipe]
        assert c["trainable"] + c["frozen"] + c["fp32_frozen"] == total, recipe
    stage1 = sum(v for n, v in sizes.items() if n.startswith(("model.audio_embed.", "audio_head.")))
    assert counts["stage1"]["trainable"] == stage1
    frozen2 = sum(v for n, v in sizes.items() if n.startswith(("model.language_model.embed_tokens.", "lm_head.",
                                                               "model.audio_tokenizer.", "code2wav.")))  # fmt: skip
    assert counts["stage2"]["trainable"] == total - frozen2
    # LoRA rank 4: 4 * (in + out) per projection of every decoder layer, plus the whole audio head
    text = config.text_config
    h, kv, ffn = (
        text.hidden_size,
        text.num_key_value_heads * (text.hidden_size // text.num_attention_heads),
        text.intermediate_size,
    )
    per_layer = 4 * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + ffn) + (ffn + h))
    head = sum(v for n, v in sizes.items() if n.startswith("audio_head."))
    assert counts["lora"]["trainable"] == head + text.num_hidden_layers * per_layer
    assert counts["lora"]["frozen"] + counts["lora"]["fp32_frozen"] + head == total


def test_memory_formula():
    counts = {"trainable": 1000, "frozen": 500, "fp32_frozen": 10}
    assert memory_per_gpu(counts, 1, "bf16", sharded=False) == 1000 * 8 + 500 * 2 + 10 * 4
    assert memory_per_gpu(counts, 4, "mixed", sharded=True, largest_unit=100) == (16000 + 1000 + 40) / 4 + 200
    with pytest.raises(ValueError, match="regime"):
        memory_per_gpu(counts, 1, "fp8")
    with pytest.raises(ValueError, match="num_gpus"):
        memory_per_gpu(counts, 0)
