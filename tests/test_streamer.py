"""The generation streamer is a transformers ``BaseStreamer``: the stock text ``generate`` streams into it too."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from demo_helpers import tiny_model_and_processor
from transformers.generation import BaseStreamer

from transformers_baichuan_audio.modeling.streamer import BaichuanAudioStreamer


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
    """A stand-in streaming decoder: every ``chunk``-th frame returns a chunk after ``seconds`` of work (recorded as
    an interval), other pushes return nothing at once."""

    def __init__(self, log: list, chunk: int = 3, seconds: float = 0.25):
        self.log, self.chunk, self.seconds, self.frames = log, chunk, seconds, 0
        self.log_threads: set[int] = set()

    def push(self, codes):
        self.log_threads.add(threading.get_ident())
        self.frames += codes.shape[0]
        if self.frames % self.chunk:
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
    overlap, samples, decoded_by = _frames_during_decodes("overlap")
    assert overlap[0] >= 3 and samples == 30 and decoded_by == "consumer"
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
