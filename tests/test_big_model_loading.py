"""Loading for big models, on the tiny random model: ``device_map`` with disk offload, quantisation configs,
attention implementations.

* ``device_map`` (accelerate): a saved model loaded with maps that offload parts (``"disk"``; on a CUDA machine also
  ``"cpu"`` entries executing on the GPU) gives EXACTLY the logits, the speech-generation tokens / codes / waveform
  and the audio-tokenizer codes of a plain load. Exact (0 tolerance), because accelerate's hooks load the very same
  saved fp32 / bf16 tensors and the same kernels run on them in the same order (the offloaded weights are copies,
  not re-computations). Also for ``dtype="auto"`` on a bf16 checkpoint (code2wav and the RVQ codebooks kept fp32).
* quantisation: :func:`quantization_config_for` reaches the LLM decoder layers' ``nn.Linear`` only, by transformers'
  own matching rule; the kernel run (bitsandbytes, CUDA) is skipped without them.
* attention: a function registered with ``AttentionInterface.register`` is called by EVERY attention module of the
  model (LLM, audio head, audio tokenizer, code2wav), and, delegating to sdpa, gives sdpa's outputs exactly.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface, AutoModel, BitsAndBytesConfig
from transformers.masking_utils import sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration
from transformers_baichuan_audio.modeling.big_model import (
    attn_implementation_for,
    quantization_config_for,
    quantized_module_names,
)
from transformers_baichuan_audio.tiny_random import build_tiny_random

#: short answers (one phrase of 3 frames), and 2 Euler steps in code2wav: disk-offloaded modules read every weight
#: from the safetensors file at every call of their forward
CAPS = dict(do_sample=False, audio_do_sample=False, text_segment_max_new_tokens=2, audio_max_frames=3, max_rounds=1)
EULER_STEPS = 2
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(fp32 directory, bf16 directory, tokenizer) of the tiny random model saved with ``save_pretrained``."""
    model, processor = build_tiny_random()
    fp32_dir = tmp_path_factory.mktemp("tiny_fp32")
    model.save_pretrained(fp32_dir)
    bf16_dir = tmp_path_factory.mktemp("tiny_bf16")
    BaichuanAudioForConditionalGeneration.from_pretrained(fp32_dir, dtype=torch.bfloat16).save_pretrained(bf16_dir)
    return fp32_dir, bf16_dir, processor.tokenizer


@pytest.fixture(scope="module")
def inputs(saved):
    """A prompt with 3 audio frames (exercises the audio embeddings), their codes, and speech features."""
    tokenizer = saved[2]
    config = BaichuanAudioForConditionalGeneration.config_class.from_pretrained(saved[0])
    pad = config.audio_pad_token_id
    ids = tokenizer.encode("hi ") + [pad] * 3 + tokenizer.encode(" ok")
    gen = torch.Generator().manual_seed(1)
    codes = torch.stack([torch.randint(0, size, (3,), generator=gen) for size in config.codebook_sizes], dim=-1)
    features = torch.randn(2, config.audio_tokenizer_config.num_mel_bins, 400, generator=gen)
    return torch.tensor([ids]), codes, features, torch.tensor([50, 37])


def run(model, inputs, tokenizer, device="cpu") -> dict:
    """Logits, speech generation (tokens, codes, waveform: vocoder noise seeded) and audio-tokenizer codes."""
    ids, codes, features, lengths = inputs
    model.code2wav.config.flow_matching_config.diffusion_steps = EULER_STEPS
    torch.manual_seed(0)
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), audio_codes=codes.to(device)).logits.float().cpu()
        out = model.generate(
            ids.to(device),
            audio_codes=codes.to(device),
            output_audio=True,
            return_waveforms=True,
            tokenizer=tokenizer,
            **CAPS,
        )
        audio_codes = model.model.get_audio_codes(features.to(device), lengths.to(device))
    return {
        "logits": logits,
        "sequences": out.sequences.cpu(),
        "codes": [c.cpu() for c in out.audio_codes[0]],
        "waveform": out.waveforms[0].cpu(),
        "tokenizer_codes": audio_codes.cpu(),
    }


