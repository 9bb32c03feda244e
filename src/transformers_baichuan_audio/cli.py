"""The ``baichuan-audio`` command line.

Sub-commands: ``convert`` (original checkpoint -> this layout), ``check-parity`` (run every stage of a reference
fixture directory and compare with the original implementation's outputs), ``demo`` (the Gradio voice chat on
127.0.0.1), ``chat`` (one spoken or typed turn: text streamed to the terminal, the spoken answer to a wav file),
``asr``, ``tts`` (base-model prompts) and ``bench`` (runs the scripts under ``benchmarks/``). Every sub-command has
``--help``.

``--model`` (demo/chat/asr/tts) takes a converted directory, an original-layout directory (converted on the fly; the
vocoder weights come from ``--vocoder``), a hub id (downloaded with ``huggingface_hub.snapshot_download``, then the
same; the released ``baichuan-inc/Baichuan-Audio-Instruct`` is in the original layout) or ``tiny-random`` (a small
random model built offline: its output is noise).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

DEFAULT_MODEL = "baichuan-inc/Baichuan-Audio-Instruct"
MODEL_HELP = (
    "a converted directory, an original-layout directory (converted on the fly; pass --vocoder for speech output), "
    "a hub id (downloaded with huggingface_hub.snapshot_download, then loaded or converted on the fly: the released "
    f"repos are in the original layout) or 'tiny-random' (small random model, offline; its output is noise). "
    f"Default: {DEFAULT_MODEL}"
)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .conversion.convert import convert_checkpoint

    out = convert_checkpoint(
        args.src,
        args.dst,
        vocoder=args.vocoder,
        max_shard_size=int(args.max_shard_size_gb * 1024**3),
        save_processor=not args.no_processor,
        push_to_hub=args.push_to_hub,
        progress=not args.quiet,
    )
    print(f"converted checkpoint written to {out}")
    return 0


def _cmd_check_parity(args: argparse.Namespace) -> int:
    from .parity import run_parity

    report = run_parity(args.fixture_dir, stages=args.stages, threads=args.threads)
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------------------------ model loading
def _find_vocoder(root: Path) -> Path | None:
    for name in ("hift.safetensors", "hift.pt"):
        found = sorted(root.rglob(name))
        if found:
            return found[0]
    return None


def load_model_and_processor(spec: str, vocoder: str | None = None, device: str = "auto", dtype: str = "auto"):
    """``(model, processor, generation_kwargs)`` for a ``--model`` value (see :data:`MODEL_HELP`)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and spec != "tiny-random" else "cpu"
    from .tiny_random import NOISE_NOTICE, TINY_GENERATION_KWARGS, TINY_RANDOM, build_tiny_random

    if spec == TINY_RANDOM:
        print(NOISE_NOTICE, file=sys.stderr)
        model, processor = build_tiny_random()
        return model.to("cpu" if device == "auto" else device), processor, dict(TINY_GENERATION_KWARGS)
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    torch_dtype = getattr(torch, dtype)
    path = Path(spec)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        print(f"downloading {spec} from the Hugging Face hub ...", file=sys.stderr)
        path = Path(snapshot_download(spec))
    from .conversion.convert import is_original_checkpoint
    from .processing.processor import BaichuanAudioProcessor

    if is_original_checkpoint(path):
        from .conversion.convert import load_original_model, processor_for_original

        vocoder = vocoder or _find_vocoder(path)
        if vocoder is None:
            print("no --vocoder given (hift.pt): answers will be text only", file=sys.stderr)
        print(f"converting the original checkpoint {path} on the fly ...", file=sys.stderr)
        model = load_original_model(path, vocoder, dtype=torch_dtype)
        tokenizer_dir = next((d for d in (path, path / "tokenizer") if (d / "tokenizer_config.json").exists()), path)
        processor = processor_for_original(tokenizer_dir, model.config)
    else:
        from .modeling.baichuan_audio import BaichuanAudioForConditionalGeneration

        model = BaichuanAudioForConditionalGeneration.from_pretrained(path, dtype=torch_dtype)
        processor = BaichuanAudioProcessor.from_pretrained(path)
    if getattr(model, "code2wav", None) is not None:
        model.code2wav.float()  # code2wav runs in fp32
    return model.to(device).eval(), processor, {}


