"""The streaming decoder's state pool: a finished phrase's attention buffers are reused by the turn's next phrase.

Checked against independent expectations: which buffers a stream holds (their storage addresses, read from the
carried state itself) against what the pool handed out and took back; the samples of a stream on reused
(dirty) buffers against a stream of the same phrase on fresh ones (the same operations on the same values in the
same layout, so bit-identical: a stale value read anywhere would show); two live streams on one pool never hold
the same buffer. Both the default (every earlier chunk) and the bounded-context ring state are covered.
"""

from __future__ import annotations

import pytest
import torch
from code2wav_helpers import code2wav_one_thread  # noqa: F401  (autouse fixture)

from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.modeling.code2wav import BaichuanAudioCode2Wav
from transformers_baichuan_audio.modeling.streamer import BaichuanAudioStreamer
from transformers_baichuan_audio.modeling.streaming_state import StreamingCache, StreamingStatePool
from transformers_baichuan_audio.modeling.vocoder import NSFSourceDraws

STEPS = 2


@pytest.fixture(scope="module")
def tiny_model() -> BaichuanAudioCode2Wav:
    torch.manual_seed(0)
    return BaichuanAudioCode2Wav(BaichuanAudioConfig.tiny().code2wav_config).eval()


@pytest.fixture(params=[-1, 1], ids=["all-left-chunks", "ring-of-2"])
def left(request, tiny_model):
    fm = tiny_model.config.flow_matching_config
    fm.num_decoding_left_chunks = request.param
    yield request.param
    fm.num_decoding_left_chunks = -1


def _phrase(model, frames: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, s, (frames,), generator=g) for s in model.config.codebook_sizes], 1)
    noise = torch.randn(1, model.config.flow_matching_config.in_channels, 4 * frames, generator=g)
    samples = (4 * frames - 1) * model.config.vocoder_config.hop_length
    draws = NSFSourceDraws.sample(1, model.vocoder.m_source.num_harmonics, samples, g)
    return codes, noise, draws


def _held(stream) -> set[int]:
    """Storage addresses of the attention buffers the stream's carried state holds now."""
    return {
        t.untyped_storage().data_ptr()
        for value in stream.cache.past.values()
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple)
        for t in value[0]
    }


def _decoder(model, phrase, pool):
    _, noise, draws = phrase
    return model.streaming_decoder(noise=noise, draws=draws, num_steps=STEPS, state_pool=pool)


def _stream(model, phrase, pool=None) -> tuple[torch.Tensor, set[int]]:
    codes = phrase[0]
    stream = _decoder(model, phrase, pool)
    chunks = [stream.push(codes[i : i + 1]) for i in range(codes.shape[0])]
    held = _held(stream)
    return torch.cat([*chunks, stream.finish()]), held


def test_a_finished_streams_buffers_serve_the_next_phrase(tiny_model, left):
    pool = StreamingStatePool()
    first, second = _phrase(tiny_model, 76, seed=1), _phrase(tiny_model, 60, seed=2)
    _, held_first = _stream(tiny_model, first, pool)
    given_back = pool.num_buffers
    assert held_first and given_back >= len(held_first)  # all given back at finish (with those of finish's branch)
    warm, held_second = _stream(tiny_model, second, pool)
    assert held_second and held_second <= held_first  # the second phrase wrote to the first one's buffers only
    cold, held_cold = _stream(tiny_model, second)
    assert held_cold.isdisjoint(held_first)
    assert torch.equal(warm, cold)  # the first phrase's values left in the buffers are never read
    assert pool.num_buffers == given_back  # taken and given back again, none lost, none added
    pool.clear()
    assert pool.num_buffers == 0 and pool.nbytes == 0


def test_live_streams_on_one_pool_hold_different_buffers(tiny_model, left):
    pool = StreamingStatePool()
    _stream(tiny_model, _phrase(tiny_model, 60, seed=3), pool)  # fill the pool
    phrases = [_phrase(tiny_model, 60, seed=4), _phrase(tiny_model, 55, seed=5)]
    streams = [_decoder(tiny_model, p, pool) for p in phrases]
    chunks: list[list[torch.Tensor]] = [[], []]
    for i in range(60):  # interleaved, as two batch rows are decoded
        for row, (stream, phrase) in enumerate(zip(streams, phrases, strict=True)):
            if i < phrase[0].shape[0]:
                chunks[row].append(stream.push(phrase[0][i : i + 1]))
    held = [_held(s) for s in streams]
    assert held[0] and held[1] and held[0].isdisjoint(held[1])
    for row, (stream, phrase) in enumerate(zip(streams, phrases, strict=True)):
        wave = torch.cat([*chunks[row], stream.finish()])
        assert torch.equal(wave, _stream(tiny_model, phrase)[0])


