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


def tiny_tokenizer(special_ids: dict[str, int] | None = None):
    """In-memory byte-level ``PreTrainedTokenizerFast`` (one token per byte, no merges) with ``<|endoftext|>`` (eos
    and pad) and the Baichuan tokens.

    Args:
        special_ids: ``{token: id}`` to place the special tokens at given ids (e.g. the released vocabulary's, for a
            model config that keeps them); the ids between the 256 byte tokens and the largest one become reserved
            placeholders ``<|reserved_<id>|>``. Default: ``<|endoftext|>``, the Baichuan tokens, ``<B_USYS>`` and
            ``<inner_think>`` right after the bytes.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from .processing.processor import SPECIAL_TOKENS

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    if special_ids is None:
        specials = ["<|endoftext|>", *SPECIAL_TOKENS.values(), "<B_USYS>", "<inner_think>"]
    else:
        if min(special_ids.values()) < len(vocab) or len(set(special_ids.values())) != len(special_ids):
            raise ValueError(f"special_ids must be distinct ids from {len(vocab)} on (after the byte tokens)")
        by_id = {i: token for token, i in special_ids.items()}
        vocab.update({by_id.get(i, f"<|reserved_{i}|>"): i for i in range(len(vocab), max(by_id) + 1)})
        specials = list(special_ids)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def restrict_text_head(model, tokenizer, keep_ids=()) -> None:
    """Zero the LM-head rows of every token but printable ASCII, the byte-level space and ``keep_ids``: those rows
    give logit 0 and lose against the random positive logits, so random weights write readable text (and a text
    phase ends only through a kept special token). The cost of the head is unchanged."""
    keep = torch.zeros(model.lm_head.weight.shape[0], dtype=torch.bool)
    readable = [tokenizer.convert_tokens_to_ids(c) for c in [*map(chr, range(0x21, 0x7F)), "\u0120"]]
    keep[[*readable, *keep_ids]] = True
    with torch.no_grad():
        model.lm_head.weight[~keep.to(model.lm_head.weight.device)] = 0


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
    # end-of-text ends a text answer, <audiogen_start> starts speech
    restrict_text_head(
        model, processor.tokenizer, (processor.tokenizer.eos_token_id, processor.audiogen_start_token_id)
    )
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


__all__ = [
    "TINY_RANDOM",
    "NOISE_NOTICE",
    "TINY_GENERATION_KWARGS",
    "tiny_tokenizer",
    "restrict_text_head",
    "tiny_random_processor",
    "tiny_random_config",
    "TINY_TRAINING_CODEBOOK_SIZES",
    "tiny_training_config",
    "build_tiny_random",
]