def positive_int(value: str) -> int:
    """argparse type: an integer > 0 (``--max-new-tokens 0`` is refused like transformers refuses it)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {number}")
    return number


#: Errors of bad input that the sub-commands report as ``error: ...`` (exit status 2) instead of a traceback.
def _input_errors() -> tuple[type[BaseException], ...]:
    from .demo import AudioInputError
    from .modeling.generation import PromptTooLongError
    from .processing.audio_io import InvalidAudioError, OutputPathError

    return (AudioInputError, InvalidAudioError, OutputPathError, PromptTooLongError, FileNotFoundError, UnicodeError)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--vocoder", help="HiFT vocoder weights (hift.pt / .safetensors) for an original-layout model")
    p.add_argument("--device", default="auto", help="torch device (auto: cuda if available, else cpu; cpu, cuda:1...)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="LLM dtype")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and of the vocoder noise")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of the released sampling settings")
    p.add_argument("--max-new-tokens", type=positive_int, help="cap of text-only answers and transcripts (tokens, > 0)")


def _speech_chat(args: argparse.Namespace):
    from .demo import SpeechChat

    model, processor, kwargs = load_model_and_processor(args.model, args.vocoder, args.device, args.dtype)
    if args.greedy:
        kwargs["do_sample"] = False
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    return SpeechChat(model, processor, kwargs, seed=args.seed)


# ------------------------------------------------------------------------------------------------ sub-commands
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import launch, make_demo
    from .tiny_random import NOISE_NOTICE, TINY_RANDOM

    chat = _speech_chat(args)
    notice = NOISE_NOTICE if args.model == TINY_RANDOM else None
    demo = make_demo(chat.model, chat.processor, chat.generation_kwargs, seed=args.seed, notice=notice)
    launch(demo, host=args.host, port=args.port)
    return 0


def _record(seconds: float) -> tuple[int, object]:
    try:
        import sounddevice
    except ImportError as err:
        raise SystemExit("--record needs the 'sounddevice' package and a microphone; use --audio FILE") from err
    rate = 16000
    print(f"recording {seconds:g} s ...", file=sys.stderr)
    data = sounddevice.rec(int(seconds * rate), samplerate=rate, channels=1, dtype="int16")
    sounddevice.wait()
    return rate, data.reshape(-1)


def _reported(command):
    """Run a sub-command; bad input (see :func:`_input_errors`) becomes ``error: ...`` on stderr and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except _input_errors() as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    run.__doc__ = command.__doc__
    return run


def _cmd_chat(args: argparse.Namespace) -> int:
    import numpy as np

    from .processing.audio_io import check_output_path, save_wav

    if not (args.audio or args.text or args.record):
        raise SystemExit("chat: give --audio FILE, --record SECONDS and/or --text TEXT")
    if not args.no_speech:
        check_output_path(args.out)  # before loading the model and generating
    chat = _speech_chat(args)
    audio = _record(args.record) if args.record else args.audio
    user = chat.user_message(audio, args.text)
    speak = not args.no_speech and chat.can_speak
    pieces = []
    for event in chat.stream_turn([user], voice=args.voice, speak=speak):
        if event.kind == "text":
            print(event.text, end="", flush=True)
        elif event.kind == "audio":
            pieces.append(event.audio.numpy())
    print()
    if speak and pieces:
        wave = np.concatenate(pieces)
        save_wav(args.out, wave)
        print(f"spoken answer ({wave.shape[0] / 24000:.2f} s, 24 kHz) written to {args.out}", file=sys.stderr)
    elif speak:
        print("the model answered without speech: no wav written", file=sys.stderr)
    return 0


def _cmd_asr(args: argparse.Namespace) -> int:
    chat = _speech_chat(args)
    print(chat.transcribe(args.audio))
    return 0


def _cmd_tts(args: argparse.Namespace) -> int:
    from .processing.audio_io import check_output_path, save_wav

    check_output_path(args.out)  # before loading the model and generating
    text = Path(args.text_file).read_text(encoding="utf-8") if args.text_file else args.text
    chat = _speech_chat(args)
    wave = chat.synthesize(text or "")
    save_wav(args.out, wave)
    print(f"speech ({wave.shape[0] / 24000:.2f} s, 24 kHz) written to {args.out}", file=sys.stderr)
    return 0


