"""Translate an ORIGINAL Baichuan-Audio ``config.json`` (model_type ``omni``) into :class:`BaichuanAudioConfig`.

Every size is read from the original file; the special-token ids come from the original ``audio_config`` and the
tokenizer (``<B_SYS>``, ``<C_Q>``, ``<C_A>``, ``<|endoftext|>``), never from constants. Absent fields take the
ORIGINAL code's defaults (``OmniConfig``'s keyword defaults, ``WhisperConfig``'s for the audio encoder / decoder),
not the released model's; fields the original cannot run without are required. LLM variants the original accepts are
converted exactly (an explicit ``head_dim`` with ``heads * head_dim != hidden_size``, separate or packed q/k/v, no
q/k/v biases, a ``NormHead``, tied embeddings, ``rotary_emb_base``); what Qwen2 cannot express (ALiBi, sparse
attention layers) and what the original itself cannot run fail loudly rather than convert into a different model.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError

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


#: ``WhisperConfig`` defaults: the original builds ``WhisperConfig(**audio_config)`` (and the legacy post-net's
#: ``WhisperConfig(**vocoder_config)``), so absent Whisper fields take these values.
WHISPER_DEFAULTS = {
    "num_mel_bins": 80,
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "decoder_layers": 4,
    "decoder_attention_heads": 6,
    "decoder_ffn_dim": 1536,
    "activation_function": "gelu",
    "scale_embedding": False,
}
#: Fields the original reads from ``audio_config`` that ``WhisperConfig`` does not define: without them the original
#: fails at construction, so they are required here too.
ORIGINAL_AUDIO_REQUIRED = (
    "kernel_size",
    "stride_size",
    "avg_pooler",
    "max_audio_seconds",
    "sampling_rate",
    "hop_length",
    "decoder_kernel_size",
    "decoder_stride_size",
    "audio_head_transformer_layers",
)
#: Read by the original processor only (front end, long-audio splitting); the released values when absent.
ORIGINAL_AUDIO_OPTIONAL = {"n_fft": 400, "split_overlap": 0.0}


def _audio_settings(audio: dict) -> dict:
    """The original audio encoder / decoder / head settings with the original's defaults and requirements."""
    settings = {key: audio.get(key, default) for key, default in WHISPER_DEFAULTS.items()}
    settings.update({key: audio.get(key, default) for key, default in ORIGINAL_AUDIO_OPTIONAL.items()})
    for key in ORIGINAL_AUDIO_REQUIRED:
        settings[key] = _require(audio, key, "audio_config.")
    settings["split_overlap"] = float(settings["split_overlap"])
    # The original encoder computes ``embed_scale`` from ``scale_embedding`` but its forward never applies it: the
    # converted encoder must not scale either, whatever the field says.
    settings["scale_embedding"] = False
    vq = _require(audio, "vq_config", "audio_config.")
    settings["codebook_sizes"] = [int(n) for n in _require(vq, "codebook_sizes", "audio_config.vq_config.")]
    # The original encoder's convolutions are padded by 1 while its processor computes the encoder lengths with a
    # kernel_size // 2 padding: the two agree only for kernel sizes 2 and 3 (else the original's own pipeline gives
    # lengths its encoder does not produce).
    if settings["kernel_size"] // 2 != 1:
        raise ConversionError(
            f"original audio_config.kernel_size={settings['kernel_size']}: the original encoder pads its convolutions "
            "by 1 but its processor computes lengths with kernel_size // 2, which agree only for kernel sizes 2 and 3"
        )
    return settings


#: ``flow_matching_config`` fields of the original that the converted flow-matching sub-config takes as they are.
FLOW_MATCHING_FIELDS = (
    "prenet_in_dim",
    "prenet_out_dim",
    "prenet_d_model",
    "prenet_attention_heads",
    "prenet_ffn_dim",
    "prenet_nlayers",
    "prenet_activation_function",
    "prenet_max_source_positions",
    "prenet_target_mel_length_scale_ratio",
    "in_channels",
    "spk_emb_dim",
    "diffusion_steps",
    "channels",
    "dropout",
    "n_blocks",
    "num_mid_blocks",
    "num_heads",
    "attention_head_dim",
    "act_fn",
)


