"""The generation streamer is a transformers ``BaseStreamer``: the stock text ``generate`` streams into it too."""

from __future__ import annotations

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
