"""Random ORIGINAL-layout checkpoints for the conversion property tests.

Written from the original constructors (``OmniForCausalLM`` / ``OmniAudioTokenizer`` of Baichuan-Omni-1.5, read, not
copied): :func:`original_state_shapes` lists every key and shape the original model's ``state_dict()`` holds for an
original ``config.json`` (audio parts only; visual/video disabled). It is an expectation independent of the
converter and of our modeling code, checked against the recorded tiny-a checkpoint in the tests. The formulas are
the original's:

* LLM attention: query width ``num_attention_heads * head_dim`` (``head_dim`` read, else ``hidden // heads``),
  packed ``W_pack`` (q | k | v) or separate ``q/k/v_proj`` (``attention_qkv_pack``), biases only with
  ``attention_qkv_bias`` (default False); ``o_proj`` maps the query width back to ``hidden_size``.
* audio head: ``nn.MultiheadAttention(hidden)`` (in_proj 3H x H), per-position FFNs stored as
  ``linear1`` (2H, P*H) and ``linear2`` (H, 2H*P) for P codebooks, one ``heads.i`` of ``size_i + 1`` classes.
* bridge: gate/up convs (d*pool, d, pool), ``down_proj`` and ``layer_norm`` of width d*pool, RVQ tables (n_i, d*pool).
* decoder: ``dconv1`` ConvTranspose(d, d, k), ``dconv2`` ConvTranspose(d, legacy mels, k), GroupNorms, the legacy
  post-net (a k=5 conv + GroupNorm per ``vocoder_config.channels[:-1]``, then a 1x1 projector; Mish has no weights).
* flow matching: prenet (in MLP, Whisper-style layers with RMS/Layer norms without bias, out projection, a saved
  positional table), matcha U-Net (``channels`` levels, ``n_blocks`` transformer blocks, ``num_mid_blocks``, time
  MLP 4 * channels[0], stride-2 down / transposed up samplers on inner levels, causal k=3 convs on the last;
  the feed-forward activation decides the projection width (GEGLU: 2 x 4 dim) and SnakeBeta's alpha / beta).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import save_file

TOKEN_IDS = {
    "audio_start_token_id": 101,
    "audio_end_token_id": 102,
    "audio_pad_token_id": 103,
    "audio_delim_token_id": 104,
    "audiotext_start_token_id": 105,
    "audiotext_end_token_id": 106,
    "audiotext_pad_token_id": 107,
    "audiogen_start_token_id": 108,
    "audiogen_end_token_id": 109,
}


def random_original_config(seed: int) -> dict:
    """A small original ``config.json`` the original code accepts, with sizes drawn at random.

    Covers: explicit ``head_dim`` with heads * head_dim != hidden, kv groups of 1 and of all heads, odd layer
    counts, codebook counts and sizes that are not powers of two, packed and separate q/k/v, with and without q/k/v
    biases, NormHead, absent fields (the original's defaults), multi-level U-Nets.
    """
    rng = random.Random(seed)
    heads = rng.choice([2, 3, 4, 6])
    kv = rng.choice([d for d in range(1, heads + 1) if heads % d == 0])
    hidden = 128 * rng.choice([1, 2])  # the original's depth transformer asserts hidden % 128 == 0
    # None: the original derives hidden // heads, which its rotary code needs even (else it fails).
    derived_ok = hidden % heads == 0 and (hidden // heads) % 2 == 0
    head_dim = rng.choice([None, 16, 24, 48] if derived_ok else [16, 24, 48])
    books = [rng.choice([5, 7, 12, 16, 33]) for _ in range(rng.choice([2, 3, 5, 8]))]
    d_model = rng.choice([32, 48, 64])
    enc_heads = rng.choice([h for h in (1, 2, 4) if d_model % h == 0])
    dec_heads = rng.choice([h for h in (1, 2, 4) if d_model % h == 0])
    pool = rng.choice([2, 4])
    n_mels_legacy = rng.choice([40, 80])
    n_mels = 80
    channels = rng.choice([[32], [24, 32]])
    cfg = {
        "model_type": "omni",
        "architectures": ["OmniForCausalLM"],
        "vocab_size": 160 + rng.randrange(64),
        "hidden_size": hidden,
        "intermediate_size": rng.choice([96, 200, 344]),
        "num_hidden_layers": rng.choice([1, 2, 3]),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "rope_theta": rng.choice([10000.0, 1e6]),
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 512,
        "attention_qkv_pack": rng.random() < 0.7,
        "attention_qkv_bias": rng.random() < 0.6,
        "use_norm_head": rng.random() < 0.4,
        "position_embedding_type": "rope",
        "tie_word_embeddings": False,
        "audio_config": {
            "num_mel_bins": rng.choice([64, 128]),
            "sampling_rate": 16000,
            "hop_length": 160,
            "n_fft": 400,
            "max_audio_seconds": 30,
            "split_overlap": 0.0,
            "d_model": d_model,
            "encoder_layers": rng.choice([1, 2, 3]),
            "encoder_attention_heads": enc_heads,
            "encoder_ffn_dim": rng.choice([64, 96, 160]),
            "decoder_layers": rng.choice([1, 3]),
            "decoder_attention_heads": dec_heads,
            "decoder_ffn_dim": rng.choice([64, 96]),
            "kernel_size": 3,
            "stride_size": 2,
            "avg_pooler": pool,
            "decoder_kernel_size": rng.choice([3, 5]),
            "decoder_stride_size": 2,
            "audio_head_transformer_layers": rng.choice([1, 2, 3]),
            "vq_config": {"enable": True, "codebook_sizes": books},
            **TOKEN_IDS,
        },
        "vocoder_config": {
            "num_mel_bins": n_mels_legacy,
            "sampling_rate": 16000,
            "hop_length": 256,
            "channels": [rng.choice([16, 24])] * rng.choice([2, 3, 5]),
        },
        "flow_matching_config": {
            "sampling_rate": 24000,
            "hop_length": 480,
            "prenet_in_dim": d_model,
            "prenet_out_dim": n_mels,
            "prenet_d_model": rng.choice([32, 64]),
            "prenet_attention_heads": rng.choice([1, 2, 4]),
            "prenet_ffn_dim": rng.choice([64, 128]),
            "prenet_nlayers": rng.choice([1, 2]),
            "prenet_activation_function": "gelu",
            "prenet_max_source_positions": 600,
            "prenet_target_mel_length_scale_ratio": 1.0,
            "in_channels": n_mels,
            "spk_emb_dim": 0,
            "diffusion_steps": rng.choice([2, 3]),
            "channels": channels,
            "dropout": 0.0,
            "attention_head_dim": rng.choice([8, 16]),
            "n_blocks": rng.choice([1, 2]),
            "num_mid_blocks": rng.choice([1, 2]),
            "num_heads": rng.choice([1, 2]),
            "act_fn": rng.choice(["gelu", "gelu-approximate", "geglu", "geglu-approximate", "snakebeta"]),
            "cal_mel_mae": True,
            "cfm_params": {"sigma_min": 1e-6, "t_scheduler": "cosine", "inference_cfg_rate": 0.7},
        },
    }
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    if rng.random() < 0.3:  # absent: the original's default 4096
        del cfg["max_position_embeddings"]
    return cfg


def _linear(out: int, inp: int, bias: bool = True) -> dict[str, tuple]:
    return {"weight": (out, inp), **({"bias": (out,)} if bias else {})}


def _norm(dim: int, bias: bool = True) -> dict[str, tuple]:
    return {"weight": (dim,), **({"bias": (dim,)} if bias else {})}


def _prefixed(prefix: str, shapes: dict[str, tuple]) -> dict[str, tuple]:
    return {f"{prefix}.{k}": v for k, v in shapes.items()}


def _whisper_layer(d: int, ffn: int, norm_bias: bool = True) -> dict[str, tuple]:
    out = {}
    out.update(_prefixed("self_attn.k_proj", _linear(d, d, bias=False)))
    for name in ("q_proj", "v_proj", "out_proj"):
        out.update(_prefixed(f"self_attn.{name}", _linear(d, d)))
    out.update(_prefixed("self_attn_layer_norm", _norm(d, norm_bias)))
    out.update(_prefixed("fc1", _linear(ffn, d)))
    out.update(_prefixed("fc2", _linear(d, ffn)))
    out.update(_prefixed("final_layer_norm", _norm(d, norm_bias)))
    return out


def _llm_shapes(cfg: dict) -> dict[str, tuple]:
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    q_width, kv_width = heads * head_dim, kv * head_dim
    bias = cfg.get("attention_qkv_bias", False)
    inter, vocab = cfg["intermediate_size"], cfg["vocab_size"]
    out = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        if cfg.get("attention_qkv_pack", True):
            out.update(_prefixed(f"{p}.self_attn.W_pack", _linear(q_width + 2 * kv_width, hidden, bias)))
        else:
            out.update(_prefixed(f"{p}.self_attn.q_proj", _linear(q_width, hidden, bias)))
            out.update(_prefixed(f"{p}.self_attn.k_proj", _linear(kv_width, hidden, bias)))
            out.update(_prefixed(f"{p}.self_attn.v_proj", _linear(kv_width, hidden, bias)))
        out[f"{p}.self_attn.o_proj.weight"] = (hidden, q_width)
        out[f"{p}.mlp.gate_proj.weight"] = (inter, hidden)
        out[f"{p}.mlp.up_proj.weight"] = (inter, hidden)
        out[f"{p}.mlp.down_proj.weight"] = (hidden, inter)
        out[f"{p}.input_layernorm.weight"] = (hidden,)
        out[f"{p}.post_attention_layernorm.weight"] = (hidden,)
    books = cfg["audio_config"]["vq_config"]["codebook_sizes"]
    for i, n in enumerate(books):
        out[f"model.audio_embed_layers.{i}.weight"] = (n + 1, hidden)
    out["lm_head.weight"] = (vocab, hidden)
    return out


def _audio_head_shapes(cfg: dict) -> dict[str, tuple]:
    hidden = cfg["hidden_size"]
    books = cfg["audio_config"]["vq_config"]["codebook_sizes"]
    depth = len(books)
    out = {"audio_head.headnorm.weight": (hidden,)}
    for layer in range(cfg["audio_config"]["audio_head_transformer_layers"]):
        p = f"audio_head.transformer_layers.{layer}"
        out[f"{p}.self_attention.in_proj_weight"] = (3 * hidden, hidden)
        out[f"{p}.self_attention.in_proj_bias"] = (3 * hidden,)
        out.update(_prefixed(f"{p}.self_attention.out_proj", _linear(hidden, hidden)))
        out[f"{p}.layernorm1.weight"] = (hidden,)
        out[f"{p}.layernorm2.weight"] = (hidden,)
        out.update(_prefixed(f"{p}.linear1", _linear(2 * hidden, depth * hidden)))
        out.update(_prefixed(f"{p}.linear2", _linear(hidden, 2 * hidden * depth)))
    for i, n in enumerate(books):
        out.update(_prefixed(f"audio_head.heads.{i}", _linear(n + 1, hidden)))
    return out


def _tokenizer_shapes(cfg: dict) -> dict[str, tuple]:
    a = cfg["audio_config"]
    d, k, pool = a["d_model"], a["kernel_size"], a["avg_pooler"]
    positions = (a["max_audio_seconds"] * a["sampling_rate"] // a["hop_length"]) // a["stride_size"]
    enc = {
        "conv1.weight": (d, a["num_mel_bins"], k),
        "conv1.bias": (d,),
        "conv2.weight": (d, d, k),
        "conv2.bias": (d,),
        "positional_embedding": (positions, d),
        **_prefixed("layer_norm", _norm(d)),
    }
    for layer in range(a["encoder_layers"]):
        enc.update(_prefixed(f"layers.{layer}", _whisper_layer(d, a["encoder_ffn_dim"])))
    wide = d * pool
    bridge = {
        "gate_proj.weight": (wide, d, pool),
        "up_proj.weight": (wide, d, pool),
        "down_proj.weight": (wide, wide),
        **_prefixed("layer_norm", _norm(wide)),
        **_prefixed("proj_decoder", _linear(d, wide)),
    }
    for i, n in enumerate(a["vq_config"]["codebook_sizes"]):
        bridge[f"vq_list.{i}.codebook.cluster_size"] = (n,)
        bridge[f"vq_list.{i}.codebook.embed"] = (n, wide)
        bridge[f"vq_list.{i}.codebook.embed_avg"] = (n, wide)
    return {
        **_prefixed("audio_tokenizer.audio_model", enc),
        **_prefixed("audio_tokenizer.audio_bridge_model", bridge),
    }


def _decoder_shapes(cfg: dict) -> dict[str, tuple]:
    a, legacy = cfg["audio_config"], cfg["vocoder_config"]
    d, k, mels = a["d_model"], a["decoder_kernel_size"], legacy.get("num_mel_bins", 80)
    dec = {
        "dconv1.conv.weight": (d, d, k),  # ConvTranspose1d weights are (in, out, k)
        "dconv1.conv.bias": (d,),
        **_prefixed("dconv1.norm", _norm(d)),
        "dconv2.conv.weight": (d, mels, k),
        "dconv2.conv.bias": (mels,),
        **_prefixed("dconv2.norm", _norm(mels)),
        "positional_embedding": (a["max_audio_seconds"] * a["sampling_rate"] // a["hop_length"], d),
        **_prefixed("layer_norm", _norm(d)),
    }
    for layer in range(a["decoder_layers"]):
        dec.update(_prefixed(f"layers.{layer}", _whisper_layer(d, a["decoder_ffn_dim"])))
    in_ch, index = mels, 0
    for out_ch in legacy["channels"][:-1]:  # conv, GroupNorm, Mish
        dec[f"post_net.layers.{index}.weight"] = (out_ch, in_ch, 5)
        dec[f"post_net.layers.{index}.bias"] = (out_ch,)
        dec.update(_prefixed(f"post_net.layers.{index + 1}", _norm(out_ch)))
        in_ch, index = out_ch, index + 3
    dec[f"post_net.layers.{index}.weight"] = (mels, in_ch, 1)
    dec[f"post_net.layers.{index}.bias"] = (mels,)
    return _prefixed("audio_tokenizer.audio_decoder", dec)


def _unet_block(dim: int, dim_out: int, time_dim: int) -> dict[str, tuple]:
    out = {}
    for name, cin in (("block1", dim), ("block2", dim_out)):
        out[f"{name}.block.0.weight"] = (dim_out, cin, 3)
        out[f"{name}.block.0.bias"] = (dim_out,)
        out.update(_prefixed(f"{name}.block.2", _norm(dim_out)))
    out.update(_prefixed("mlp.1", _linear(dim_out, time_dim)))
    out["res_conv.weight"] = (dim_out, dim, 1)
    out["res_conv.bias"] = (dim_out,)
    return out


def _unet_transformer(dim: int, heads: int, head_dim: int, act_fn: str) -> dict[str, tuple]:
    inner = heads * head_dim
    out = {f"attn1.to_{n}.weight": (inner, dim) for n in "qkv"}
    out.update(_prefixed("attn1.to_out.0", _linear(dim, inner)))
    # diffusers GEGLU projects to twice the inner width; SnakeBeta adds per-channel alpha / beta
    out.update(_prefixed("ff.net.0.proj", _linear((8 if act_fn == "geglu" else 4) * dim, dim)))
    if act_fn == "snakebeta":
        out.update({"ff.net.0.alpha": (4 * dim,), "ff.net.0.beta": (4 * dim,)})
    out.update(_prefixed("ff.net.2", _linear(dim, 4 * dim)))
    out.update(_prefixed("norm1", _norm(dim)))
    out.update(_prefixed("norm3", _norm(dim)))
    return out


def _unet_level(fm: dict, dim: int, dim_out: int, time_dim: int) -> dict[str, tuple]:
    out = _prefixed("0", _unet_block(dim, dim_out, time_dim))
    for b in range(fm["n_blocks"]):
        block = _unet_transformer(dim_out, fm["num_heads"], fm["attention_head_dim"], fm["act_fn"])
        out.update(_prefixed(f"1.{b}", block))
    return out


def _flow_shapes(cfg: dict) -> dict[str, tuple]:
    fm = cfg["flow_matching_config"]
    pd, pin = fm["prenet_d_model"], fm["prenet_in_dim"]
    prenet = {
        **_prefixed("in_mlp.0", _linear(4 * pd, pin)),
        **_prefixed("in_mlp.2", _linear(pd, 4 * pd)),
        "out_proj.weight": (fm["prenet_out_dim"], pd),
        "final_norm.weight": (pd,),
        "positional_embedding": (fm["prenet_max_source_positions"], pd),
    }
    for layer in range(fm["prenet_nlayers"]):
        prenet.update(_prefixed(f"transformer_layers.{layer}", _whisper_layer(pd, fm["prenet_ffn_dim"], False)))
    n = fm["in_channels"]
    in_ch, channels = 2 * n + fm["spk_emb_dim"], list(fm["channels"])
    time_dim = 4 * channels[0]
    unet = {
        **_prefixed("time_mlp.linear_1", _linear(time_dim, in_ch)),
        **_prefixed("time_mlp.linear_2", _linear(time_dim, time_dim)),
    }
    out_ch = in_ch
    for i, ch in enumerate(channels):
        prev, out_ch = out_ch, ch
        unet.update(_prefixed(f"down_blocks.{i}", _unet_level(fm, prev, ch, time_dim)))
        sampler = f"down_blocks.{i}.2" if i == len(channels) - 1 else f"down_blocks.{i}.2.conv"
        unet.update(_prefixed(sampler, {"weight": (ch, ch, 3), "bias": (ch,)}))
    for i in range(fm["num_mid_blocks"]):
        unet.update(_prefixed(f"mid_blocks.{i}", _unet_level(fm, channels[-1], out_ch, time_dim)))
    rev = channels[::-1] + [channels[0]]
    for i in range(len(rev) - 1):
        ch, last = rev[i + 1], i == len(rev) - 2
        unet.update(_prefixed(f"up_blocks.{i}", _unet_level(fm, 2 * rev[i], ch, time_dim)))
        sampler = {"weight": (ch, ch, 3), "bias": (ch,)} if last else {"weight": (ch, ch, 4), "bias": (ch,)}
        unet.update(_prefixed(f"up_blocks.{i}.2" if last else f"up_blocks.{i}.2.conv", sampler))
    unet.update(_prefixed("final_block.block.0", {"weight": (rev[-1], rev[-1], 3), "bias": (rev[-1],)}))
    unet.update(_prefixed("final_block.block.2", _norm(rev[-1])))
    unet.update({"final_proj.weight": (n, rev[-1], 1), "final_proj.bias": (n,)})
    root = "audio_tokenizer.audio_flow_matching_decoder"
    return {**_prefixed(f"{root}.prenet", prenet), **_prefixed(f"{root}.conditional_decoder", unet)}


def original_state_shapes(cfg: dict) -> dict[str, tuple]:
    """Every key of the original ``OmniForCausalLM.state_dict()`` (audio parts) and its shape."""
    return {
        **_llm_shapes(cfg),
        **_audio_head_shapes(cfg),
        **_tokenizer_shapes(cfg),
        **_decoder_shapes(cfg),
        **_flow_shapes(cfg),
    }


def random_original_state(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights of those shapes; norms around 1, everything else O(0.1), so a wrong mapping shows."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in sorted(original_state_shapes(cfg).items()):
        if key.endswith("positional_embedding"):
            state[key] = torch.zeros(shape)  # saved sinusoid buffers; regenerated by both implementations
        elif key.endswith("cluster_size"):
            state[key] = torch.ones(shape)
        elif len(shape) == 1 and ("norm" in key or "layernorm" in key or ".block.2." in key):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=gen)
    return state


#: Role / end-of-text tokens the converter reads from the tokenizer's added tokens (ids below the small vocabularies).
ROLE_TOKENS = {"<B_SYS>": 110, "<C_Q>": 111, "<C_A>": 112, "<|endoftext|>": 113}


def write_original_checkpoint(directory: Path, cfg: dict, state: dict[str, torch.Tensor]) -> Path:
    """``config.json`` + ``model.safetensors`` + the tokenizer's added-token list (no vocabulary: no processor)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    decoder = {str(i): {"content": tok, "special": True} for tok, i in ROLE_TOKENS.items()}
    (directory / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    save_file(state, str(directory / "model.safetensors"))
    return directory
