"""The generation streamer is a transformers ``BaseStreamer``: the stock text ``generate`` streams into it too."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from demo_helpers import tiny_model_and_processor
from transformers.generation import BaseStreamer

from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.modeling.code2wav import BaichuanAudioCode2Wav
from transformers_baichuan_audio.modeling.code2wav_streaming import BaichuanAudioStreamingDecoder
from transformers_baichuan_audio.modeling.streamer import BaichuanAudioStreamer
from transformers_baichuan_audio.modeling.vocoder import NSFSourceDraws


def test_streamer_is_a_base_streamer_of_the_stock_text_generate():
    model, processor = tiny_model_and_processor()
    tok = processor.tokenizer
    streamer = BaichuanAudioStreamer(tokenizer=tok)
    assert isinstance(streamer, BaseStreamer)
    ids = torch.tensor([tok.encode("hello", add_special_tokens=False)])
    out = model.generate(ids, max_new_tokens=5, do_sample=False, streamer=streamer)
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    events = list(streamer)  # generate called end(): the iteration stops
    new = sequences[0, ids.shape[1] :].tolist()
    assert new and [t for e in events for t in e.token_ids] == new  # the prompt (first put) is not streamed
    assert all(e.kind == "text" and e.row == 0 for e in events)
    assert "".join(e.text for e in events) == tok.decode(new, skip_special_tokens=True)


# ------------------------------------------------------------------------------------------ decode priority
class _SlowChunkDecoder:
    """A stand-in streaming decoder: a push that passes a multiple of ``chunk`` frames returns a chunk after
    ``seconds`` of work (recorded as an interval), other pushes return nothing at once."""

    def __init__(self, log: list, chunk: int = 3, seconds: float = 0.25):
        self.log, self.chunk, self.seconds, self.frames = log, chunk, seconds, 0
        self.log_threads: set[int] = set()

    def push(self, codes):
        self.log_threads.add(threading.get_ident())
        before, self.frames = self.frames, self.frames + codes.shape[0]
        if self.frames // self.chunk == before // self.chunk:
            return torch.zeros(0)
        start = time.perf_counter()
        time.sleep(self.seconds)
        self.log.append((start, time.perf_counter()))
        return torch.ones(10)

    def finish(self):
        return torch.zeros(0)


class _StubCode2Wav:
    device = torch.device("cpu")

    def __init__(self):
        self.intervals: list[tuple[float, float]] = []
        self.threads: set[int] = set()

    def streaming_decoder(self, **kwargs):
        decoder = _SlowChunkDecoder(self.intervals)
        decoder.log_threads = self.threads
        return decoder


def _frames_during_decodes(priority: str, frames: int = 9) -> tuple[list[int], int, str]:
    """Frames the producer emitted (``put_audio`` returned) inside each chunk decode, the waveform samples, and
    which thread decoded (``"producer"`` / ``"consumer"``)."""
    code2wav = _StubCode2Wav()
    streamer = BaichuanAudioStreamer(code2wav=code2wav, decode_priority=priority)
    returns: list[float] = []

    def produce():
        for _ in range(frames):
            streamer.put_audio(0, torch.zeros(1, 8, dtype=torch.long))
            returns.append(time.perf_counter())
            time.sleep(0.01)  # the next frame's computation
        streamer.end_segment(0)
        streamer.end()

    thread = threading.Thread(target=produce)
    thread.start()
    samples = sum(int(e.waveform.numel()) for e in streamer if e.kind == "audio" and e.waveform is not None)
    thread.join()
    inside = [sum(start < t < end for t in returns) for start, end in code2wav.intervals]
    decoded_by = {thread.ident: "producer", threading.get_ident(): "consumer"}
    (decoder_thread,) = code2wav.threads
    return inside, samples, decoded_by[decoder_thread]


def test_decode_priority_decides_whether_generation_waits_for_the_decoder():
    # 9 frames, a 0.25 s chunk decode every 3 frames, a producer that needs 10 ms per frame: left alone it emits
    # ~20 frames per decode (all the rest); waiting, at most the one frame already under way (see the docstring).
    # Left alone, the consumer falls behind and catches up: the frames queued during the first decode are pushed
    # together, one decoder pass and one chunk for them.
    overlap, samples, decoded_by = _frames_during_decodes("overlap")
    assert overlap[0] >= 3 and samples == 20 and len(overlap) == 2 and decoded_by == "consumer"
    first, samples, decoded_by = _frames_during_decodes("first_chunk")
    assert first[0] <= 1 and sum(first[1:]) >= 2 and samples == 30 and decoded_by == "consumer"
    always, samples, decoded_by = _frames_during_decodes("always")
    assert max(always) <= 1 and samples == 30 and decoded_by == "consumer"
    # inline: the producer decodes inside put_audio, so no frame is emitted during a decode
    inline, samples, decoded_by = _frames_during_decodes("inline")
    assert len(inline) == 3 and max(inline) == 0 and samples == 30 and decoded_by == "producer"


def test_unknown_decode_priority_is_refused():
    with pytest.raises(ValueError, match="decode_priority"):
        BaichuanAudioStreamer(decode_priority="sometimes")


def test_a_consumer_that_fell_behind_catches_up_in_one_decoder_pass(monkeypatch):
    """``decode_priority="overlap"``: when the consumer comes to a row's audio events after generation has queued
    them all (it fell behind), the phrase's frames go into its decoder in one push (one U-Net pass over the chunks
    they complete), the first event carrying the samples and the later ones none; the phrase's waveform is the one
    of decoding frame by frame in the producer (``"inline"``): the same mel, other vocoder windows (roundoff; the
    tolerance of tests/test_code2wav_streaming.py's schedule test)."""
    torch.manual_seed(0)
    code2wav = BaichuanAudioCode2Wav(BaichuanAudioConfig.tiny().code2wav_config).eval()
    g = torch.Generator().manual_seed(0)
    frames = 80  # 3 complete U-Net chunks and a short last one
    codes = torch.stack([torch.randint(0, s, (frames,), generator=g) for s in code2wav.config.codebook_sizes], 1)
    noise = torch.randn(1, code2wav.config.flow_matching_config.in_channels, 4 * frames, generator=g)
    samples = (4 * frames - 1) * code2wav.config.vocoder_config.hop_length
    draws = NSFSourceDraws.sample(1, code2wav.vocoder.m_source.num_harmonics, samples, g)
    passes = []
    chunk_mel = BaichuanAudioStreamingDecoder._chunk_mel

    def counting(self, start, stop, continues, cache):
        passes.append((start, stop))
        return chunk_mel(self, start, stop, continues, cache)

    def run(priority):
        kwargs = {"noise": noise, "draws": draws, "num_steps": 2}
        streamer = BaichuanAudioStreamer(code2wav=code2wav, decoder_kwargs=kwargs, decode_priority=priority)
        passes.clear()
        for i in range(frames):  # all queued before the consumer starts (inline: decoded here, frame by frame)
            streamer.put_audio(0, codes[i : i + 1])
        streamer.end_segment(0)
        streamer.end()
        waves = [e.waveform for e in streamer if e.kind == "audio"]
        return waves, list(passes)

    monkeypatch.setattr(BaichuanAudioStreamingDecoder, "_chunk_mel", counting)
    inline, inline_passes = run("inline")
    caught_up, caught_up_passes = run("overlap")
    assert len(inline_passes) == 4 and len(caught_up_passes) == 2  # 3 chunks in one pass, then the end at finish
    assert [w.numel() > 0 for w in caught_up] == [True] + [False] * (frames - 1) + [True]
    assert all(w is not None for w in inline + caught_up)
    assert torch.cat(caught_up).numel() == torch.cat(inline).numel() == samples
    assert (torch.cat(caught_up) - torch.cat(inline)).abs().max() <= 1e-5
