"""Registration of the Baichuan-Audio classes with the transformers Auto classes.

``import transformers_baichuan_audio`` calls :func:`register` once; calling it again is harmless (every call uses
``exist_ok=True``). After it, ``AutoConfig``, ``AutoModel``, ``AutoModelForCausalLM`` (TRL loads through it),
``AutoModelForMultimodalLM``, ``AutoModelForAudioTokenization``, ``AutoModelForTextToWaveform`` and
``AutoProcessor`` resolve to this package's classes, with no ``trust_remote_code``.
"""

from __future__ import annotations

import transformers
from packaging.version import Version

MIN_TRANSFORMERS = "5.24.0"

_REGISTERED = False


def check_transformers_version(version: str | None = None) -> None:
    """Raise a clear error when the installed transformers is below the supported floor."""
    installed = Version(version or transformers.__version__)
    if installed < Version(MIN_TRANSFORMERS):
        raise ImportError(
            f"transformers-baichuan-audio needs transformers>={MIN_TRANSFORMERS} (the 5.24 `cache=` API); "
            f"found {installed}. Upgrade with: pip install -U 'transformers>={MIN_TRANSFORMERS}'"
        )


def register() -> None:
    """Register every config, model and processor class of the package (idempotent)."""
    global _REGISTERED
    check_transformers_version()
    from transformers import (
        AutoModel,
        AutoModelForAudioTokenization,
        AutoModelForCausalLM,
        AutoModelForMultimodalLM,
        AutoModelForTextToWaveform,
    )

    from .configuration import (
        BaichuanAudioCode2WavConfig,
        BaichuanAudioConfig,
        BaichuanAudioTokenizerConfig,
        register_configs,
    )
    from .modeling.audio_tokenizer import BaichuanAudioTokenizerModel
    from .modeling.baichuan_audio import BaichuanAudioForConditionalGeneration, BaichuanAudioModel
    from .modeling.code2wav import BaichuanAudioCode2Wav
    from .processing.processor import register_processor

    register_configs()
    AutoModel.register(BaichuanAudioConfig, BaichuanAudioModel, exist_ok=True)
    AutoModelForCausalLM.register(BaichuanAudioConfig, BaichuanAudioForConditionalGeneration, exist_ok=True)
    AutoModelForMultimodalLM.register(BaichuanAudioConfig, BaichuanAudioForConditionalGeneration, exist_ok=True)
    AutoModel.register(BaichuanAudioTokenizerConfig, BaichuanAudioTokenizerModel, exist_ok=True)
    AutoModelForAudioTokenization.register(BaichuanAudioTokenizerConfig, BaichuanAudioTokenizerModel, exist_ok=True)
    AutoModel.register(BaichuanAudioCode2WavConfig, BaichuanAudioCode2Wav, exist_ok=True)
    AutoModelForTextToWaveform.register(BaichuanAudioCode2WavConfig, BaichuanAudioCode2Wav, exist_ok=True)
    register_processor()
    _REGISTERED = True


__all__ = ["register", "check_transformers_version", "MIN_TRANSFORMERS"]
