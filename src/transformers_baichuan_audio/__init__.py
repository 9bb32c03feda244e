"""Baichuan-Audio (speech in, text and speech out) for Hugging Face Transformers 5.

``import transformers_baichuan_audio`` registers the configs, models and processor with the transformers Auto
classes, so ``AutoConfig`` / ``AutoModelForCausalLM`` / ``AutoModelForMultimodalLM`` / ``AutoProcessor`` load
Baichuan-Audio checkpoints without ``trust_remote_code``. Checkpoints in the ORIGINAL released layout
(``model_type: "omni"``) load through :func:`load_original_model` (converted in memory) or are converted once with
``baichuan-audio convert``.
"""

from .registration import check_transformers_version, register

__version__ = "0.1.0.dev0"

check_transformers_version()
register()

from .configuration import (  # noqa: E402
    BaichuanAudioCode2WavConfig,
    BaichuanAudioConfig,
    BaichuanAudioHeadConfig,
    BaichuanAudioTokenizerConfig,
    BaichuanAudioVocoderConfig,
)
from .conversion.convert import load_original_model  # noqa: E402
from .modeling.audio_tokenizer import BaichuanAudioTokenizerModel  # noqa: E402
from .modeling.baichuan_audio import (  # noqa: E402
    BaichuanAudioForConditionalGeneration,
    BaichuanAudioModel,
    BaichuanAudioPreTrainedModel,
)
from .modeling.code2wav import BaichuanAudioCode2Wav  # noqa: E402
from .processing.feature_extraction import BaichuanAudioFeatureExtractor  # noqa: E402
from .processing.processor import BaichuanAudioProcessor  # noqa: E402

__all__ = [
    "BaichuanAudioCode2Wav",
    "BaichuanAudioCode2WavConfig",
    "BaichuanAudioConfig",
    "BaichuanAudioFeatureExtractor",
    "BaichuanAudioForConditionalGeneration",
    "BaichuanAudioHeadConfig",
    "BaichuanAudioModel",
    "BaichuanAudioPreTrainedModel",
    "BaichuanAudioProcessor",
    "BaichuanAudioTokenizerConfig",
    "BaichuanAudioTokenizerModel",
    "BaichuanAudioVocoderConfig",
    "load_original_model",
    "register",
    "__version__",
]
