"""Original Baichuan-Audio checkpoint -> this package's layout.

* :func:`convert_checkpoint` writes a converted directory (safetensors shards, ``config.json``,
  ``generation_config.json``, processor files) that ``AutoModelForCausalLM`` / ``AutoModelForMultimodalLM`` /
  ``AutoProcessor.from_pretrained`` load. It streams one original shard at a time.
* :func:`load_original_model` converts in memory and returns a ready model (what
  ``BaichuanAudioForConditionalGeneration.from_pretrained`` does for an original-layout directory).

Which original keys go where (each component documents its own mapping and its list of dropped keys):

============================================  =============================================  ======================
original prefix                               component converter                            new prefix
============================================  =============================================  ======================
``model.*`` (LLM, ``W_pack`` split),          ``conversion.llm_weights.                       ``model.language_model``,
``model.audio_embed_layers.*``, ``lm_head``,  convert_original_model_weights``               ``model.audio_embed``,
``audio_head.*``                                                                             ``lm_head``, ``audio_head``
``audio_tokenizer.audio_model.*``,            ``conversion.audio_tokenizer_weights.           ``model.audio_tokenizer``
``audio_tokenizer.audio_bridge_model.*``      convert_original_audio_tokenizer_weights``
``audio_tokenizer.audio_decoder.*``,          ``conversion.code2wav_weights.                  ``code2wav``
``..audio_flow_matching_decoder.*``,          convert_original_code2wav_weights``
``..proj_decoder.*``, codebooks (again),
the HiFT vocoder state dict
============================================  =============================================  ======================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..configuration import BaichuanAudioConfig
from .audio_tokenizer_weights import convert_original_audio_tokenizer_weights
from .checkpoint import (
    ComponentConverter,
    OriginalCheckpoint,
    ShardWriter,
    check_against_model,
    convert_tensors,
    load_vocoder_state_dict,
)
from .code2wav_weights import convert_original_code2wav_weights, convert_original_vocoder_weights
from .config import ConversionError, config_from_original, original_llm_settings, read_added_tokens
from .llm_weights import convert_original_model_weights

TOKENIZER_PREFIX = "model.audio_tokenizer."
CODE2WAV_PREFIX = "code2wav."


def _prefixed(prefix: str, convert) -> ComponentConverter:
    def run(tensors: Mapping[str, torch.Tensor]):
        converted, claimed = convert(tensors)
        return {prefix + k: v for k, v in converted.items()}, claimed

    return run


def component_converters(config: BaichuanAudioConfig, original_config: dict | None = None) -> list[ComponentConverter]:
    """The converters of the LLM/head, the audio tokenizer and (when audio output is enabled) code2wav.

    ``original_config`` (the original ``config.json``) tells the LLM layout variants that leave no trace in the
    converted config (q/k/v biases, a normalised LM head, tied embeddings), with the original's defaults for absent
    fields; without it the released checkpoints' layout is assumed.
    """
    layout = {}
    if original_config is not None:
        llm = original_llm_settings(original_config)
        layout = {
            "qkv_bias": bool(llm["attention_qkv_bias"]),
            "norm_head": bool(llm["use_norm_head"]),
            "tie_word_embeddings": bool(llm["tie_word_embeddings"]),
        }
    converters: list[ComponentConverter] = [
        partial(convert_original_model_weights, config=config, **layout),
        _prefixed(TOKENIZER_PREFIX, convert_original_audio_tokenizer_weights),
    ]
    if config.enable_audio_output:
        converters.append(_prefixed(CODE2WAV_PREFIX, lambda t: convert_original_code2wav_weights(t, None)))
    else:
        converters.append(_code2wav_dropper)
    return converters


def _code2wav_dropper(tensors: Mapping[str, torch.Tensor]):
    """Without audio output, the decoder-side original keys are dropped on purpose."""
    prefixes = (
        "audio_tokenizer.audio_decoder.",
        "audio_tokenizer.audio_flow_matching_decoder.",
        "audio_tokenizer.audio_bridge_model.proj_decoder.",
    )
    return {}, {k for k in tensors if k.startswith(prefixes)}


def convert_vocoder(vocoder_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HiFT state dict (``hift.pt`` layout, weight norm as ``weight_g``/``weight_v``) -> ``code2wav.vocoder.*``."""
    return {CODE2WAV_PREFIX + k: v for k, v in convert_original_vocoder_weights(vocoder_state).items()}


def _vocoder_config_beside(vocoder: str | Path | None) -> dict | None:
    if vocoder is None:
        return None
    cand = Path(vocoder).with_name("vocoder_config.json")
    return json.loads(cand.read_text()) if cand.exists() else None


def config_for_checkpoint(
    ckpt: OriginalCheckpoint, vocoder: str | Path | None = None, vocoder_config: dict | None = None
) -> BaichuanAudioConfig:
    return config_from_original(
        ckpt.config,
        vocoder_config=vocoder_config if vocoder_config is not None else _vocoder_config_beside(vocoder),
        added_tokens=read_added_tokens(ckpt.tokenizer_dir()),
        generation_config=ckpt.generation_config,
    )


