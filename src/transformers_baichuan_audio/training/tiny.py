"""A tiny random Baichuan-Audio for training smoke runs and tests: the byte-level processor of
:mod:`transformers_baichuan_audio.tiny_random` (vocabulary of a few hundred ids) and a matching small config with
small codebooks (fast to memorise).

Nothing here is a trained model: it exists so that the training recipes, the collator, the example scripts and the
multi-process runs can be exercised in seconds on a CPU (``--model tiny-random`` in the examples).
"""

from __future__ import annotations

from ..configuration import BaichuanAudioConfig
from ..processing.processor import BaichuanAudioProcessor

#: codebook sizes of the tiny model (8 codebooks, small tables).
TINY_CODEBOOK_SIZES = [16, 8, 8, 8, 8, 8, 8, 8]


def build_tiny_processor() -> BaichuanAudioProcessor:
    """The byte-level tiny processor of :mod:`transformers_baichuan_audio.tiny_random` (one id per byte + the
    Baichuan special tokens)."""
    from ..tiny_random import tiny_random_processor

    return tiny_random_processor()


def tiny_config_for(processor, hidden_size: int = 64, num_layers: int = 2, **overrides) -> BaichuanAudioConfig:
    """``BaichuanAudioConfig.tiny()`` shrunk to the processor's vocabulary, with its special-token ids, small
    codebooks (:data:`TINY_CODEBOOK_SIZES`) and no code2wav (training does not need waveforms)."""
    tok = processor.tokenizer
    ids = {k: v for k, v in processor.special_token_ids.items()}
    base = BaichuanAudioConfig.tiny()
    text = base.text_config.to_dict()
    text.update(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        max_window_layers=num_layers,
    )
    audio_tok = base.audio_tokenizer_config.to_dict()
    audio_tok["codebook_sizes"] = list(TINY_CODEBOOK_SIZES)
    code2wav = base.code2wav_config.to_dict()
    code2wav["codebook_sizes"] = list(TINY_CODEBOOK_SIZES)
    kwargs = dict(
        text_config=text,
        audio_tokenizer_config=audio_tok,
        audio_head_config={"num_attention_heads": 2, "intermediate_size": 2 * hidden_size},
        code2wav_config=code2wav,
        enable_audio_output=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **ids,
    )
    kwargs.update(overrides)
    return BaichuanAudioConfig(**kwargs)


def speech_generation_model_class():
    """The model class (it has ``generate(output_audio=True)``)."""
    from ..modeling.baichuan_audio import BaichuanAudioForConditionalGeneration

    return BaichuanAudioForConditionalGeneration


__all__ = ["build_tiny_processor", "tiny_config_for", "speech_generation_model_class"]
