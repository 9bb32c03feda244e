"""A small randomly initialised Baichuan-Audio model and its processor, built offline in memory (``--model tiny-random``).

Everything the real model has is there (audio tokenizer, LLM, audio head, code2wav with the vocoder, the Baichuan
special tokens, the chat template), at toy sizes: the demo, the command line and the tests run in seconds without a
download. The weights are random, so the text and the speech it produces are NOISE.

The tokenizer is byte-level with one token per byte (no merges), plus ``<|endoftext|>`` and the Baichuan tokens, so
any text can be encoded. The random text head is restricted to printable ASCII, end-of-text and
``<audiogen_start_baichuan>`` (the other tokens get zero output weights, hence logit 0, and lose against the random
positive logits), so the noise it prints is at least readable.
"""

from __future__ import annotations

import torch

TINY_RANDOM = "tiny-random"
NOISE_NOTICE = "NOTE: 'tiny-random' is a small RANDOMLY initialised model: its text and speech are noise."

#: Generation caps that keep a tiny-random answer short (two phrases of about 2 s of speech each; text-only answers of 24 tokens).
TINY_GENERATION_KWARGS = {
    "text_segment_max_new_tokens": 8,
    "audio_max_frames": 27,
    "max_rounds": 2,
    "max_new_tokens": 24,
}


def tiny_tokenizer():
    """In-memory byte-level ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` (eos and pad) and the Baichuan tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from .processing.processor import SPECIAL_TOKENS

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", *SPECIAL_TOKENS.values(), "<B_USYS>", "<inner_think>"]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_random_processor():
    """:class:`BaichuanAudioProcessor` with the default feature extractor and :func:`tiny_tokenizer`."""
    from .processing.feature_extraction import BaichuanAudioFeatureExtractor
    from .processing.processor import BaichuanAudioProcessor

    return BaichuanAudioProcessor(BaichuanAudioFeatureExtractor(), tiny_tokenizer())


def tiny_random_config(processor):
    """``BaichuanAudioConfig.tiny`` with the vocabulary and every special-token id taken from ``processor``."""
    from .configuration import TOKEN_ID_FIELDS, BaichuanAudioConfig

    tok = processor.tokenizer
    ids = processor.special_token_ids
    overrides = {name: ids[name] for name in TOKEN_ID_FIELDS}
    overrides.update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = BaichuanAudioConfig.tiny(**overrides)
    text = config.text_config
    text.vocab_size = len(tok)
    text.eos_token_id = tok.eos_token_id
    text.pad_token_id = tok.pad_token_id
    return config


def _model_class():
    from .modeling.baichuan_audio import BaichuanAudioForConditionalGeneration

    return BaichuanAudioForConditionalGeneration


def build_tiny_random(seed: int = 0, dtype: torch.dtype = torch.float32):
    """``(model, processor)``: the tiny random model (eval mode, fp32, CPU) and its processor; deterministic in ``seed``.

    The output is noise (random weights); use it to try the demo and the command line offline.
    """
    processor = tiny_random_processor()
    config = tiny_random_config(processor)
    previous = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = _model_class()(config).to(dtype).eval()
    finally:
        torch.random.set_rng_state(previous)
    readable = {processor.tokenizer.convert_tokens_to_ids(c) for c in map(chr, range(0x21, 0x7F))}
    readable.add(processor.tokenizer.convert_tokens_to_ids("\u0120"))  # byte-level space
    specials = {processor.tokenizer.eos_token_id, processor.audiogen_start_token_id}  # ends text / starts speech
    with torch.no_grad():
        for i in range(config.text_config.vocab_size):
            if i not in readable and i not in specials:
                model.lm_head.weight[i].zero_()
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


__all__ = [
    "TINY_RANDOM",
    "NOISE_NOTICE",
    "TINY_GENERATION_KWARGS",
    "tiny_tokenizer",
    "tiny_random_processor",
    "tiny_random_config",
    "build_tiny_random",
]
