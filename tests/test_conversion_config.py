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
    assert cfg.code2wav_config.decoder_config.num_hidden_layers == audio["decoder_layers"]
    fm = original["flow_matching_config"]
    flow = cfg.code2wav_config.flow_matching_config
    assert flow.prenet_nlayers == fm["prenet_nlayers"]
    assert flow.channels == fm["channels"]
    assert flow.num_mid_blocks == fm["num_mid_blocks"]
    assert cfg.code2wav_config.decoder_config.legacy_post_net_channels == original["vocoder_config"]["channels"]
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
        ({"model_type": "llama"}, "omni"),
        ({"position_embedding_type": "alibi"}, "rope"),
        ({"sparse_attention_layers": [1]}, "sparse_attention_layers"),
        ({"rope_theta": None}, "rotary_emb_base"),
        ({"hidden_size": 192}, "hidden_size % 128"),  # the original asserts it in its depth transformer
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
        ({"head_dim": 33}, "odd"),
    ],
)
def test_unsupported_originals_fail_loudly(reference_fixture, patch, message):
    original = copy.deepcopy(reference_fixture.config)
    original.update(patch)
    if original["rope_theta"] is None:
        del original["rope_theta"]
    with pytest.raises(ConversionError, match=message):
        config_from_original(original)


def test_encoder_kernel_the_original_cannot_run_fails_loudly(reference_fixture):
    original = copy.deepcopy(reference_fixture.config)
    original["audio_config"]["kernel_size"] = 5  # convs padded by 1, lengths by kernel // 2: the original breaks
    with pytest.raises(ConversionError, match="kernel_size=5"):
        config_from_original(original)


def test_missing_field_is_named(reference_fixture):
    original = copy.deepcopy(reference_fixture.config)
    del original["audio_config"]["avg_pooler"]  # not a WhisperConfig field: the original fails without it
    with pytest.raises(ConversionError, match="audio_config.avg_pooler"):
        config_from_original(original)


def test_absent_fields_take_the_original_defaults(reference_fixture):
    """OmniConfig's / WhisperConfig's keyword defaults, not the released model's values."""
    original = copy.deepcopy(reference_fixture.config)
    for key in ("max_position_embeddings", "num_key_value_heads", "head_dim", "rms_norm_eps"):
        del original[key]
    for key in ("encoder_ffn_dim", "num_mel_bins"):
        del original["audio_config"][key]
    original["rotary_emb_base"] = 12345.0  # OmniConfig.get_rotary_base prefers it over rope_theta
    cfg = config_from_original(original)
    text = cfg.text_config
    assert text.max_position_embeddings == 4096
    assert text.num_key_value_heads == original["num_attention_heads"]
    assert text.head_dim == original["hidden_size"] // original["num_attention_heads"]
    assert text.rope_parameters["rope_theta"] == 12345.0
    tok = cfg.audio_tokenizer_config
    assert (tok.encoder_ffn_dim, tok.num_mel_bins) == (1536, 80)


def test_inconsistent_original_is_a_conversion_error(reference_fixture):
    original = copy.deepcopy(reference_fixture.config)
    original["flow_matching_config"]["prenet_in_dim"] += 1  # the prenet reads the decoder's d_model features
    with pytest.raises(ConversionError, match="prenet_in_dim"):
        config_from_original(original)


def test_sparse_layers_equal_to_ordinary_ones_convert(reference_fixture):
    original = copy.deepcopy(reference_fixture.config)
    heads = original["num_attention_heads"]
    original.update(sparse_attention_layers=[0], sparse_attention_heads=heads, num_key_value_heads=heads)
    assert config_from_original(original).text_config.num_key_value_heads == heads


def test_vocoder_arguments_absent_take_the_hift_constructor_defaults():
    from transformers_baichuan_audio.configuration import BaichuanAudioVocoderConfig

    cfg = BaichuanAudioVocoderConfig.from_original({"base_channels": 16})
    assert (cfg.sampling_rate, cfg.upsample_rates, cfg.upsample_kernel_sizes) == (22050, [8, 8], [16, 16])
    assert cfg.source_resblock_kernel_sizes == [7, 11] and cfg.f0_predictor_cond_channels == 512
    # entries beyond the upsampling stages are ignored (the original zips them), too few are an error
    BaichuanAudioVocoderConfig.from_original({"source_resblock_kernel_sizes": [7, 11, 11]})
    with pytest.raises(Exception, match="one entry per upsampling stage"):
        BaichuanAudioVocoderConfig.from_original({"source_resblock_kernel_sizes": [7]})


def test_scale_embedding_is_not_applied(reference_fixture):
    """The original encoder computes sqrt(d_model) for ``scale_embedding`` but never multiplies by it (measured
    against the original code: applying it changes the encoder output by ~4 and the codes)."""
    original = copy.deepcopy(reference_fixture.config)
    original["audio_config"]["scale_embedding"] = True
    assert config_from_original(original).audio_tokenizer_config.scale_embedding is False


def test_explicit_head_dim_is_carried(reference_fixture):
    """heads * head_dim != hidden_size (Qwen3-style): read, never derived."""
    original = copy.deepcopy(reference_fixture.config)
    original.update(hidden_size=256, num_attention_heads=6, num_key_value_heads=2, head_dim=48)
    cfg = config_from_original(original)
    assert cfg.text_config.head_dim == 48
    assert cfg.text_config.num_attention_heads * cfg.text_config.head_dim == 288
