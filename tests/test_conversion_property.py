"""Conversion over randomly varied ORIGINAL configurations (issue: any checkpoint the original code can load).

For seeded random original ``config.json`` files (``tests/original_layout.py``: explicit ``head_dim`` with
heads * head_dim != hidden, kv groups of 1 and of all heads, odd layer counts, codebook counts/sizes that are not
powers of two, packed/separate q/k/v, with/without q/k/v biases, NormHead, absent fields, multi-level U-Nets):
random original-layout weights are converted and

(a) the on-the-fly ``load_original_model(original_dir, vocoder=...)`` and ``convert`` + ``from_pretrained(converted_dir)``
    hold identical weights and give identical logits;
(b) ``save_pretrained`` / ``from_pretrained`` round trips are identical;
(c) every original key is converted or on a documented drop list (the converter raises otherwise: unknown keys,
    missing weights and shape mismatches are errors), checked by converting at all;
(d) the LLM logits and the audio-head logits equal an independent forward of the ORIGINAL architecture written here
    from the original weights (RoPE over ``head_dim``, GQA, ``NormHead`` normalisation, ``nn.MultiheadAttention``
    with ``hidden // 128`` heads), so a derived dimension or a dropped normalisation shows as a numeric error.

Tolerance 1e-4 (fp32): both sides compute the same operations in another order; roundoff is ~1e-6 at these sizes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from original_layout import (
    original_state_shapes,
    random_original_config,
    random_original_state,
    write_original_checkpoint,
)

from transformers_baichuan_audio import BaichuanAudioForConditionalGeneration, load_original_model
from transformers_baichuan_audio.configuration import BaichuanAudioVocoderConfig
from transformers_baichuan_audio.conversion.convert import convert_checkpoint
from transformers_baichuan_audio.modeling.vocoder import BaichuanAudioHiFTVocoder

SEEDS = list(range(6))
TOL = 1e-4

VOCODER_CONFIG = {
    "in_channels": 80,
    "base_channels": 16,
    "nb_harmonics": 2,
    "sampling_rate": 24000,
    "upsample_rates": [8, 5, 3],
    "upsample_kernel_sizes": [16, 11, 7],
    "istft_params": {"n_fft": 16, "hop_len": 4},
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3]],
    "source_resblock_kernel_sizes": [7, 7, 11],
    "source_resblock_dilation_sizes": [[1, 3], [1, 3], [1, 3]],
    "f0_predictor": {"num_class": 1, "in_channels": 80, "cond_channels": 16},
}


def _write_vocoder(directory, seed: int):
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    vocoder = BaichuanAudioHiFTVocoder(BaichuanAudioVocoderConfig.from_original(VOCODER_CONFIG))
    save_file({k: v.contiguous() for k, v in vocoder.state_dict().items()}, str(directory / "vocoder.safetensors"))
    (directory / "vocoder_config.json").write_text(json.dumps(VOCODER_CONFIG))
    return directory / "vocoder.safetensors"


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def converted(request, tmp_path_factory):
    seed = request.param
    root = tmp_path_factory.mktemp(f"orig{seed}")
    cfg = random_original_config(seed)
    state = random_original_state(cfg, seed)
    original_dir = write_original_checkpoint(root / "original", cfg, state)
    vocoder = _write_vocoder(root, seed)
    on_the_fly = load_original_model(original_dir, vocoder=vocoder, dtype=torch.float32).eval()
    out_dir = convert_checkpoint(
        original_dir, root / "converted", vocoder=vocoder, save_processor=False, progress=False
    )
    reloaded = BaichuanAudioForConditionalGeneration.from_pretrained(out_dir, dtype=torch.float32).eval()
    return cfg, state, on_the_fly, reloaded, root


def _inputs(cfg: dict, seed: int):
    gen = torch.Generator().manual_seed(seed)
    vocab = cfg["vocab_size"]
    ids = torch.randint(0, 100, (2, 11), generator=gen)  # below the audio token ids of original_layout
    books = cfg["audio_config"]["vq_config"]["codebook_sizes"]
    hidden = torch.randn(3, cfg["hidden_size"], generator=gen)
    codes = torch.stack([torch.randint(0, n, (3,), generator=gen) for n in books], dim=-1)
    assert ids.max() < vocab
    return ids, hidden, codes


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def reference_llm_logits(cfg: dict, state: dict, ids: torch.Tensor) -> torch.Tensor:
    """The original ``OmniForCausalLM`` text forward (no cache, positions 0..S-1), from its weights."""
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    d = cfg.get("head_dim") or hidden // heads
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rotary_emb_base", cfg.get("rope_theta"))
    bsz, seq = ids.shape
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.outer(torch.arange(seq).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    x = state["model.embed_tokens.weight"][ids]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = _rms(x, state[p + "input_layernorm.weight"], eps)
        if cfg.get("attention_qkv_pack", True):
            proj = F.linear(h, state[p + "self_attn.W_pack.weight"], state.get(p + "self_attn.W_pack.bias"))
            q, k, v = proj.split([heads * d, kv * d, kv * d], dim=-1)
        else:
            q, k, v = (
                F.linear(h, state[p + f"self_attn.{n}_proj.weight"], state.get(p + f"self_attn.{n}_proj.bias"))
                for n in "qkv"
            )
        q = q.view(bsz, seq, heads, d).transpose(1, 2)
        k = k.view(bsz, seq, kv, d).transpose(1, 2)
        v = v.view(bsz, seq, kv, d).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = (t.repeat_interleave(heads // kv, dim=1) for t in (k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + F.linear(attn.transpose(1, 2).reshape(bsz, seq, heads * d), state[p + "self_attn.o_proj.weight"])
        h = _rms(x, state[p + "post_attention_layernorm.weight"], eps)
        gate = F.silu(F.linear(h, state[p + "mlp.gate_proj.weight"]))
        x = x + F.linear(gate * F.linear(h, state[p + "mlp.up_proj.weight"]), state[p + "mlp.down_proj.weight"])
    x = _rms(x, state["model.norm.weight"], eps)
    head = state["lm_head.weight"]
    if cfg.get("use_norm_head", True):
        head = F.normalize(head)
    return F.linear(x, head)


def reference_audio_head_logits(cfg: dict, state: dict, hidden: torch.Tensor, codes: torch.Tensor):
    """The original depth transformer: [hidden, cumsum of code embeddings 0..P-2] through ``nn.MultiheadAttention``
    (hidden // 128 heads) + per-position FFNs, then one classifier per codebook."""
    size = cfg["hidden_size"]
    books = cfg["audio_config"]["vq_config"]["codebook_sizes"]
    depth = len(books)
    embeds = torch.stack(
        [state[f"model.audio_embed_layers.{i}.weight"][codes[:, i]] for i in range(depth - 1)], dim=1
    ).cumsum(dim=1)
    x = torch.cat([hidden[:, None], embeds], dim=1)
    mask = torch.triu(torch.ones(depth, depth), diagonal=1).bool()
    for layer in range(cfg["audio_config"]["audio_head_transformer_layers"]):
        p = f"audio_head.transformer_layers.{layer}."
        mha = torch.nn.MultiheadAttention(size, size // 128, batch_first=True)
        mha.load_state_dict(
            {k[len(p + "self_attention.") :]: v for k, v in state.items() if k.startswith(p + "self_attention.")}
        )
        h = _rms(x, state[p + "layernorm1.weight"], 1e-6)
        res = mha(h, h, h, attn_mask=mask, need_weights=False)[0] + x
        res = _rms(res, state[p + "layernorm2.weight"], 1e-6)
        w1 = state[p + "linear1.weight"].reshape(2 * size, depth, size)
        w2 = state[p + "linear2.weight"].reshape(size, depth, 2 * size)
        y = F.gelu(torch.einsum("bld,tld->blt", res, w1))
        x = res + torch.einsum("blt,dlt->bld", y, w2)
    x = _rms(x, state["audio_head.headnorm.weight"], 1e-6)
    return [
        F.linear(x[:, i], state[f"audio_head.heads.{i}.weight"], state[f"audio_head.heads.{i}.bias"])
        for i in range(depth)
    ]


def _max_err(a, b) -> float:
    return (a - b).abs().max().item()


def test_random_configs_cover_the_hard_cases():
    cfgs = [random_original_config(s) for s in SEEDS]
    query = [
        c["num_attention_heads"] * (c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]) for c in cfgs
    ]
    assert any(q != c["hidden_size"] for q, c in zip(query, cfgs)), "no heads * head_dim != hidden case"
    assert any(c["num_key_value_heads"] == 1 for c in cfgs) and any(
        c["num_key_value_heads"] == c["num_attention_heads"] for c in cfgs
    )
    assert any(c["num_hidden_layers"] % 2 == 1 for c in cfgs)
    assert any(not c["attention_qkv_pack"] for c in cfgs) and any(not c["attention_qkv_bias"] for c in cfgs)
    assert any(c["use_norm_head"] for c in cfgs)
    assert any(len(c["flow_matching_config"]["channels"]) > 1 for c in cfgs)
    assert len({c["flow_matching_config"]["act_fn"] for c in cfgs}) >= 3
    sizes = [n for c in cfgs for n in c["audio_config"]["vq_config"]["codebook_sizes"]]
    assert any(n & (n - 1) for n in sizes), "no codebook size that is not a power of two"


def test_llm_matches_the_original_architecture(converted):
    cfg, state, on_the_fly, reloaded, _ = converted
    ids, _, _ = _inputs(cfg, 0)
    expected = reference_llm_logits(cfg, state, ids)
    with torch.no_grad():
        got = on_the_fly(input_ids=ids).logits
        again = reloaded(input_ids=ids).logits
    assert _max_err(got, expected) < TOL
    assert torch.equal(got, again)  # (a): the same weights, the same computation


def test_audio_head_matches_the_original_architecture(converted):
    cfg, state, on_the_fly, reloaded, _ = converted
    _, hidden, codes = _inputs(cfg, 1)
    expected = reference_audio_head_logits(cfg, state, hidden, codes)
    with torch.no_grad():
        got = on_the_fly.audio_head_logits(hidden, codes)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and _max_err(g, e) < TOL


def test_on_the_fly_equals_converted_directory(converted):
    cfg, _, on_the_fly, reloaded, _ = converted
    a, b = on_the_fly.state_dict(), reloaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    text = reloaded.config.text_config
    assert text.head_dim == (cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    assert reloaded.config.codebook_sizes == cfg["audio_config"]["vq_config"]["codebook_sizes"]


def test_save_reload_round_trip(converted, tmp_path):
    cfg, _, _, reloaded, _ = converted
    reloaded.save_pretrained(tmp_path / "again")
    again = BaichuanAudioForConditionalGeneration.from_pretrained(tmp_path / "again", dtype=torch.float32).eval()
    ids, hidden, codes = _inputs(cfg, 2)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, again(input_ids=ids).logits)
        for x, y in zip(reloaded.audio_head_logits(hidden, codes), again.audio_head_logits(hidden, codes)):
            assert torch.equal(x, y)
    a, b = reloaded.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_spec_is_the_recorded_original_layout(reference_fixture):
    """original_layout.py's key/shape formulas reproduce the tiny-a checkpoint that the original code saved."""
    recorded = {k: tuple(v.shape) for k, v in reference_fixture.original_state_dict().items()}
    assert original_state_shapes(reference_fixture.config) == recorded


def test_speech_pipeline_runs_on_random_configs(converted):
    """Interleaved speech generation (audio head, every codebook) and code2wav (decoder, prenet, U-Net, vocoder,
    the streaming decoder) run on every drawn shape; the streamed waveform has the one-shot length."""
    from transformers_baichuan_audio.modeling.code2wav_streaming import BaichuanAudioStreamingDecoder

    cfg, _, model, _, _ = converted
    ids = torch.tensor([[1, 2, 3, model.config.audiogen_start_token_id]])
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            ids, output_audio=True, speech_mode="tts", do_sample=True, audio_max_frames=6, max_new_tokens=4
        )
    books = cfg["audio_config"]["vq_config"]["codebook_sizes"]
    segments = out.audio_codes[0]
    for codes in segments:
        assert codes.shape[-1] == len(books)
        assert all(int(codes[:, i].max()) < n for i, n in enumerate(books))  # no end-of-audio class inside
    frames = torch.stack([torch.randint(0, n, (30,)) for n in books], dim=-1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        wave = model.code2wav.decode([frames], generator=gen).audio_values[0]
        stream = BaichuanAudioStreamingDecoder(model.code2wav, generator=torch.Generator().manual_seed(0))
        chunks = [stream.push(frames[i : i + 7]) for i in range(0, 30, 7)] + [stream.finish()]
    streamed = torch.cat([c.reshape(-1) for c in chunks if c is not None and c.numel()])
    assert torch.isfinite(wave).all() and wave.numel() > 0
    assert streamed.numel() == wave.reshape(-1).numel()