def test_finish_gives_the_state_back_when_it_raises(tiny_model):
    pool = StreamingStatePool()
    stream = tiny_model.streaming_decoder(num_steps=STEPS, state_pool=pool)
    codes = _phrase(tiny_model, 52, seed=6)[0]
    for i in range(52):
        stream.push(codes[i : i + 1])  # two chunks: the second one takes the state buffers from the pool
    assert _held(stream) and pool.num_buffers == 0
    stream.frames.clear()  # as if no frame had been pushed: finish raises
    with pytest.raises(ValueError, match="no code frames"):
        stream.finish()
    assert pool.num_buffers > 0  # given back anyway
    with pytest.raises(TypeError, match="state_pool"):
        tiny_model.streaming_decoder(state_pool={})


def test_streamer_reuses_state_across_a_turns_phrases(tiny_model):
    """One pool per streamer: the second phrase of a row takes the first phrase's buffers, the samples are those
    of a streamer without a pool, and the pool is emptied when the consumer reaches the end."""
    phrases = [_phrase(tiny_model, 60, seed=7)[0], _phrase(tiny_model, 60, seed=8)[0]]  # 2 chunks before finish
    results = {}
    for pooled in (True, False):
        kwargs = {"generator": torch.Generator().manual_seed(0), "num_steps": STEPS}
        if not pooled:
            kwargs["state_pool"] = None
        streamer = BaichuanAudioStreamer(code2wav=tiny_model, decoder_kwargs=kwargs, decode_priority="inline")
        held, pool_sizes = [], []
        for codes in phrases:
            for i in range(codes.shape[0]):
                streamer.put_audio(0, codes[i : i + 1])
            held.append(_held(streamer._decoders[0]))
            streamer.end_segment(0)
            pool_sizes.append(streamer.state_pool.num_buffers if pooled else 0)
        streamer.end()
        waves = [e.waveform for e in streamer if e.kind == "audio" and e.waveform is not None]
        results[pooled] = torch.cat(waves)
        if pooled:
            assert held[1] <= held[0] and pool_sizes[0] > 0 and pool_sizes[1] == pool_sizes[0]
            assert streamer.state_pool.num_buffers == 0  # cleared at the end of the turn
    assert torch.equal(results[True], results[False])


def test_chat_decode_answer_shares_one_pool_per_answer(monkeypatch):
    """``SpeechChat.decode_answer`` (the non-streamed turn) gives its phrases' decoders one pool: the second
    phrase writes to the first one's buffers; each call has its own pool (nothing kept between turns)."""
    from demo_helpers import GREEDY, tiny_model_and_processor

    from transformers_baichuan_audio.chat import SpeechChat

    chat = SpeechChat(*tiny_model_and_processor(), GREEDY)
    done = chat.answer([chat.user_message(text="hello")])
    assert sum(1 for c in done.codes if c.shape[0]) == 2  # the tiny model's greedy answer: two phrases
    code2wav, made, released = chat.model.code2wav, [], []
    make = code2wav.streaming_decoder

    def spy(**kwargs):
        made.append(kwargs["state_pool"])
        return make(**kwargs)

    def recording_release(cache, release=StreamingCache.release):
        released.append({t.untyped_storage().data_ptr() for t in cache.allocated})
        release(cache)

    monkeypatch.setattr(code2wav, "streaming_decoder", spy)
    monkeypatch.setattr(StreamingCache, "release", recording_release)
    first = chat.decode_answer(done.codes)
    second = chat.decode_answer(done.codes)
    assert torch.equal(first, second)
    assert made[0] is made[1] and made[2] is made[3] and made[0] is not made[2]
    # the buffers each phrase took from its pool (given back at finish): the second phrase's are the first one's
    assert released[0] and released[1] and released[1] <= released[0]
    assert released[2].isdisjoint(released[0])  # the next answer's pool starts empty


