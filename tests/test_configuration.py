"""Configs: real defaults (reference-architecture.md sections 3-7, 9, 12), round trips, validation."""

from __future__ import annotations

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from transformers import AutoConfig

from transformers_baichuan_audio.configuration import (
    BaichuanAudioCode2WavConfig,
    BaichuanAudioConfig,
    BaichuanAudioHeadConfig,
    BaichuanAudioTokenizerConfig,
    BaichuanAudioVocoderConfig,
    register_configs,
)

CONFIG_ERRORS = (ValueError, StrictDataclassClassValidationError, StrictDataclassFieldValidationError)


def _nested_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        if key == "_name_or_path":
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _nested_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} != {vb!r}")
    return out


def test_default_config_is_the_released_model():
    """Field-by-field check against the 'config.json' section of reference-architecture.md."""
    cfg = BaichuanAudioConfig()
    text = cfg.text_config
    assert text.model_type == "qwen2"
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (3584, 18944, 28)
    assert (text.num_attention_heads, text.num_key_value_heads) == (28, 4)
    assert text.hidden_size // text.num_attention_heads == 128  # head_dim
    assert text.hidden_act == "silu" and text.rms_norm_eps == 1e-6
    assert text.rope_parameters["rope_theta"] == 1e6
    assert text.max_position_embeddings == 8192 and text.vocab_size == 152064
    assert cfg.tie_word_embeddings is False and text.tie_word_embeddings is False

    tok = cfg.audio_tokenizer_config
    assert (tok.num_mel_bins, tok.sampling_rate, tok.hop_length, tok.n_fft) == (128, 16000, 160, 400)
    assert (tok.d_model, tok.encoder_layers, tok.encoder_attention_heads, tok.encoder_ffn_dim) == (1280, 32, 20, 5120)
    assert (tok.kernel_size, tok.stride_size, tok.avg_pooler) == (3, 2, 4)
    assert (tok.max_audio_seconds, tok.split_overlap) == (30, 0.0)
    assert tok.activation_function == "gelu" and tok.scale_embedding is False
    assert tok.codebook_sizes == [8192, 4096, 2048, 1024, 1024, 1024, 1024, 1024]
    assert tok.max_source_positions == 1500 and tok.bridge_dim == 5120
    assert tok.frame_rate == 12.5

    head = cfg.audio_head_config
    assert (head.hidden_size, head.num_hidden_layers, head.num_attention_heads) == (3584, 3, 28)
    assert head.intermediate_size == 2 * 3584 and head.codebook_sizes == tok.codebook_sizes

    c2w = cfg.code2wav_config
    assert c2w.max_source_positions == 3000
    dec = c2w.decoder_config
    assert (dec.num_hidden_layers, dec.num_attention_heads, dec.intermediate_size) == (8, 20, 5120)
    assert (dec.kernel_size, dec.stride_size) == (3, 2)
    assert dec.legacy_mel_bins == 80 and dec.legacy_post_net_channels == [256] * 5
    assert (dec.legacy_mel_sampling_rate, dec.legacy_mel_hop_length) == (16000, 256)
    fm = c2w.flow_matching_config
    assert (fm.prenet_in_dim, fm.prenet_out_dim, fm.prenet_d_model) == (1280, 80, 512)
    assert (fm.prenet_attention_heads, fm.prenet_ffn_dim, fm.prenet_nlayers) == (8, 2048, 12)
    assert fm.prenet_max_source_positions == 5000 and fm.prenet_target_mel_length_scale_ratio == 1.0
    assert (fm.in_channels, fm.spk_emb_dim, fm.diffusion_steps, fm.channels) == (80, 0, 10, [256])
    assert (fm.attention_head_dim, fm.n_blocks, fm.num_mid_blocks, fm.num_heads) == (64, 4, 12, 8)
    assert (fm.sigma_min, fm.inference_cfg_rate, fm.training_cfg_rate, fm.t_scheduler) == (
        1e-6,
        0.7,
        0.2,
        "cosine",
    )
    assert (fm.mel_sampling_rate, fm.mel_hop_length, fm.static_chunk_size) == (24000, 480, 100)

    voc = c2w.vocoder_config
    assert (voc.in_channels, voc.base_channels, voc.nb_harmonics, voc.sampling_rate) == (80, 512, 8, 24000)
    assert (voc.upsample_rates, voc.upsample_kernel_sizes) == ([8, 5, 3], [16, 11, 7])
    assert (voc.istft_n_fft, voc.istft_hop_length, voc.hop_length) == (16, 4, 480)
    assert voc.resblock_kernel_sizes == [3, 7, 11] and voc.source_resblock_kernel_sizes == [7, 7, 11]
    assert voc.resblock_dilation_sizes == [[1, 3, 5]] * 3
    assert (voc.lrelu_slope, voc.audio_limit, voc.f0_predictor_cond_channels) == (0.1, 0.99, 512)
    assert (voc.nsf_alpha, voc.nsf_sigma, voc.nsf_voiced_threshold) == (0.1, 0.003, 10.0)

    # Omni-1.5 special-token ids (reference section 9); the converter replaces them from the checkpoint.
    assert (cfg.audio_start_token_id, cfg.audio_end_token_id, cfg.audio_pad_token_id) == (151676, 151677, 151678)
    assert (cfg.audiotext_start_token_id, cfg.audiogen_start_token_id, cfg.audiogen_end_token_id) == (
        151697,
        151700,
        151701,
    )
    assert (cfg.system_token_id, cfg.user_token_id, cfg.assistant_token_id) == (151665, 151667, 151668)
    assert cfg.eos_token_id == 151643 and cfg.audio_loss_weights == [1.0] * 8