def assert_same(ours: dict, expected: dict) -> None:
    assert expected["codes"] and sum(c.shape[0] for c in expected["codes"]) > 0  # speech really produced
    for key in ("logits", "sequences", "waveform", "tokenizer_codes"):
        torch.testing.assert_close(ours[key], expected[key], rtol=0, atol=0, msg=key)
    assert len(ours["codes"]) == len(expected["codes"])
    for a, b in zip(ours["codes"], expected["codes"]):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def plain(saved, inputs):
    """Outputs of plain loads (no device_map): fp32 and bf16 (``dtype="auto"``) on the cpu, fp32 on GPU 0."""
    fp32_dir, bf16_dir, tokenizer = saved
    fp32 = BaichuanAudioForConditionalGeneration.from_pretrained(fp32_dir).eval()
    bf16 = BaichuanAudioForConditionalGeneration.from_pretrained(bf16_dir, dtype="auto").eval()
    out = {"fp32": run(fp32, inputs, tokenizer), "bf16": run(bf16, inputs, tokenizer)}
    out["bf16_dtypes"] = {name: p.dtype for name, p in bf16.named_parameters()}
    if CUDA:
        out["cuda"] = run(fp32.to("cuda"), inputs, tokenizer, "cuda")
    return out


def _model_bytes(directory) -> int:
    model = BaichuanAudioForConditionalGeneration.from_pretrained(directory)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_auto_device_map_with_small_max_memory_offloads_to_disk(saved, inputs, plain, tmp_path):
    """``device_map="auto"`` with a cpu budget of 55 % of the weights (the audio head alone is 47 %, and accelerate
    keeps room for the largest unit): the embeddings and some LLM layers stay, the other LLM layers, the audio
    embeddings, tokenizer, heads and code2wav (one unit, ``_no_split_modules``) go to disk. Every audio part thus
    runs with offloaded weights; the outputs are exactly the plain load's."""
    fp32_dir, _, tokenizer = saved
    budget = int(0.55 * _model_bytes(fp32_dir))
    model = BaichuanAudioForConditionalGeneration.from_pretrained(
        fp32_dir, device_map="auto", max_memory={"cpu": budget}, offload_folder=tmp_path
    ).eval()
    device_map = model.hf_device_map
    for part in ("model.audio_embed", "model.audio_tokenizer", "lm_head", "audio_head", "code2wav"):
        assert device_map[part] == "disk", part
    assert not any(key.startswith("code2wav.") for key in device_map)  # code2wav is one unit
    resident = [n for n, p in model.named_parameters() if p.device.type != "meta"]
    assert resident and all(n.startswith("model.language_model.") for n in resident)
    assert sum(model.get_parameter(n).numel() * 4 for n in resident) <= budget
    assert_same(run(model, inputs, tokenizer), plain["fp32"])


def test_bf16_checkpoint_dtype_auto_with_disk_offload(saved, inputs, plain, tmp_path):
    """``dtype="auto"`` on a bf16 checkpoint: LLM / head / tokenizer bf16, code2wav and RVQ codebooks fp32, with
    and without offloading (meta tensors keep their dtype, and accelerate casts the weights it loads to it); the
    offloaded model's outputs are the plain load's."""
    _, bf16_dir, tokenizer = saved
    device_map = {"model.language_model": "cpu", "model.audio_embed": "cpu", "model.audio_tokenizer": "disk"}
    device_map.update({"lm_head": "cpu", "audio_head": "cpu", "code2wav": "disk"})
    model = BaichuanAudioForConditionalGeneration.from_pretrained(
        bf16_dir, dtype="auto", device_map=device_map, offload_folder=tmp_path
    ).eval()
    expected = {
        name: torch.float32 if name.startswith("code2wav.") or ".codebooks." in name else torch.bfloat16
        for name, _ in model.named_parameters()
    }
    assert plain["bf16_dtypes"] == expected
    assert {name: p.dtype for name, p in model.named_parameters()} == expected
    assert_same(run(model, inputs, tokenizer), plain["bf16"])


