"""Loading a Baichuan-Audio model and its processor from one name: the loader of the command line, the app and the
training example scripts.

``spec`` is a converted directory, an original-layout directory (``model_type: "omni"``, converted in memory by
:func:`.conversion.convert.load_original_model`; the vocoder weights come from ``vocoder`` or are searched for in the
directory), a hub id (downloaded with ``huggingface_hub.snapshot_download``, then the same; the released
``baichuan-inc/Baichuan-Audio-Instruct`` is in the original layout) or ``tiny-random`` (the small random model of
:mod:`.tiny_random`, built offline: its output is noise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MODEL = "baichuan-inc/Baichuan-Audio-Instruct"
MODEL_HELP = (
    "a converted directory, an original-layout directory (converted on the fly; pass --vocoder for speech output), "
    "a hub id (downloaded with huggingface_hub.snapshot_download, then loaded or converted on the fly: the released "
    f"repos are in the original layout) or 'tiny-random' (small random model, offline; its output is noise). "
    f"Default: {DEFAULT_MODEL}"
)


def find_vocoder(root: Path) -> Path | None:
    """The HiFT vocoder weights (``hift.safetensors`` / ``hift.pt``) somewhere under ``root``, or None."""
    for name in ("hift.safetensors", "hift.pt"):
        found = sorted(Path(root).rglob(name))
        if found:
            return found[0]
    return None


def generation_kwargs_for(spec: str) -> dict:
    """Default ``generate`` arguments of a model spec: short caps for ``tiny-random``, none otherwise."""
    from .tiny_random import TINY_GENERATION_KWARGS, TINY_RANDOM

    return dict(TINY_GENERATION_KWARGS) if spec == TINY_RANDOM else {}


def load_model_and_processor(
    spec: str,
    vocoder: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    *,
    training: bool = False,
    seed: int = 0,
):
    """``(model, processor)`` for a model spec (see the module docstring), in eval mode.

    ``device``: ``"auto"`` = cuda when available (cpu for ``tiny-random``). ``dtype``: ``"auto"`` = bfloat16 on
    cuda, else float32 (code2wav always runs in fp32). ``training=True`` (the training scripts): ``tiny-random`` is
    the training-sized tiny model (:func:`.tiny_random.build_tiny_random` with ``training=True``, seeded by ``seed``).
    """
    import torch

    from . import tiny_random

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and spec != tiny_random.TINY_RANDOM else "cpu"
    if spec == tiny_random.TINY_RANDOM:
        if training:
            model, processor = tiny_random.build_tiny_random(seed, training=True)
        else:
            print(tiny_random.NOISE_NOTICE, file=sys.stderr)
            model, processor = tiny_random.build_tiny_random()
        return model.to(device), processor
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    torch_dtype = getattr(torch, dtype)
    path = Path(spec)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        print(f"downloading {spec} from the Hugging Face hub ...", file=sys.stderr)
        path = Path(snapshot_download(spec))
    from .conversion import convert

    if convert.is_original_checkpoint(path):
        vocoder = vocoder or find_vocoder(path)
        if vocoder is None:
            print("no --vocoder given (hift.pt): answers will be text only", file=sys.stderr)
        print(f"converting the original checkpoint {path} on the fly ...", file=sys.stderr)
        model = convert.load_original_model(path, vocoder, dtype=torch_dtype)
        tokenizer_dir = next((d for d in (path, path / "tokenizer") if (d / "tokenizer_config.json").exists()), path)
        processor = convert.processor_for_original(tokenizer_dir, model.config)
    else:
        from .modeling.baichuan_audio import BaichuanAudioForConditionalGeneration
        from .processing.processor import BaichuanAudioProcessor

        model = BaichuanAudioForConditionalGeneration.from_pretrained(path, dtype=torch_dtype)
        processor = BaichuanAudioProcessor.from_pretrained(path)
    if getattr(model, "code2wav", None) is not None:
        model.code2wav.float()  # code2wav runs in fp32
    return model.to(device).eval(), processor


def _int_at_least(value: str, minimum: int, requirement: str) -> int:
    """argparse conversion of an integer >= ``minimum``; ``requirement`` words the error."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {number}")
    return number


def positive_int(value: str) -> int:
    """argparse type: an integer > 0 (``--max-new-tokens 0`` is refused like transformers refuses it)."""
    return _int_at_least(value, 1, "greater than 0")


def left_chunks_count(value: str) -> int:
    """argparse type of ``--decoding-left-chunks``: -1 (every earlier chunk) or an integer >= 0."""
    return _int_at_least(value, -1, "-1 (every earlier chunk) or >= 0")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model options of ``baichuan-audio demo`` / ``chat`` / ``asr`` / ``tts`` (read by :func:`.chat.speech_chat_from_args`)."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    parser.add_argument("--vocoder", help="HiFT vocoder weights (hift.pt / .safetensors) for an original-layout model")
    parser.add_argument(
        "--device", default="auto", help="torch device (auto: cuda if available, else cpu; cpu, cuda:1...)"
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="LLM dtype")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling and of the vocoder noise")
    parser.add_argument(
        "--greedy", action="store_true", help="greedy decoding instead of the released sampling settings"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, help="cap of text-only answers and transcripts (tokens, > 0)"
    )
    parser.add_argument(
        "--first-chunk-frames",
        type=positive_int,
        help="streamed speech: code frames before a phrase's first audio chunk (default 25, the first exact chunk; "
        "6..24: a provisional, approximate first chunk, sooner)",
    )
    parser.add_argument(
        "--chunk-frames",
        type=positive_int,
        help="streamed speech: code frames per later audio chunk, a multiple of 25 (default 25; larger: fewer, "
        "longer chunks, each decoded in one pass: less decoding time per second of speech on a CPU)",
    )
    parser.add_argument(
        "--decoding-left-chunks",
        type=left_chunks_count,
        help="speech: earlier 2 s chunks each U-Net attention chunk of code2wav sees (default: the model's config, "
        "-1 = all, the original; N >= 0: a bounded context, the same cost per streamed chunk at any phrase length, "
        "not the original's output)",
    )
    parser.add_argument(
        "--keep-stream-state",
        action="store_true",
        help="speech: keep the streaming decoder's state buffers between turns (every phrase but the first then "
        "writes to mapped pages: faster streaming on a CPU; the longest phrase's state stays resident, ~230 MB per "
        "second of speech at the released size)",
    )


__all__ = [
    "DEFAULT_MODEL",
    "MODEL_HELP",
    "add_model_arguments",
    "find_vocoder",
    "generation_kwargs_for",
    "left_chunks_count",
    "load_model_and_processor",
    "positive_int",
]