def expected_shapes(config: BaichuanAudioConfig) -> dict[str, tuple]:
    """Keys and shapes of the model's state dict, from a model built on the meta device (no memory)."""
    from ..modeling.baichuan_audio import BaichuanAudioForConditionalGeneration

    with torch.device("meta"):
        model = BaichuanAudioForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_original_state_dict(
    original: Mapping[str, torch.Tensor],
    config: BaichuanAudioConfig,
    vocoder_state: Mapping[str, torch.Tensor] | None = None,
    original_config: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Convert a whole original state dict (+ vocoder) in memory, with the key and shape checks.

    ``original_config``: the original ``config.json`` (see :func:`component_converters`).
    """
    converted, _ = convert_tensors(original, component_converters(config, original_config))
    if config.enable_audio_output:
        if vocoder_state is None:
            raise ConversionError("audio output is enabled but no vocoder weights were given (hift.pt)")
        converted.update(convert_vocoder(vocoder_state))
    check_against_model({k: tuple(v.shape) for k, v in converted.items()}, expected_shapes(config))
    return converted


def load_original_model(
    path: str | Path,
    vocoder: str | Path | None = None,
    *,
    vocoder_config: dict | None = None,
    enable_audio_output: bool | None = None,
    **from_pretrained_kwargs,
):
    """Convert an original-layout checkpoint on the fly and return a :class:`BaichuanAudioForConditionalGeneration`.

    ``vocoder`` is the HiFT weights (``hift.pt`` or safetensors); without it audio output is disabled unless
    ``enable_audio_output=True`` is forced (then it fails). The converted state dict goes through the regular
    ``from_pretrained`` loading (``dtype``, ``device_map``, ``attn_implementation`` ... are accepted), with the same
    key and shape checks as :func:`convert_checkpoint`.
    """
    from ..modeling.baichuan_audio import BaichuanAudioForConditionalGeneration

    ckpt = OriginalCheckpoint(path)
    config = config_for_checkpoint(ckpt, vocoder, vocoder_config)
    config.enable_audio_output = (vocoder is not None) if enable_audio_output is None else enable_audio_output
    vocoder_state = load_vocoder_state_dict(vocoder) if vocoder is not None else None
    state = convert_original_state_dict(ckpt.load_all(), config, vocoder_state, ckpt.config)
    model = BaichuanAudioForConditionalGeneration._from_converted_state_dict(config, state, **from_pretrained_kwargs)
    model.generation_config = _generation_config(config)
    return model


def _generation_config(config: BaichuanAudioConfig):
    from transformers import GenerationConfig

    try:
        from ..modeling.generation import default_generation_config
    except ImportError:
        return GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    return default_generation_config(config)


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    vocoder: str | Path | None = None,
    *,
    vocoder_config: dict | None = None,
    max_shard_size: int = 5 * 1024**3,
    save_processor: bool = True,
    push_to_hub: str | None = None,
    progress: bool = True,
) -> Path:
    """Convert an original checkpoint directory into ``dst`` (memory bounded: one original shard at a time).

    Args:
        src: original checkpoint directory (``config.json``, ``model.safetensors`` or shards + index, tokenizer).
        dst: output directory.
        vocoder: HiFT vocoder weights (``hift.pt``, loaded with ``weights_only=True``, or safetensors). Without it
            the converted model has ``enable_audio_output=False`` (text and codes only).
        vocoder_config: HiFT constructor arguments (default: ``vocoder_config.json`` beside ``vocoder``, else the
            released vocoder's values).
        max_shard_size: bytes per output shard.
        save_processor: also write the processor files (feature extractor, tokenizer, chat template).
        push_to_hub: a hub repo id to upload the result to.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    ckpt = OriginalCheckpoint(src)
    config = config_for_checkpoint(ckpt, vocoder, vocoder_config)
    config.enable_audio_output = vocoder is not None
    converters = component_converters(config, ckpt.config)
    expected = expected_shapes(config)

    writer = ShardWriter(dst, max_shard_size)
    shapes: dict[str, tuple] = {}
    for shard in tqdm(ckpt.iter_shards(), total=len(ckpt.shards), desc="converting shards", disable=not progress):
        converted, _ = convert_tensors(shard, converters)
        for key, tensor in converted.items():
            if key in shapes:
                raise ConversionError(f"key {key} produced twice (in two shards)")
            shapes[key] = tuple(tensor.shape)
            writer.add(key, tensor)
        del shard, converted
    if vocoder is not None:
        for key, tensor in convert_vocoder(load_vocoder_state_dict(vocoder)).items():
            shapes[key] = tuple(tensor.shape)
            writer.add(key, tensor)
    check_against_model(shapes, expected)
    writer.finish()

    config.architectures = ["BaichuanAudioForConditionalGeneration"]
    config.save_pretrained(dst)
    _generation_config(config).save_pretrained(dst)
    if save_processor and ckpt.tokenizer_dir() is not None:
        processor_for_original(ckpt.tokenizer_dir(), config).save_pretrained(dst)
    if push_to_hub:
        from huggingface_hub import upload_folder

        upload_folder(repo_id=push_to_hub, folder_path=str(dst))
    return dst


def processor_for_original(tokenizer_dir: str | Path, config: BaichuanAudioConfig):
    """The processor of an original checkpoint: its tokenizer files + a feature extractor from the audio config."""
    from transformers import AutoTokenizer

    from ..processing.feature_extraction import BaichuanAudioFeatureExtractor
    from ..processing.processor import BaichuanAudioProcessor

    feature_extractor = BaichuanAudioFeatureExtractor.from_tokenizer_config(config.audio_tokenizer_config)
    return BaichuanAudioProcessor(feature_extractor, AutoTokenizer.from_pretrained(str(tokenizer_dir)))


def is_original_checkpoint(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "omni"
    except json.JSONDecodeError:
        return False


__all__ = [
    "convert_checkpoint",
    "convert_original_state_dict",
    "load_original_model",
    "component_converters",
    "config_for_checkpoint",
    "is_original_checkpoint",
    "processor_for_original",
    "ConversionError",
]