@pytest.mark.skipif(not CUDA, reason="cpu offload to a GPU (weights copied to it per forward) needs a CUDA GPU")
def test_cpu_and_disk_offload_on_cuda_give_the_plain_outputs(saved, inputs, plain, tmp_path):
    """On GPU 0: "cpu" and "disk" entries execute there (main device); also the LLM offloaded and the audio parts
    resident. Same kernels on the same weights: the plain GPU load's outputs exactly."""
    fp32_dir, _, tokenizer = saved
    audio_parts = ("model.audio_embed", "model.audio_tokenizer", "lm_head", "audio_head", "code2wav")
    maps = {
        "audio parts on cpu": {"model.language_model": 0, **dict.fromkeys(audio_parts, "cpu")},
        "llm on cpu": {"model.language_model": "cpu", **dict.fromkeys(audio_parts, 0)},
        "audio parts on disk": {"model.language_model": 0, **dict.fromkeys(audio_parts, "disk")},
    }
    for name, device_map in maps.items():
        model = BaichuanAudioForConditionalGeneration.from_pretrained(
            fp32_dir, device_map=device_map, offload_folder=tmp_path / name.replace(" ", "_")
        ).eval()
        assert any(p.device.type == "meta" for p in model.parameters()), name  # some weights really offloaded
        assert_same(run(model, inputs, tokenizer, "cuda"), plain["cuda"])


# ----------------------------------------------------------------------------------------------- quantisation


def _llm_layer_linears(model) -> set[str]:
    return {
        name
        for name, module in model.named_modules()
        if name.startswith("model.language_model.layers.") and isinstance(module, nn.Linear)
    }


@pytest.mark.parametrize("bits", [4, 8])
def test_quantization_config_reaches_only_the_llm_decoder_layers(bits):
    """At the real size (meta device, nothing allocated): the replaced modules are exactly the 7 projections of each
    of the 28 Qwen2 layers (q, k, v, o, gate, up, down): 196 modules, 6.525 G of the 10.36 G parameters."""
    config = quantization_config_for(bits)
    assert (config.load_in_4bit, config.load_in_8bit) == (bits == 4, bits == 8)
    if bits == 4:
        assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_compute_dtype == torch.bfloat16
    with torch.device("meta"):
        model = BaichuanAudioForConditionalGeneration(BaichuanAudioConfig())
    names = quantized_module_names(model, config)
    assert set(names) == _llm_layer_linears(model)
    assert len(names) == 28 * 7
    text = model.config.text_config
    hidden, inter = text.hidden_size, text.intermediate_size
    kv = text.num_key_value_heads * (hidden // text.num_attention_heads)
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter  # q, o; k, v; gate, up, down
    assert sum(model.get_submodule(n).weight.numel() for n in names) == 28 * per_layer == 6_525_288_448


def test_quantization_options_and_the_stock_config():
    """The tokenizer opt-in adds exactly its linears; a stock ``BitsAndBytesConfig`` would also quantise the audio
    head, the audio tokenizer and code2wav (why the helper exists); bad bit widths are refused."""
    model, _ = build_tiny_random()
    llm = _llm_layer_linears(model)
    tokenizer = {
        n for n, m in model.named_modules() if n.startswith("model.audio_tokenizer.") and isinstance(m, nn.Linear)
    }
    assert tokenizer and set(quantized_module_names(model, quantization_config_for(4))) == llm
    with_tokenizer = quantized_module_names(model, quantization_config_for(4, quantize_audio_tokenizer=True))
    assert set(with_tokenizer) == llm | tokenizer
    stock = set(quantized_module_names(model, BitsAndBytesConfig(load_in_4bit=True)))
    assert "lm_head" not in stock and any(n.startswith("audio_head.") for n in stock)
    assert any(n.startswith("code2wav.") for n in stock) and tokenizer <= stock
    with pytest.raises(ValueError, match="bits must be 4"):
        quantization_config_for(3)


@pytest.mark.skipif(
    not CUDA or importlib.util.find_spec("bitsandbytes") is None,
    reason="the bitsandbytes kernels need a CUDA GPU and the optional bitsandbytes package",
)
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_load_generates_speech_on_cuda(saved, inputs, bits):
    fp32_dir, _, tokenizer = saved
    config = quantization_config_for(bits)
    model = BaichuanAudioForConditionalGeneration.from_pretrained(
        fp32_dir, quantization_config=config, dtype=torch.bfloat16, device_map={"": 0}
    ).eval()
    expected = set(quantized_module_names(BaichuanAudioForConditionalGeneration.from_pretrained(fp32_dir), config))
    replaced = {n for n, m in model.named_modules() if type(m).__module__.startswith("bitsandbytes")}
    assert replaced == expected
    assert all(p.dtype == torch.float32 for p in model.code2wav.parameters())
    out = run(model, inputs, tokenizer, "cuda")
    assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["waveform"]).all()
    sizes = torch.tensor(model.config.codebook_sizes)
    assert out["codes"] and all(bool((c >= 0).all() and (c < sizes).all()) for c in out["codes"])


