"""The pure audio-code helpers (``audio_codes``) and decoding codes to waveforms (the model's job)."""

from __future__ import annotations

import pytest
import torch

from transformers_baichuan_audio.audio_codes import cut_at_end_of_audio
from transformers_baichuan_audio.modeling.generation import decode_audio_codes


class FakeCode2Wav:
    config = type("C", (), {"codebook_sizes": [8, 4]})()

    def __init__(self):
        self.calls = []

    def decode(self, audio_codes, **kwargs):
        self.calls.append(([tuple(c.shape) for c in audio_codes], kwargs))
        return type("Out", (), {"audio_values": [torch.ones(c.shape[0] * 1920) for c in audio_codes]})()


def test_cut_at_end_of_audio():
    codes = [[1, 2], [7, 3], [8, 1], [1, 1]]  # frame 2: end-of-audio code in codebook 0
    assert cut_at_end_of_audio(codes, [8, 4]).tolist() == [[1, 2], [7, 3]]
    assert cut_at_end_of_audio([[1, 4]], [8, 4]).shape == (0, 2)  # end-of-audio in codebook 1, first frame
    assert cut_at_end_of_audio(codes, None).tolist() == codes
    assert cut_at_end_of_audio(torch.tensor(codes, dtype=torch.int32), [9, 4]).dtype == torch.long


def test_decode_audio_codes_is_a_thin_code2wav_call():
    code2wav = FakeCode2Wav()
    with_eos = torch.tensor([[1, 2], [7, 3], [8, 1], [8, 4]])
    waves = decode_audio_codes(code2wav, [with_eos, torch.zeros(2, 2)], num_steps=3)
    assert [tuple(w.shape) for w in waves] == [(3840,), (3840,)]
    assert code2wav.calls == [([(2, 2), (2, 2)], {"num_steps": 3})]
    assert len(decode_audio_codes(code2wav, torch.zeros(3, 2))) == 1  # one segment given as an array


def test_model_decode_audio_uses_its_code2wav():
    from transformers_baichuan_audio.modeling.generation import BaichuanAudioGenerationMixin

    model = BaichuanAudioGenerationMixin()
    model.code2wav = FakeCode2Wav()
    assert [w.shape[0] for w in model.decode_audio([torch.tensor([[1, 1], [2, 2], [3, 4]])])] == [3840]
    model.code2wav = None
    with pytest.raises(ValueError, match="no code2wav"):
        model.decode_audio(torch.zeros(1, 2))
