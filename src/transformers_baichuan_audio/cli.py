"""The ``baichuan-audio`` command line.

Sub-commands: ``convert`` (original checkpoint -> this layout), ``check-parity`` (run every stage of a reference
fixture directory and compare with the original implementation's outputs), ``demo`` (the Gradio voice chat on
127.0.0.1), ``chat`` (one spoken or typed turn: text streamed to the terminal, the spoken answer to a wav file),
``asr``, ``tts`` (base-model prompts), ``serve`` (the OpenAI-compatible HTTP API on 127.0.0.1), ``eval`` (ASR WER /
CER, spoken QA, consistency, latency on a dataset) and ``bench`` (runs the scripts under ``benchmarks/``). Every
sub-command has ``--help``.

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
import time
from pathlib import Path

from .loading import DEFAULT_MODEL, add_model_arguments, positive_int  # noqa: F401  (DEFAULT_MODEL: re-exported)


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


# ------------------------------------------------------------------------------------------------ sub-commands
def _speech_chat(args: argparse.Namespace):
    from .chat import speech_chat_from_args

    return speech_chat_from_args(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import serve  # the app (Gradio); it never imports this module

    return serve(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serving.cli import run  # FastAPI + uvicorn, imported only here

    return run(args)


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
    """Run a sub-command; bad input (see :func:`.chat.input_errors`) becomes ``error: ...`` on stderr and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        from .chat import input_errors

        try:
            return command(args)
        except input_errors() as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    run.__doc__ = command.__doc__
    return run


def _cmd_chat(args: argparse.Namespace) -> int:
    import numpy as np

    from .processing.audio_io import OutputPathError, check_output_path, save_wav

    if not (args.audio or args.text or args.record):
        raise SystemExit("chat: give --audio FILE, --record SECONDS and/or --text TEXT")
    chunks_dir = Path(args.stream_chunks) if args.stream_chunks and not args.no_speech else None
    if not args.no_speech:
        check_output_path(args.out)  # before loading the model and generating
    if chunks_dir is not None:
        try:
            chunks_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputPathError(f"--stream-chunks {chunks_dir}: cannot create the directory ({err})") from err
        check_output_path(chunks_dir / "chunk_0000.wav")
    chat = _speech_chat(args)
    audio = _record(args.record) if args.record else args.audio
    user = chat.user_message(audio, args.text)
    speak = not args.no_speech and chat.can_speak
    pieces = []
    start = time.perf_counter()
    for event in chat.stream_turn([user], voice=args.voice, speak=speak):
        if event.kind == "text":
            print(event.text, end="", flush=True)
        elif event.kind == "audio":
            pieces.append(event.audio.numpy())
            if chunks_dir is not None:  # each chunk as it comes: a wav file and a line on stderr
                path = chunks_dir / f"chunk_{len(pieces) - 1:04d}.wav"
                save_wav(str(path), pieces[-1])
                seconds = pieces[-1].shape[0] / 24000
                elapsed = time.perf_counter() - start
                print(
                    f"\n[audio chunk {len(pieces) - 1}: {seconds:.2f} s at {elapsed:.2f} s -> {path}]", file=sys.stderr
                )
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
    add_model_arguments(p)
    p.add_argument(
        "--host", default=None, help="interface to bind (default $GRADIO_SERVER_NAME or 127.0.0.1; no share link)"
    )
    p.add_argument("--port", type=int, default=7860, help="port")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("chat", help="one turn: speech (and/or text) in, text streamed to the terminal, speech to a wav")
    add_model_arguments(p)
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
    p.add_argument(
        "--stream-chunks",
        metavar="DIR",
        help="also write each spoken chunk as it is decoded (DIR/chunk_0000.wav, ...; a line per chunk on stderr)",
    )
    p.set_defaults(func=_reported(_cmd_chat))

    p = sub.add_parser("asr", help="transcribe a speech file (base-model ASR prompt)")
    add_model_arguments(p)
    p.add_argument("audio", help="speech file (at most 60 s)")
    p.set_defaults(func=_reported(_cmd_asr))

    p = sub.add_parser("tts", help="speak a text (base-model TTS prompt) into a 24 kHz wav")
    add_model_arguments(p)
    p.add_argument("text", nargs="?", help="the text (or use --text-file)")
    p.add_argument("--text-file", help="read the text from this UTF-8 file")
    p.add_argument("--out", default="speech.wav", help="output file (24 kHz; .wav, .flac or .ogg; checked first)")
    p.set_defaults(func=_reported(_cmd_tts))

    from .evaluation import cli as evaluation_cli  # argparse only at import; the work is imported when it runs

    p = sub.add_parser("eval", help="evaluate on a dataset: asr (WER/CER), spoken-qa, consistency, latency")
    evaluation_cli.add_arguments(p)
    p.set_defaults(func=evaluation_cli.run)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API (speech chat, transcriptions, speech) on 127.0.0.1")
    from .serving.cli import add_arguments as add_serve_arguments  # options only (no torch / FastAPI import)

    add_serve_arguments(p)
    p.set_defaults(func=_cmd_serve)

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
