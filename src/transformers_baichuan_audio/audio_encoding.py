"""Raw audio -> audio codes in one call: the feature extractor (processing) followed by the audio tokenizer
(modeling). It lives above both layers, so that neither of them imports the other."""

from __future__ import annotations

import numpy as np
import torch

from .modeling.audio_tokenizer import BaichuanAudioTokenizerModel
from .processing.feature_extraction import BaichuanAudioFeatureExtractor


def encode_audio(
    audio_tokenizer: BaichuanAudioTokenizerModel,
    audio: np.ndarray | torch.Tensor | list,
    sampling_rate: int | None,
    *,
    feature_extractor: BaichuanAudioFeatureExtractor | None = None,
    batch_invariant: bool = False,
) -> list[torch.LongTensor]:
    """Codes per clip of ``audio`` (one clip or a list of clips, see :class:`BaichuanAudioFeatureExtractor`) at
    ``sampling_rate``: ``audio_tokenizer.encode(**feature_extractor(audio))``. ``feature_extractor`` defaults to the
    one matching ``audio_tokenizer.config`` (``from_tokenizer_config``). Returns one ``(frames, num_codebooks)``
    LongTensor per clip (a clip's 30 s pieces concatenated in time order)."""
    if sampling_rate is None:
        raise ValueError("`sampling_rate` is required with `audio`")
    if feature_extractor is None:
        feature_extractor = BaichuanAudioFeatureExtractor.from_tokenizer_config(audio_tokenizer.config)
    features = feature_extractor(audio, sampling_rate=sampling_rate, return_tensors="pt")
    return audio_tokenizer.encode(
        features["input_features"],
        features["encoder_length"],
        features["bridge_length"],
        features["feature_length"],
        features["audio_pieces"],
        batch_invariant=batch_invariant,
    )


__all__ = ["encode_audio"]
