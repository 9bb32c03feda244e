"""Original LLM / audio-embedding / LM-head / audio-head weights -> BaichuanAudioForConditionalGeneration.

Also holds the helpers the other model tests share: a minimal translation of the fixture's ORIGINAL config.json
into a :class:`BaichuanAudioConfig` and a cached loader of the fixture model (original weights through
:func:`convert_original_model_weights`, the audio tokenizer / code2wav parts left to their own converters).
"""

from __future__ import annotations

import re
from functools import lru_cache

import pytest
import torch

from transformers_baichuan_audio.configuration import TOKEN_ID_FIELDS, BaichuanAudioConfig
from transformers_baichuan_audio.conversion.llm_weights import DROPPED_ORIGINAL_KEYS, convert_original_model_weights
from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration

OWNED_PREFIXES = ("model.", "lm_head.", "audio_head.")
NOT_OWNED_NEW_PREFIXES = ("model.audio_tokenizer.", "code2wav.")


def config_from_fixture(original: dict, **overrides) -> BaichuanAudioConfig:
    """Minimal translation of an original ``config.json`` (every size read from it, nothing assumed)."""
    audio = original["audio_config"]
    flow = original["flow_matching_config"]
    text = {
        "model_type": "qwen2",
        "vocab_size": original["vocab_size"],
        "hidden_size": original["hidden_size"],
        "intermediate_size": original["intermediate_size"],
        "num_hidden_layers": original["num_hidden_layers"],
        "num_attention_heads": original["num_attention_heads"],
        "num_key_value_heads": original["num_key_value_heads"],
        "head_dim": original.get("head_dim") or original["hidden_size"] // original["num_attention_heads"],
        "hidden_act": original["hidden_act"],
        "max_position_embeddings": original["max_position_embeddings"],
        "rms_norm_eps": original["rms_norm_eps"],
        "rope_parameters": {"rope_type": "default", "rope_theta": float(original["rope_theta"])},
        "tie_word_embeddings": False,
        "use_sliding_window": False,
    }
    tokenizer = {
        "codebook_sizes": list(audio["vq_config"]["codebook_sizes"]),
        "d_model": audio["d_model"],
        "encoder_layers": audio["encoder_layers"],
        "encoder_attention_heads": audio["encoder_attention_heads"],
        "encoder_ffn_dim": audio["encoder_ffn_dim"],
        "avg_pooler": audio["avg_pooler"],
    }
    code2wav = {
        "decoder_config": {
            "num_hidden_layers": audio["decoder_layers"],
            "num_attention_heads": audio["decoder_attention_heads"],
            "intermediate_size": audio["decoder_ffn_dim"],
        },
        "flow_matching_config": {
            "prenet_d_model": flow["prenet_d_model"],
            "prenet_attention_heads": flow["prenet_attention_heads"],
        },
    }
    hidden = original["hidden_size"]
    head = {
        "num_hidden_layers": audio["audio_head_transformer_layers"],
        "num_attention_heads": hidden // 128,  # the original: embed_size // 128
        "intermediate_size": 2 * hidden,  # the original: 2 * embed_size
    }
    kwargs = {
        "text_config": text,
        "audio_tokenizer_config": tokenizer,
        "audio_head_config": head,
        "code2wav_config": code2wav,
        "enable_audio_output": False,
        **{k: audio[k] for k in TOKEN_ID_FIELDS if k in audio},
    }
    kwargs.update(overrides)
    return BaichuanAudioConfig(**kwargs)


