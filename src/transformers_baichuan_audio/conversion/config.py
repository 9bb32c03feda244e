"""Translate an ORIGINAL Baichuan-Audio ``config.json`` (model_type ``omni``) into :class:`BaichuanAudioConfig`.

Every size is read from the original file; the special-token ids come from the original ``audio_config`` and the
tokenizer (``<B_SYS>``, ``<C_Q>``, ``<C_A>``, ``<|endoftext|>``), never from constants. Unsupported variants (a norm
head, no qkv bias, an ALiBi LLM) fail loudly rather than convert silently into a different model.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..configuration import TOKEN_ID_FIELDS, BaichuanAudioConfig, BaichuanAudioVocoderConfig

ROLE_TOKENS = {"system_token_id": "<B_SYS>", "user_token_id": "<C_Q>", "assistant_token_id": "<C_A>"}
AUDIO_TOKEN_FIELDS = tuple(name for name in TOKEN_ID_FIELDS if name.startswith("audio"))
EOS_TOKEN = "<|endoftext|>"


class ConversionError(ValueError):
    """An original checkpoint that cannot be converted faithfully."""


def read_added_tokens(tokenizer_dir: str | Path | None) -> dict[str, int]:
    """``token -> id`` of the tokenizer's added tokens (from ``tokenizer.json`` or ``added_tokens.json``)."""
    if tokenizer_dir is None:
        return {}
    tokenizer_dir = Path(tokenizer_dir)
    tokens: dict[str, int] = {}
    tok_json = tokenizer_dir / "tokenizer.json"
    if tok_json.exists():
        data = json.loads(tok_json.read_text(encoding="utf-8"))
        for entry in data.get("added_tokens", []):
            tokens[entry["content"]] = int(entry["id"])
    added = tokenizer_dir / "added_tokens.json"
    if added.exists():
        tokens.update({k: int(v) for k, v in json.loads(added.read_text(encoding="utf-8")).items()})
    cfg = tokenizer_dir / "tokenizer_config.json"
    if cfg.exists():
        decoder = json.loads(cfg.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        for idx, entry in decoder.items():
            tokens.setdefault(entry["content"], int(idx))
    return tokens


def _require(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise ConversionError(f"original config: missing `{where}{key}`")
    return mapping[key]


def config_from_original(
    original: dict,
    *,
    vocoder_config: dict | None = None,
    added_tokens: dict[str, int] | None = None,
    generation_config: dict | None = None,
) -> BaichuanAudioConfig:
    """Build a :class:`BaichuanAudioConfig` from the original ``config.json`` dict.

    Args:
        original: the original config (``model_type`` ``omni``).
        vocoder_config: the HiFT constructor arguments (``vocoder_config.json`` of a fixture); the released
            vocoder's values (our defaults) when None.
        added_tokens: ``token -> id`` from the original tokenizer (for the role and end-of-text tokens).
        generation_config: the original ``generation_config.json`` (eos id) when the tokenizer is absent.
    """
    if original.get("model_type") not in ("omni", None):
        raise ConversionError(f"expected an original `omni` config, got model_type={original.get('model_type')!r}")
    if original.get("use_norm_head", False):
        raise ConversionError("original config: use_norm_head=true (a NormHead LM head) is not supported")
    if original.get("position_embedding_type", "rope") != "rope":
        raise ConversionError("original config: only position_embedding_type='rope' is supported")
    if not original.get("attention_qkv_bias", True):
        raise ConversionError("original config: attention_qkv_bias=false is not supported (Qwen2 has q/k/v biases)")
    if original.get("tie_word_embeddings", False):
        raise ConversionError("original config: tied word embeddings are not supported")

    hidden = _require(original, "hidden_size", "")
    heads = _require(original, "num_attention_heads", "")
    head_dim = original.get("head_dim") or hidden // heads
    if head_dim * heads != hidden:
        raise ConversionError(f"original config: head_dim {head_dim} x {heads} heads != hidden_size {hidden}")
    text_config = {
        "model_type": "qwen2",
        "vocab_size": _require(original, "vocab_size", ""),
        "hidden_size": hidden,
        "intermediate_size": _require(original, "intermediate_size", ""),
        "num_hidden_layers": _require(original, "num_hidden_layers", ""),
        "num_attention_heads": heads,
        "num_key_value_heads": original.get("num_key_value_heads", heads),
        "hidden_act": original.get("hidden_act", "silu"),
        "max_position_embeddings": original.get("max_position_embeddings", 8192),
        "rms_norm_eps": float(original.get("rms_norm_eps", 1e-6)),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(original.get("rope_theta", 1e6))},
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "max_window_layers": original.get("max_window_layers", original["num_hidden_layers"]),
        "initializer_range": original.get("initializer_range", 0.02),
    }

    audio = _require(original, "audio_config", "")
    vq = _require(audio, "vq_config", "audio_config.")
    codebook_sizes = list(_require(vq, "codebook_sizes", "audio_config.vq_config."))
    tokenizer_config = {
        "num_mel_bins": audio.get("num_mel_bins", 128),
        "sampling_rate": audio.get("sampling_rate", 16000),
        "hop_length": audio.get("hop_length", 160),
        "n_fft": audio.get("n_fft", 400),
        "max_audio_seconds": audio.get("max_audio_seconds", 30),
        "split_overlap": float(audio.get("split_overlap", 0.0)),
        "d_model": _require(audio, "d_model", "audio_config."),
        "encoder_layers": _require(audio, "encoder_layers", "audio_config."),
        "encoder_attention_heads": _require(audio, "encoder_attention_heads", "audio_config."),
        "encoder_ffn_dim": _require(audio, "encoder_ffn_dim", "audio_config."),
        "activation_function": audio.get("activation_function", "gelu"),
        "kernel_size": audio.get("kernel_size", 3),
        "stride_size": audio.get("stride_size", 2),
        "scale_embedding": bool(audio.get("scale_embedding", False)),
        "avg_pooler": audio.get("avg_pooler", 4),
        "codebook_sizes": codebook_sizes,
    }
    if hidden % 128 != 0:
        raise ConversionError(f"original audio head needs hidden_size % 128 == 0, got {hidden}")
    head_config = {
        "hidden_size": hidden,
        "num_hidden_layers": audio.get("audio_head_transformer_layers", 3),
        "num_attention_heads": hidden // 128,
        "intermediate_size": 2 * hidden,
        "codebook_sizes": codebook_sizes,
    }

    fm = _require(original, "flow_matching_config", "")
    legacy = original.get("vocoder_config", {})
    cfm = fm.get("cfm_params", {})
    code2wav_config = {
        "codebook_sizes": codebook_sizes,
        "d_model": tokenizer_config["d_model"],
        "avg_pooler": tokenizer_config["avg_pooler"],
        "decoder_layers": _require(audio, "decoder_layers", "audio_config."),
        "decoder_attention_heads": _require(audio, "decoder_attention_heads", "audio_config."),
        "decoder_ffn_dim": _require(audio, "decoder_ffn_dim", "audio_config."),
        "decoder_kernel_size": audio.get("decoder_kernel_size", 3),
        "decoder_stride_size": audio.get("decoder_stride_size", 2),
        "activation_function": audio.get("activation_function", "gelu"),
        "sampling_rate": tokenizer_config["sampling_rate"],
        "hop_length": tokenizer_config["hop_length"],
        "max_audio_seconds": tokenizer_config["max_audio_seconds"],
        "legacy_mel_bins": legacy.get("num_mel_bins", 80),
        "legacy_post_net_channels": list(legacy.get("channels", [256] * 5)),
        "legacy_mel_sampling_rate": legacy.get("sampling_rate", 16000),
        "legacy_mel_hop_length": legacy.get("hop_length", 256),
        "mel_sampling_rate": fm.get("sampling_rate", 24000),
        "mel_hop_length": fm.get("hop_length", 480),
        "sigma_min": float(cfm.get("sigma_min", 1e-6)),
        "t_scheduler": cfm.get("t_scheduler", "cosine"),
        "inference_cfg_rate": float(cfm.get("inference_cfg_rate", 0.7)),
        "training_cfg_rate": float(cfm.get("training_cfg_rate", 0.2)),
    }
    for key in (
        "prenet_in_dim",
        "prenet_out_dim",
        "prenet_d_model",
        "prenet_attention_heads",
        "prenet_ffn_dim",
        "prenet_nlayers",
        "prenet_activation_function",
        "prenet_max_source_positions",
        "in_channels",
        "spk_emb_dim",
        "diffusion_steps",
        "channels",
        "n_blocks",
        "num_mid_blocks",
        "num_heads",
        "attention_head_dim",
        "act_fn",
    ):
        if key in fm:
            code2wav_config[key] = fm[key]
    for key in ("dropout", "prenet_target_mel_length_scale_ratio"):
        if key in fm:
            code2wav_config[key] = float(fm[key])
    if fm.get("spk_emb_dim", 0):
        raise ConversionError("original flow_matching_config.spk_emb_dim != 0 (speaker embeddings) is not supported")
    if vocoder_config is not None:
        code2wav_config["vocoder_config"] = BaichuanAudioVocoderConfig.from_original(vocoder_config).to_dict()

    tokens: dict = {}
    for name in AUDIO_TOKEN_FIELDS:
        tokens[name] = _require(audio, name, "audio_config.")
    added_tokens = added_tokens or {}
    for name, token in ROLE_TOKENS.items():
        if token in added_tokens:
            tokens[name] = added_tokens[token]
    eos = added_tokens.get(EOS_TOKEN)
    if eos is None and generation_config is not None:
        eos = generation_config.get("eos_token_id")
    if eos is not None:
        tokens["eos_token_id"] = eos
        tokens["pad_token_id"] = eos if not isinstance(eos, list) else eos[0]

    return BaichuanAudioConfig(
        text_config=text_config,
        audio_tokenizer_config=tokenizer_config,
        audio_head_config=head_config,
        code2wav_config=code2wav_config,
        **tokens,
    )


__all__ = ["ConversionError", "config_from_original", "read_added_tokens", "ROLE_TOKENS", "AUDIO_TOKEN_FIELDS"]