#: ``OmniConfig`` defaults of the original code for absent LLM fields (its constructor's keyword defaults).
ORIGINAL_LLM_DEFAULTS = {
    "vocab_size": 125696,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,  # -> num_attention_heads
    "head_dim": None,  # -> hidden_size // num_attention_heads
    "attention_qkv_pack": True,
    "attention_qkv_bias": False,
    "use_norm_head": True,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "position_embedding_type": "rope",
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "sparse_attention_layers": [],
}


def original_llm_settings(original: dict) -> dict:
    """The original LLM's effective settings: the config's values, the original's defaults for absent ones."""
    llm = {key: original.get(key, default) for key, default in ORIGINAL_LLM_DEFAULTS.items()}
    llm["num_key_value_heads"] = llm["num_key_value_heads"] or llm["num_attention_heads"]
    llm["head_dim"] = llm["head_dim"] or llm["hidden_size"] // llm["num_attention_heads"]
    # ``OmniConfig.get_rotary_base``: ``rotary_emb_base`` wins over ``rope_theta``; the original fails without both.
    llm["rope_theta"] = original.get("rotary_emb_base", original.get("rope_theta"))
    return llm


def _text_config_from_original(original: dict) -> dict:
    """The Qwen2 ``text_config`` of the original LLM; refuses what Qwen2 cannot express exactly."""
    llm = original_llm_settings(original)
    if str(llm["position_embedding_type"]).lower() != "rope":
        raise ConversionError(
            f"original config: position_embedding_type={llm['position_embedding_type']!r} (ALiBi) is not supported; "
            "only 'rope' LLMs convert to Qwen2"
        )
    if llm["rope_theta"] is None:
        raise ConversionError(
            "original config: neither `rope_theta` nor `rotary_emb_base` is set (the original needs one)"
        )
    # A "sparse" layer of the original has its own head count; with all heads and kv heads equal (and a square
    # attention) it is an ordinary layer, the only sparse configuration the original runs at inference.
    ordinary = (
        original.get("sparse_attention_heads") == llm["num_attention_heads"] == llm["num_key_value_heads"]
        and llm["num_attention_heads"] * llm["head_dim"] == llm["hidden_size"]
        and llm["attention_qkv_pack"]
    )
    if llm["sparse_attention_layers"] and not ordinary:
        raise ConversionError(
            f"original config: sparse_attention_layers={llm['sparse_attention_layers']} (layers with another head "
            "count) is not supported"
        )
    heads, kv_heads = llm["num_attention_heads"], llm["num_key_value_heads"]
    if heads % kv_heads != 0:
        raise ConversionError(
            f"original config: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    if llm["head_dim"] % 2 != 0:
        raise ConversionError(
            f"original config: head_dim {llm['head_dim']} is odd (rotary embeddings need an even width)"
        )
    return {
        "model_type": "qwen2",
        "vocab_size": llm["vocab_size"],
        "hidden_size": llm["hidden_size"],
        "intermediate_size": llm["intermediate_size"],
        "num_hidden_layers": llm["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        # Read, never derived: the query width heads * head_dim may differ from hidden_size (as in Qwen3-style
        # configs); Qwen2 honours an explicit ``head_dim`` for q/k/v, o_proj, the rotary width and the 1/sqrt scale.
        "head_dim": llm["head_dim"],
        "hidden_act": llm["hidden_act"],
        "max_position_embeddings": llm["max_position_embeddings"],
        "rms_norm_eps": float(llm["rms_norm_eps"]),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(llm["rope_theta"])},
        "tie_word_embeddings": False,  # a tied original gets its embedding copied into lm_head by the converter
        "use_sliding_window": False,
        "max_window_layers": original.get("max_window_layers", llm["num_hidden_layers"]),
        "initializer_range": llm["initializer_range"],
    }


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
    text_config = _text_config_from_original(original)
    hidden = text_config["hidden_size"]

    audio_config = _require(original, "audio_config", "")
    audio = _audio_settings(audio_config)
    codebook_sizes = audio["codebook_sizes"]
    tokenizer_config = {
        key: audio[key]
        for key in (
            "num_mel_bins", "sampling_rate", "hop_length", "n_fft", "max_audio_seconds", "split_overlap", "d_model",
            "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "activation_function", "kernel_size",
            "stride_size", "scale_embedding", "avg_pooler", "codebook_sizes",
        )
    }  # fmt: skip
    # The original depth transformer: ``nn.MultiheadAttention(hidden, hidden // 128 heads)`` after
    # ``assert hidden % 128 == 0``, and per-position FFNs of width 2 * hidden.
    if hidden % 128 != 0:
        raise ConversionError(f"original audio head needs hidden_size % 128 == 0, got {hidden}")
    head_config = {
        "hidden_size": hidden,
        "num_hidden_layers": audio["audio_head_transformer_layers"],
        "num_attention_heads": hidden // 128,
        "intermediate_size": 2 * hidden,
        "codebook_sizes": codebook_sizes,
    }

    fm = _require(original, "flow_matching_config", "")
    legacy = original.get("vocoder_config", {})
    cfm = fm.get("cfm_params", {})
    decoder_config = {
        "num_hidden_layers": audio["decoder_layers"],
        "num_attention_heads": audio["decoder_attention_heads"],
        "intermediate_size": audio["decoder_ffn_dim"],
        "kernel_size": audio["decoder_kernel_size"],
        "stride_size": audio["decoder_stride_size"],
        "activation_function": audio["activation_function"],
        "legacy_mel_bins": legacy.get("num_mel_bins", WHISPER_DEFAULTS["num_mel_bins"]),
        "legacy_post_net_channels": list(legacy.get("channels", [256] * 5)),
        "legacy_mel_sampling_rate": legacy.get("sampling_rate", 16000),
        "legacy_mel_hop_length": legacy.get("hop_length", 256),
    }
    # The flow-matching sub-config keeps the original's field names: a copy of what the file has (the released
    # values where a field is absent), plus the CFM parameters.
    flow_config = {key: fm[key] for key in FLOW_MATCHING_FIELDS if key in fm}
    for key in ("dropout", "prenet_target_mel_length_scale_ratio"):
        if key in flow_config:
            flow_config[key] = float(flow_config[key])
    flow_config.update(
        mel_sampling_rate=fm.get("sampling_rate", 24000),
        mel_hop_length=fm.get("hop_length", 480),
        sigma_min=float(cfm.get("sigma_min", 1e-6)),
        t_scheduler=cfm.get("t_scheduler", "cosine"),
        inference_cfg_rate=float(cfm.get("inference_cfg_rate", 0.7)),
        training_cfg_rate=float(cfm.get("training_cfg_rate", 0.2)),
    )
    if fm.get("spk_emb_dim", 0):
        raise ConversionError("original flow_matching_config.spk_emb_dim != 0 (speaker embeddings) is not supported")
    code2wav_config = {
        "codebook_sizes": codebook_sizes,
        "d_model": tokenizer_config["d_model"],
        "avg_pooler": tokenizer_config["avg_pooler"],
        "sampling_rate": tokenizer_config["sampling_rate"],
        "hop_length": tokenizer_config["hop_length"],
        "max_audio_seconds": tokenizer_config["max_audio_seconds"],
        "decoder_config": decoder_config,
        "flow_matching_config": flow_config,
    }
    if vocoder_config is not None:
        code2wav_config["vocoder_config"] = BaichuanAudioVocoderConfig.from_original(vocoder_config).to_dict()

    tokens: dict = {}
    for name in AUDIO_TOKEN_FIELDS:
        tokens[name] = _require(audio_config, name, "audio_config.")
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

    try:
        return BaichuanAudioConfig(
            text_config=text_config,
            audio_tokenizer_config=tokenizer_config,
            audio_head_config=head_config,
            code2wav_config=code2wav_config,
            **tokens,
        )
    except (ValueError, TypeError, StrictDataclassError) as err:  # the validators: sizes that do not fit together
        raise ConversionError(f"original config cannot be converted: {err}") from err


__all__ = [
    "ConversionError",
    "config_from_original",
    "original_llm_settings",
    "read_added_tokens",
    "ROLE_TOKENS",
    "AUDIO_TOKEN_FIELDS",
]