def test_round_trips(tmp_path):
    register_configs()
    for cfg in (BaichuanAudioConfig(), BaichuanAudioConfig.tiny()):
        cfg.save_pretrained(tmp_path)
        loaded = AutoConfig.from_pretrained(tmp_path)
        assert type(loaded) is BaichuanAudioConfig
        assert _nested_diff(cfg.to_dict(), loaded.to_dict()) == []
        again = BaichuanAudioConfig.from_dict(cfg.to_dict())
        assert _nested_diff(cfg.to_dict(), again.to_dict()) == []
        assert type(loaded.code2wav_config.vocoder_config) is BaichuanAudioVocoderConfig
        assert loaded.get_text_config() is loaded.text_config


def test_sub_configs_resolve_through_autoconfig():
    register_configs()
    for cls in (
        BaichuanAudioTokenizerConfig,
        BaichuanAudioHeadConfig,
        BaichuanAudioCode2WavConfig,
        BaichuanAudioVocoderConfig,
        BaichuanAudioConfig,
    ):
        assert type(AutoConfig.for_model(cls.model_type)) is cls


def test_derived_sub_config_values():
    cfg = BaichuanAudioConfig(
        text_config={"model_type": "qwen2", "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2},
        audio_tokenizer_config={"d_model": 64, "encoder_attention_heads": 4, "codebook_sizes": [64, 32, 16]},
        code2wav_config={"decoder_config": {"num_attention_heads": 4}},
    )
    assert cfg.audio_head_config.hidden_size == 256
    assert cfg.audio_head_config.num_attention_heads == 2  # hidden // 128, as the original
    assert cfg.audio_head_config.intermediate_size == 512
    assert cfg.audio_head_config.codebook_sizes == [64, 32, 16]
    assert cfg.code2wav_config.codebook_sizes == [64, 32, 16]
    assert (cfg.code2wav_config.d_model, cfg.code2wav_config.flow_matching_config.prenet_in_dim) == (64, 64)
    assert cfg.num_codebooks == 3 and cfg.audio_loss_weights == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"audio_head_config": {"codebook_sizes": [4, 4]}}, "codebook_sizes"),
        ({"audio_tokenizer_config": {"d_model": 100, "encoder_attention_heads": 3}}, "divisible"),
        ({"audio_loss_weights": [1.0, 2.0]}, "audio_loss_weights"),
        ({"audio_pad_token_id": 10**9}, "outside the text vocabulary"),
        ({"audio_head_config": {"hidden_size": 128}}, "hidden_size"),
        ({"audio_tokenizer_config": {"codebook_sizes": []}}, "codebook_sizes"),
    ],
)
def test_inconsistent_configs_raise(kwargs, message):
    with pytest.raises(CONFIG_ERRORS, match=message):
        BaichuanAudioConfig(**kwargs)