@lru_cache(maxsize=2)
def _load_fixture_model(path: str, attn_implementation: str):
    from transformers_baichuan_audio.parity.fixture import ReferenceFixture

    fixture = ReferenceFixture(path)
    config = config_from_fixture(fixture.config)
    torch.manual_seed(0)
    model = BaichuanAudioForConditionalGeneration._from_config(config, attn_implementation=attn_implementation)
    converted, handled = convert_original_model_weights(fixture.original_state_dict(), config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected, unexpected
    owned_missing = [k for k in missing if not k.startswith(NOT_OWNED_NEW_PREFIXES)]
    assert not owned_missing, f"parameters owned by the model converter left unloaded: {owned_missing}"
    return model.eval(), converted, handled


def load_fixture_model(reference_fixture, attn_implementation: str = "sdpa"):
    """(model in eval/fp32, converted state dict, handled original keys), cached per fixture and backend."""
    return _load_fixture_model(str(reference_fixture.path), attn_implementation)


# --------------------------------------------------------------------------------------------------------- tests


def test_every_owned_original_key_is_converted_or_deliberately_dropped(reference_fixture, original_state_dict):
    model, converted, handled = load_fixture_model(reference_fixture)
    owned = {k for k in original_state_dict if k.startswith(OWNED_PREFIXES)}
    assert handled == owned
    dropped = {k for k in owned if any(re.fullmatch(p, k) for p in DROPPED_ORIGINAL_KEYS)}
    n_layers = reference_fixture.config["audio_config"]["audio_head_transformer_layers"]
    assert dropped == {f"audio_head.transformer_layers.{i}.linear{j}.bias" for i in range(n_layers) for j in (1, 2)}
    owned_new = {k for k in model.state_dict() if not k.startswith(NOT_OWNED_NEW_PREFIXES)}
    assert set(converted) == owned_new


def test_fused_weights_are_split_exactly(reference_fixture, original_state_dict):
    """Independent re-assembly: concatenating the split pieces gives back the original fused tensors."""
    _, converted, _ = load_fixture_model(reference_fixture)
    pack = original_state_dict["model.layers.0.self_attn.W_pack.weight"]
    parts = [converted[f"model.language_model.layers.0.self_attn.{n}_proj.weight"] for n in "qkv"]
    assert torch.equal(torch.cat(parts), pack)
    linear1 = original_state_dict["audio_head.transformer_layers.1.linear1.weight"]
    hidden = original_state_dict["audio_head.transformer_layers.1.layernorm1.weight"].shape[0]
    positions = linear1.shape[1] // hidden
    fc1 = [converted[f"audio_head.layers.1.mlp.{p}.fc1.weight"] for p in range(positions)]
    assert torch.equal(torch.cat(fc1, dim=1), linear1)  # (I, P*H) with position-major columns
    linear2 = original_state_dict["audio_head.transformer_layers.1.linear2.weight"]
    fc2 = [converted[f"audio_head.layers.1.mlp.{p}.fc2.weight"] for p in range(positions)]
    assert torch.equal(torch.cat(fc2, dim=1), linear2)


def test_unknown_owned_key_raises():
    with pytest.raises(KeyError, match="unknown original key"):
        convert_original_model_weights({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(4)})
    with pytest.raises(KeyError, match="unknown original key"):
        convert_original_model_weights({"audio_head.something.weight": torch.zeros(4)})
    # keys of the other sub-models are not this function's business
    converted, handled = convert_original_model_weights({"audio_tokenizer.audio_model.conv1.weight": torch.zeros(1)})
    assert converted == {} and handled == set()


def test_w_pack_shape_checked_against_config():
    config = BaichuanAudioConfig.tiny()
    text = config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    bad = {
        "model.layers.0.self_attn.o_proj.weight": torch.zeros(text.hidden_size, text.hidden_size),
        "model.layers.0.self_attn.W_pack.weight": torch.zeros(3 * text.hidden_size, text.hidden_size),
    }
    with pytest.raises(ValueError, match="does not match text_config"):
        convert_original_model_weights(bad, config)
    good_rows = text.hidden_size + 2 * text.num_key_value_heads * head_dim
    bad["model.layers.0.self_attn.W_pack.weight"] = torch.zeros(good_rows, text.hidden_size)
    converted, _ = convert_original_model_weights(bad, config)
    assert converted["model.language_model.layers.0.self_attn.k_proj.weight"].shape[0] == (
        text.num_key_value_heads * head_dim
    )


def test_keys_convert_one_at_a_time_with_a_config(reference_fixture, original_state_dict):
    """The central converter streams shard by shard: with the config no key needs a sibling key."""
    _, converted, _ = load_fixture_model(reference_fixture)
    config = config_from_fixture(reference_fixture.config)
    for key, tensor in original_state_dict.items():
        if not key.startswith(OWNED_PREFIXES):
            continue
        alone, handled = convert_original_model_weights({key: tensor}, config)
        assert handled == {key}
        for new_key, value in alone.items():
            assert torch.equal(value, converted[new_key]), new_key
    with pytest.raises(KeyError, match="pass `config`"):  # without a config the sibling shapes are needed
        convert_original_model_weights(
            {"model.layers.0.self_attn.W_pack.weight": original_state_dict["model.layers.0.self_attn.W_pack.weight"]}
        )
