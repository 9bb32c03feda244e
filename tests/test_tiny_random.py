"""The offline tiny-random pieces (``tiny_random.py``): the byte-level tokenizer with special tokens at chosen ids,
and the readable-text restriction of the LM head (independent expectations: byte values, the ids asked for, a count
of rows)."""

from __future__ import annotations

import pytest
import torch

from transformers_baichuan_audio.tiny_random import build_tiny_random, restrict_text_head, tiny_tokenizer


def test_special_tokens_sit_at_the_ids_asked_for():
    ids = {"<|endoftext|>": 300, "<audiogen_start_baichuan>": 290, "<audio_pad_baichuan>": 257}
    tokenizer = tiny_tokenizer(ids)
    for token, i in ids.items():
        assert tokenizer.convert_tokens_to_ids(token) == i
    assert tokenizer.eos_token_id == 300
    assert tokenizer.convert_ids_to_tokens(256) == "<|reserved_256|>"  # the gap is filled with placeholders
    assert len(tokenizer) == 301
    text = "Hi! é"
    encoded = tokenizer("<audio_pad_baichuan>" + text, add_special_tokens=False)["input_ids"]
    assert encoded[0] == 257 and len(encoded) == 1 + len(text.encode("utf-8"))  # one token per byte
    assert tokenizer.decode(encoded[1:]) == text


@pytest.mark.parametrize("ids", [{"<|endoftext|>": 12}, {"<|endoftext|>": 300, "<audio_pad_baichuan>": 300}])
def test_special_ids_that_collide_are_refused(ids):
    with pytest.raises(ValueError, match="special_ids"):
        tiny_tokenizer(ids)


def test_restricted_text_head_keeps_readable_bytes_and_the_given_ids():
    model, processor = build_tiny_random()
    tokenizer = processor.tokenizer
    kept = (model.lm_head.weight.abs().sum(-1) > 0).nonzero().flatten().tolist()
    # 94 printable ASCII characters, the byte-level space, end-of-text and <audiogen_start>.
    assert len(kept) == 94 + 1 + 2
    assert tokenizer.eos_token_id in kept and processor.audiogen_start_token_id in kept
    assert tokenizer.decode([i for i in kept if i < 256]).strip().isascii()

    torch.manual_seed(0)
    model.lm_head.weight.data.normal_()
    restrict_text_head(model, tokenizer)
    kept = (model.lm_head.weight.abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert len(kept) == 95 and tokenizer.eos_token_id not in kept