def test_wrong_type_raises():
    with pytest.raises(CONFIG_ERRORS):
        BaichuanAudioConfig(audio_pad_token_id="<audio_pad_baichuan>")
    with pytest.raises(CONFIG_ERRORS):
        BaichuanAudioTokenizerConfig(codebook_sizes="8192")


def test_tiny_keeps_the_real_structure():
    cfg = BaichuanAudioConfig.tiny()
    assert cfg.num_codebooks == 8
    assert cfg.audio_head_config.num_hidden_layers == 3
    assert cfg.code2wav_config.flow_matching_config.diffusion_steps == 10
    assert cfg.code2wav_config.flow_matching_config.static_chunk_size == 100
    assert cfg.audio_tokenizer_config.frame_rate == 12.5
    assert cfg.code2wav_config.vocoder_config.hop_length == 480


def test_vocoder_config_from_original_constructor_arguments(reference_fixture):
    original = reference_fixture.vocoder_config
    cfg = BaichuanAudioVocoderConfig.from_original(original)
    assert cfg.base_channels == original["base_channels"]
    assert cfg.istft_n_fft == original["istft_params"]["n_fft"]
    assert cfg.istft_hop_length == original["istft_params"]["hop_len"]
    assert cfg.f0_predictor_cond_channels == original["f0_predictor"]["cond_channels"]
    assert cfg.upsample_rates == original["upsample_rates"]


def test_vocoder_source_branches_need_one_entry_per_upsampling_stage():
    """HiFT adds one source branch after each upsampling stage: a shorter list would fail deep in the forward."""
    with pytest.raises(Exception, match="one entry per upsampling stage"):
        BaichuanAudioVocoderConfig(source_resblock_kernel_sizes=[7], source_resblock_dilation_sizes=[[1, 3, 5]])


def test_flat_code2wav_configs_of_earlier_versions_still_load(tmp_path):
    """Earlier converted checkpoints wrote the code2wav fields flat; they are folded into the sub-configs."""
    import json

    flat = {"decoder_layers": 3, "decoder_attention_heads": 2, "legacy_post_net_channels": [8, 8], "d_model": 64}
    flat.update(prenet_in_dim=64, prenet_d_model=32, prenet_attention_heads=4, channels=[32, 48], num_mid_blocks=1)
    flat.update(diffusion_steps=7, static_chunk_size=50, t_scheduler="linear", vocoder_config={"base_channels": 16})
    cfg = BaichuanAudioCode2WavConfig(**flat)
    dec, fm = cfg.decoder_config, cfg.flow_matching_config
    assert (dec.num_hidden_layers, dec.num_attention_heads, dec.legacy_post_net_channels) == (3, 2, [8, 8])
    assert (fm.prenet_in_dim, fm.prenet_d_model, fm.prenet_attention_heads, fm.channels) == (64, 32, 4, [32, 48])
    assert (fm.num_mid_blocks, fm.diffusion_steps, fm.static_chunk_size, fm.t_scheduler) == (1, 7, 50, "linear")
    assert not hasattr(cfg, "decoder_layers") and not hasattr(cfg, "prenet_d_model")
    # through a saved file, as from_pretrained reads it, and nested after a save/reload round trip
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "baichuan_audio_code2wav", **flat}))
    loaded = BaichuanAudioCode2WavConfig.from_pretrained(tmp_path)
    assert loaded.to_dict()["decoder_config"] == cfg.to_dict()["decoder_config"]
    assert loaded.to_dict()["flow_matching_config"] == cfg.to_dict()["flow_matching_config"]
    loaded.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert "decoder_layers" not in again and again["decoder_config"]["num_hidden_layers"] == 3
