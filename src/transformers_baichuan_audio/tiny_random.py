"""A small randomly initialised Baichuan-Audio model and its processor, built offline in memory (``--model tiny-random``).

Everything the real model has is there (audio tokenizer, LLM, audio head, code2wav with the vocoder, the Baichuan
special tokens, the chat template), at toy sizes: the demo, the command line and the tests run in seconds without a
download. The weights are random, so the text and the speech it produces are NOISE.

The tokenizer is byte-level with one token per byte (no merges), plus ``<|endoftext|>`` and the Baichuan tokens, so
any text can be encoded. The random text head is restricted to printable ASCII, end-of-text and
``<audiogen_start_baichuan>`` (the other tokens get zero output weights, hence logit 0, and lose against the random
positive logits), so the noise it prints is at least readable.

``build_tiny_random(training=True)`` is the training-sized variant (:func:`tiny_training_config`: small codebooks, fast
to memorise, no code2wav) used by the training recipes, the collator tests, the example scripts and the
multi-process runs (``--model tiny-random`` in the examples).
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


#: codebook sizes of the training-sized tiny model (8 codebooks, small tables).
TINY_TRAINING_CODEBOOK_SIZES = [16, 8, 8, 8, 8, 8, 8, 8]


def tiny_training_config(processor, hidden_size: int = 64, num_layers: int = 2, **overrides):
    """``BaichuanAudioConfig.tiny()`` shrunk to the processor's vocabulary, with its special-token ids, small
    codebooks (:data:`TINY_TRAINING_CODEBOOK_SIZES`) and no code2wav (training does not need waveforms)."""
    from .configuration import BaichuanAudioConfig

    tok = processor.tokenizer
    ids = dict(processor.special_token_ids)
    base = BaichuanAudioConfig.tiny()
    text = base.text_config.to_dict()
    text.update(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        max_window_layers=num_layers,
    )
    audio_tok = base.audio_tokenizer_config.to_dict()
    audio_tok["codebook_sizes"] = list(TINY_TRAINING_CODEBOOK_SIZES)
    code2wav = base.code2wav_config.to_dict()
    code2wav["codebook_sizes"] = list(TINY_TRAINING_CODEBOOK_SIZES)
    kwargs = dict(
        text_config=text,
        audio_tokenizer_config=audio_tok,
        audio_head_config={"num_attention_heads": 2, "intermediate_size": 2 * hidden_size},
        code2wav_config=code2wav,
        enable_audio_output=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **ids,
    )
    kwargs.update(overrides)
    return BaichuanAudioConfig(**kwargs)


def build_tiny_random(seed: int = 0, dtype: torch.dtype = torch.float32, *, training: bool = False):
    """``(model, processor)``: the tiny random model and its processor (fp32, CPU); deterministic in ``seed``.

    ``training=False`` (the demo and the command line): :func:`tiny_random_config`, with code2wav and the vocoder, the
    text head restricted to readable bytes, in eval mode. ``training=True``: :func:`tiny_training_config` with
    ``initializer_range=0.1`` (no code2wav, small codebooks), in train mode, every output row trainable. The output
    is noise (random weights); use it to try the demo, the command line and the training scripts offline.
    """
    from .modeling.baichuan_audio import BaichuanAudioForConditionalGeneration

    processor = tiny_random_processor()
    if training:
        config = tiny_training_config(processor, initializer_range=0.1)
    else:
        config = tiny_random_config(processor)
    previous = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = BaichuanAudioForConditionalGeneration(config).to(dtype)
    finally:
        torch.random.set_rng_state(previous)
    if training:
        return model, processor
    model.eval()
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
    "TINY_TRAINING_CODEBOOK_SIZES",
    "tiny_training_config",
    "build_tiny_random",
]
