"""Helpers shared by the code2wav test files: the fixture model loaded through the weight conversion, and a
single-thread autouse fixture (small convolutions on a shared 2-core machine spin-wait in OpenMP barriers when a
neighbour is busy: measured 15x slower with 2 threads; the fixture was recorded with 1 thread)."""

from __future__ import annotations

import pytest
import torch

from transformers_baichuan_audio.conversion.code2wav_weights import convert_original_code2wav_weights
from transformers_baichuan_audio.conversion.config import config_from_original
from transformers_baichuan_audio.modeling.code2wav import BaichuanAudioCode2Wav


@pytest.fixture(scope="module", autouse=True)
def code2wav_one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def load_fixture_code2wav(reference_fixture, original_state_dict):
    """(model with the ORIGINAL weights converted by ``convert_original_code2wav_weights``, (state, consumed))."""
    config = config_from_original(reference_fixture.config, vocoder_config=reference_fixture.vocoder_config)
    converted = convert_original_code2wav_weights(original_state_dict, reference_fixture.vocoder_state_dict())
    model = BaichuanAudioCode2Wav(config.code2wav_config).eval()
    model.load_state_dict(converted[0], strict=True)
    return model, converted
