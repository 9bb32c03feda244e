"""Translation of the ORIGINAL config.json (+ tokenizer, vocoder arguments) into BaichuanAudioConfig."""

from __future__ import annotations

import copy

import pytest

from transformers_baichuan_audio.conversion.config import (
    ConversionError,
    config_from_original,
    read_added_tokens,
)


@pytest.fixture(scope="module")
def fixture_config(reference_fixture):
    tokens = read_added_tokens(reference_fixture.tokenizer_dir())
    cfg = config_from_original(
        reference_fixture.config, vocoder_config=reference_fixture.vocoder_config, added_tokens=tokens
    )
    return reference_fixture, tokens, cfg


def test_sizes_come_from_the_original_config(fixture_config):
    fixture, _, cfg = fixture_config
    original = fixture.config
    audio = original["audio_config"]
    text = cfg.text_config
    assert text.hidden_size == original["hidden_size"]
    assert text.num_hidden_layers == original["num_hidden_layers"]
    assert text.num_key_value_heads == original["num_key_value_heads"]
    assert text.intermediate_size == original["intermediate_size"]
    assert text.rope_parameters["rope_theta"] == original["rope_theta"]
    assert text.vocab_size == original["vocab_size"]
    assert cfg.codebook_sizes == audio["vq_config"]["codebook_sizes"]
    assert cfg.audio_tokenizer_config.encoder_layers == audio["encoder_layers"]
    assert cfg.audio_head_config.num_hidden_layers == audio["audio_head_transformer_layers"]
    assert cfg.audio_head_config.num_attention_heads == original["hidden_size"] // 128
    assert cfg.code2wav_config.decoder_layers == audio["decoder_layers"]
    fm = original["flow_matching_config"]
    assert cfg.code2wav_config.prenet_nlayers == fm["prenet_nlayers"]
    assert cfg.code2wav_config.channels == fm["channels"]
    assert cfg.code2wav_config.num_mid_blocks == fm["num_mid_blocks"]
    assert cfg.code2wav_config.legacy_post_net_channels == original["vocoder_config"]["channels"]
    assert cfg.code2wav_config.vocoder_config.base_channels == fixture.vocoder_config["base_channels"]


def test_token_ids_come_from_config_and_tokenizer(fixture_config):
    fixture, tokens, cfg = fixture_config
    audio = fixture.config["audio_config"]
    for name in ("audio_start_token_id", "audio_pad_token_id", "audiogen_start_token_id", "audiogen_end_token_id"):
        assert getattr(cfg, name) == audio[name]
    roles = fixture.special_tokens["roles"]
    assert cfg.system_token_id == tokens[roles["system"]]
    assert cfg.user_token_id == tokens[roles["user"]]
    assert cfg.assistant_token_id == tokens[roles["assistant"]]
    assert cfg.eos_token_id == roles["eos_token_id"]


def test_ids_are_not_hard_coded(reference_fixture):
    """Shifted ids in the original files must show up shifted in the converted config."""
    original = copy.deepcopy(reference_fixture.config)
    original["audio_config"]["audio_pad_token_id"] = 151000
    tokens = {"<B_SYS>": 7, "<C_Q>": 8, "<C_A>": 9, "<|endoftext|>": 3}
    cfg = config_from_original(original, added_tokens=tokens)
    assert (cfg.audio_pad_token_id, cfg.system_token_id, cfg.user_token_id, cfg.assistant_token_id) == (
        151000,
        7,
        8,
        9,
    )
    assert cfg.eos_token_id == 3 and cfg.pad_token_id == 3


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"use_norm_head": True}, "use_norm_head"),
        ({"attention_qkv_bias": False}, "attention_qkv_bias"),
        ({"model_type": "llama"}, "omni"),
        ({"position_embedding_type": "alibi"}, "rope"),
    ],
)
def test_unsupported_originals_fail_loudly(reference_fixture, patch, message):
    original = copy.deepcopy(reference_fixture.config)
    original.update(patch)
    with pytest.raises(ConversionError, match=message):
        config_from_original(original)


def test_missing_field_is_named(reference_fixture):
    original = copy.deepcopy(reference_fixture.config)
    del original["audio_config"]["d_model"]
    with pytest.raises(ConversionError, match="audio_config.d_model"):
        config_from_original(original)
