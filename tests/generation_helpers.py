"""Helpers of the generation tests: the fixture's original weights loaded into a model with the generation mixin."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from transformers_baichuan_audio.audio_encoding import encode_audio
from transformers_baichuan_audio.conversion.config import config_from_original, read_added_tokens
from transformers_baichuan_audio.conversion.llm_weights import convert_original_model_weights
from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration

GenerationModel = BaichuanAudioForConditionalGeneration  # it inherits BaichuanAudioGenerationMixin


@functools.lru_cache(maxsize=2)
def load_fixture_model(fixture_dir: str, with_code2wav: bool = False):
    """Model with the fixture's original LLM / audio embedding / head (+ code2wav) weights (fp32, eval)."""
    from transformers_baichuan_audio.parity.fixture import ReferenceFixture

    fixture = ReferenceFixture(fixture_dir)
    config = config_from_original(
        fixture.config, vocoder_config=fixture.vocoder_config, added_tokens=read_added_tokens(fixture.tokenizer_dir())
    )
    config.enable_audio_output = with_code2wav
    model = GenerationModel(config).eval()
    converted, _ = convert_original_model_weights(fixture.original_state_dict(), config)
    if with_code2wav:
        from transformers_baichuan_audio.conversion.code2wav_weights import convert_original_code2wav_weights

        code2wav, _ = convert_original_code2wav_weights(fixture.original_state_dict(), fixture.vocoder_state_dict())
        converted.update({"code2wav." + k: v for k, v in code2wav.items()})
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(("model.audio_tokenizer.", "code2wav.")) for k in missing), missing[:5]
    return model


def load_fixture_tokenizer(fixture_dir: str):
    from transformers import AutoTokenizer

    from transformers_baichuan_audio.parity.fixture import ReferenceFixture

    return AutoTokenizer.from_pretrained(str(ReferenceFixture(fixture_dir).tokenizer_dir()))


def audio_segment(audios_sequences: torch.Tensor, eos_code: int) -> torch.Tensor:
    """Frames of one row of the original ``audios_sequences`` before the first end-of-audio code in codebook 0."""
    n = int((audios_sequences[:, 0] == eos_code).long().argmax())
    return audios_sequences[:n]


@functools.lru_cache(maxsize=4)
def fixture_audio_codes(fixture_dir: str, wav_name: str) -> torch.Tensor:
    """(frames, K) codes of ``inputs/<wav_name>.wav`` from the audio tokenizer with the fixture's weights."""
    import dataclasses

    from transformers_baichuan_audio.configuration import BaichuanAudioTokenizerConfig
    from transformers_baichuan_audio.conversion.audio_tokenizer_weights import convert_original_audio_tokenizer_weights
    from transformers_baichuan_audio.modeling.audio_tokenizer import BaichuanAudioTokenizerModel
    from transformers_baichuan_audio.parity.fixture import ReferenceFixture

    fixture = ReferenceFixture(fixture_dir)
    audio = fixture.config["audio_config"]
    names = {f.name for f in dataclasses.fields(BaichuanAudioTokenizerConfig)}
    kwargs = {k: v for k, v in audio.items() if k in names}
    kwargs["codebook_sizes"] = list(audio["vq_config"]["codebook_sizes"])
    tokenizer = BaichuanAudioTokenizerModel(BaichuanAudioTokenizerConfig(**kwargs)).eval()
    tokenizer.load_state_dict(convert_original_audio_tokenizer_weights(fixture.original_state_dict())[0], strict=True)
    wave, rate = fixture.input_wav(wav_name)
    return encode_audio(tokenizer, wave, rate)[0]


@contextlib.contextmanager
def single_thread():
    """1 intra-op thread for the tiny model (the fixtures were recorded so; on a loaded 2-core machine the OpenMP
    barriers of tiny ops otherwise dominate the run time)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Module-wide :func:`single_thread` (import it into a test module to activate it)."""
    with single_thread():
        yield


@pytest.fixture(scope="module", name="model")
def model_fixture(reference_fixture):
    """The fixture model (original weights, no code2wav)."""
    return load_fixture_model(str(reference_fixture.path))