def test_chat_kept_pool_serves_every_turn(monkeypatch):
    """``SpeechChat(state_pool=pool)`` (``--keep-stream-state``): the streamed turns' decoders take their buffers
    from that pool, which keeps them between turns (a per-turn pool is emptied at the turn's end), so the second
    turn writes only to buffers the first one had; its audio equals that of a chat without a kept pool."""
    from demo_helpers import GREEDY, tiny_model_and_processor

    from transformers_baichuan_audio.chat import SpeechChat

    model, processor = tiny_model_and_processor()
    taken: list[set[int]] = []

    def recording_release(cache, release=StreamingCache.release):
        taken.append({t.untyped_storage().data_ptr() for t in cache.allocated})
        release(cache)

    monkeypatch.setattr(StreamingCache, "release", recording_release)

    def turn_audio(chat) -> torch.Tensor:
        events = list(chat.stream_turn([chat.user_message(text="hello")]))
        return torch.cat([e.audio for e in events if e.kind == "audio"])

    pool = StreamingStatePool()
    kept = SpeechChat(model, processor, GREEDY, state_pool=pool)
    first = turn_audio(kept)
    first_taken, held = set().union(*taken), pool.num_buffers
    assert first_taken and held > 0  # the first turn's buffers stay in the pool
    taken.clear()
    second = turn_audio(kept)
    assert set().union(*taken) <= first_taken and pool.num_buffers == held  # nothing new allocated
    taken.clear()
    fresh = turn_audio(SpeechChat(model, processor, GREEDY))
    assert set().union(*taken).isdisjoint(first_taken)  # a per-turn pool: its own buffers
    assert torch.equal(first, fresh) and torch.equal(second, fresh)
    with pytest.raises(TypeError, match="state_pool must be a StreamingStatePool"):
        SpeechChat(model, processor, GREEDY, state_pool={})


def test_cli_keep_stream_state(monkeypatch):
    """``--keep-stream-state`` gives the front ends' chat one pool for all turns; without it, none (per turn)."""
    from demo_helpers import tiny_model_and_processor

    from transformers_baichuan_audio import chat as chat_module
    from transformers_baichuan_audio import cli, loading

    monkeypatch.setattr(loading, "load_model_and_processor", lambda *a, **k: tiny_model_and_processor())
    parser = cli.build_parser()
    base = ["chat", "--model", "tiny-random", "--text", "hello"]
    assert isinstance(
        chat_module.speech_chat_from_args(parser.parse_args([*base, "--keep-stream-state"])).state_pool,
        StreamingStatePool,
    )
    assert chat_module.speech_chat_from_args(parser.parse_args(base)).state_pool is None


def test_close_gives_an_abandoned_phrase_state_back(tiny_model, left):
    """``close()`` (a phrase cut off): the buffers the stream holds go back to the pool, nothing more is decoded
    (``finish`` returns no sample), and a later ``push`` raises."""
    phrase = _phrase(tiny_model, 60, seed=3)
    pool = StreamingStatePool()
    stream = _decoder(tiny_model, phrase, pool)
    for i in range(30):  # past the first chunk: attention state is held
        stream.push(phrase[0][i : i + 1])
    held = _held(stream)
    assert held and pool.num_buffers == 0
    stream.close()
    assert pool.num_buffers >= len(held)
    assert stream.finish().numel() == 0
    with pytest.raises(RuntimeError, match="finished"):
        stream.push(phrase[0][:1])
    again = _decoder(tiny_model, phrase, pool)  # the next phrase writes to the abandoned one's buffers
    for i in range(30):
        again.push(phrase[0][i : i + 1])
    assert _held(again) <= held


def test_stopped_turn_gives_its_state_back_to_a_kept_pool():
    """A turn left at its first audio chunk (the listener stopped it) closes its cut-off phrase: the buffers it
    took are back in the chat's kept pool for the next turn."""
    from demo_helpers import GREEDY, tiny_model_and_processor

    from transformers_baichuan_audio.chat import SpeechChat

    pool = StreamingStatePool()
    chat = SpeechChat(*tiny_model_and_processor(), GREEDY, state_pool=pool)
    for event in chat.stream_turn([chat.user_message(text="hello")]):
        if event.kind == "audio":
            break  # generator closed: the turn is stopped mid-phrase
    assert pool.num_buffers > 0