# ----------------------------------------------------------------------------------------------- attention

COUNTING = "baichuan_audio_test_counting_sdpa"
_CALLED: list[nn.Module] = []


def _counting_sdpa(module, *args, **kwargs):
    _CALLED.append(module)
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, *args, **kwargs)


def _register_counting() -> None:
    """The attention function and, as transformers needs for a new name, its mask function (sdpa's masks; without
    one the LLM gets no mask at all, wrong for multi-token steps after cached positions)."""
    AttentionInterface.register(COUNTING, _counting_sdpa)
    AttentionMaskInterface.register(COUNTING, sdpa_mask)


def test_registered_attention_runs_in_every_attention_module(saved, inputs, plain):
    """All 15 attention modules of the tiny model (2 LLM layers, 3 audio-head layers, 2 tokenizer encoder layers,
    2 + 2 code2wav decoder / prenet layers, 4 U-Net blocks) call the registered function, and the outputs are
    sdpa's (the function delegates to it: exact)."""
    fp32_dir, _, tokenizer = saved
    _register_counting()
    model = BaichuanAudioForConditionalGeneration.from_pretrained(fp32_dir, attn_implementation=COUNTING).eval()
    attention = {id(m) for m in model.modules() if type(m).__name__.endswith("Attention")}
    assert len(attention) == 15
    _CALLED.clear()
    out = run(model, inputs, tokenizer)
    assert {id(m) for m in _CALLED} == attention
    assert_same(out, plain["fp32"])


def test_flash_attention_form_keeps_code2wav_on_sdpa(saved):
    """code2wav does not declare flash attention: transformers refuses it there (before any import of the kernel),
    so :func:`attn_implementation_for` keeps it on sdpa; other names reach every sub-config."""
    config = BaichuanAudioConfig.tiny()
    with pytest.raises(ValueError, match="does not support Flash Attention"):
        AutoModel.from_config(config.code2wav_config, attn_implementation="flash_attention_2")
    flash = attn_implementation_for("flash_attention_2")
    assert flash["code2wav_config"] == "sdpa"
    assert {flash[k] for k in ("", "text_config", "audio_head_config", "audio_tokenizer_config")} == {
        "flash_attention_2"
    }
    _register_counting()
    model = BaichuanAudioForConditionalGeneration.from_pretrained(
        saved[0], attn_implementation=attn_implementation_for(COUNTING)
    )
    sub = model.config
    implementations = {
        sub.text_config._attn_implementation,
        sub.audio_head_config._attn_implementation,
        sub.audio_tokenizer_config._attn_implementation,
        sub.code2wav_config._attn_implementation,
    }
    assert implementations == {COUNTING}
