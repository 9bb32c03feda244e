"""After `import transformers_baichuan_audio`, the transformers Auto classes resolve to the package's classes."""

from __future__ import annotations

import pytest
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForAudioTokenization,
    AutoModelForCausalLM,
    AutoModelForMultimodalLM,
    AutoModelForTextToWaveform,
)

import transformers_baichuan_audio as tba
from transformers_baichuan_audio.registration import check_transformers_version


@pytest.fixture(scope="module")
def tiny_config():
    return tba.BaichuanAudioConfig.tiny()


def test_auto_config_for_model():
    assert type(AutoConfig.for_model("baichuan_audio")) is tba.BaichuanAudioConfig


def test_auto_models_resolve(tiny_config):
    assert type(AutoModelForCausalLM.from_config(tiny_config)) is tba.BaichuanAudioForConditionalGeneration
    assert type(AutoModelForMultimodalLM.from_config(tiny_config)) is tba.BaichuanAudioForConditionalGeneration
    assert type(AutoModel.from_config(tiny_config)) is tba.BaichuanAudioModel
    tok_cfg = tiny_config.audio_tokenizer_config
    assert type(AutoModelForAudioTokenization.from_config(tok_cfg)) is tba.BaichuanAudioTokenizerModel
    c2w_cfg = tiny_config.code2wav_config
    assert type(AutoModelForTextToWaveform.from_config(c2w_cfg)) is tba.BaichuanAudioCode2Wav


def test_register_is_idempotent(tiny_config):
    tba.register()
    tba.register()
    assert type(AutoModelForCausalLM.from_config(tiny_config)) is tba.BaichuanAudioForConditionalGeneration


def test_version_floor_is_enforced():
    with pytest.raises(ImportError, match="transformers>=5.24"):
        check_transformers_version("5.23.0")
    check_transformers_version("5.24.0")