def benchmarks_dir() -> Path:
    """``benchmarks/`` of the source checkout (or of the current directory)."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (base / "benchmarks").is_dir():
            return base / "benchmarks"
    raise SystemExit("bench: no benchmarks/ directory (run from a source checkout)")


def _cmd_bench(args: argparse.Namespace) -> int:
    scripts = sorted(benchmarks_dir().glob("bench_*.py"))
    if args.list:
        for script in scripts:
            print(script.stem.removeprefix("bench_"))
        return 0
    if args.names:
        wanted = {n.removeprefix("bench_").removesuffix(".py") for n in args.names}
        unknown = wanted - {s.stem.removeprefix("bench_") for s in scripts}
        if unknown:
            raise SystemExit(f"bench: unknown benchmark(s) {sorted(unknown)}; see 'baichuan-audio bench --list'")
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    status = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        rc = subprocess.call([sys.executable, str(script), *args.extra], env=os.environ.copy())
        status = status or rc
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baichuan-audio", description="Baichuan-Audio for Hugging Face Transformers")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an original Baichuan-Audio checkpoint (model_type 'omni')")
    p.add_argument("src", help="original checkpoint directory (config.json, safetensors shards, tokenizer files)")
    p.add_argument("dst", help="output directory")
    p.add_argument("--vocoder", help="HiFT vocoder weights (third_party/cosy24k_vocoder/hift.pt or .safetensors)")
    p.add_argument("--max-shard-size-gb", type=float, default=5.0, help="size of output shards (GB)")
    p.add_argument("--no-processor", action="store_true", help="do not write the processor files")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the converted directory to this hub repo")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("check-parity", help="compare every stage with a reference fixture directory")
    p.add_argument("fixture_dir", help="fixture directory in the format of shared/fixtures/reference/tiny-a")
    p.add_argument("--stages", nargs="*", help="only these stages (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the fixtures used 1)")
    p.set_defaults(func=_cmd_check_parity)

    p = sub.add_parser("demo", help="launch the Gradio voice-chat app (speech chat, ASR, TTS) on 127.0.0.1")
    _add_model_args(p)
    p.add_argument(
        "--host", default=None, help="interface to bind (default $GRADIO_SERVER_NAME or 127.0.0.1; no share link)"
    )
    p.add_argument("--port", type=int, default=7860, help="port")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("chat", help="one turn: speech (and/or text) in, text streamed to the terminal, speech to a wav")
    _add_model_args(p)
    p.add_argument("--audio", help="input speech file (wav, flac, ogg; at most 60 s)")
    p.add_argument("--record", type=float, metavar="SECONDS", help="record from the microphone (needs sounddevice)")
    p.add_argument("--text", help="typed input (alone or with the speech)")
    p.add_argument(
        "--out",
        default="answer.wav",
        help="where to write the spoken answer (24 kHz; .wav, .flac or .ogg; checked first)",
    )
    p.add_argument("--voice", default=None, help="voice name of the system prompt (default: the released one)")
    p.add_argument("--no-speech", action="store_true", help="answer in text only")
    p.set_defaults(func=_reported(_cmd_chat))

    p = sub.add_parser("asr", help="transcribe a speech file (base-model ASR prompt)")
    _add_model_args(p)
    p.add_argument("audio", help="speech file (at most 60 s)")
    p.set_defaults(func=_reported(_cmd_asr))

    p = sub.add_parser("tts", help="speak a text (base-model TTS prompt) into a 24 kHz wav")
    _add_model_args(p)
    p.add_argument("text", nargs="?", help="the text (or use --text-file)")
    p.add_argument("--text-file", help="read the text from this UTF-8 file")
    p.add_argument("--out", default="speech.wav", help="output file (24 kHz; .wav, .flac or .ogg; checked first)")
    p.set_defaults(func=_reported(_cmd_tts))

    p = sub.add_parser("bench", help="run the benchmark scripts under benchmarks/ (source checkout)")
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all), e.g. audio_tokenizer")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="arguments passed to every script")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
