"""``baichuan-audio serve``: options and launcher of the OpenAI-compatible HTTP API (FastAPI + uvicorn).

``add_arguments(parser)`` adds the options (the model options of :func:`..loading.add_model_arguments`, the bind
address, the API key, the limits and the batching settings); ``run(args)`` loads the model, builds the app and runs
uvicorn until interrupted. The server binds 127.0.0.1 unless ``--host`` says otherwise; the API key comes from
``--api-key`` or ``$BAICHUAN_AUDIO_API_KEY`` (none: no key needed).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..loading import add_model_arguments, positive_int

API_KEY_ENV = "BAICHUAN_AUDIO_API_KEY"


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``baichuan-audio serve``."""
    from .limits import ServeLimits

    d = ServeLimits()
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--served-model-name", help="model id of the API (default: the --model value)")
    parser.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' (default ${API_KEY_ENV}; unset: none)")
    parser.add_argument("--threads", type=positive_int, help="torch intra-op threads (default: torch's)")
    limits = parser.add_argument_group("limits and batching")
    limits.add_argument(
        "--max-upload-mb", type=_positive_float, default=d.max_upload_bytes / 2**20, help="MiB per upload"
    )
    limits.add_argument("--max-audio-seconds", type=_positive_float, default=d.max_audio_seconds, help="per input clip")
    limits.add_argument(
        "--max-text-chars", type=positive_int, default=d.max_text_chars, help="per text part / TTS input"
    )
    limits.add_argument(
        "--max-tokens-limit", type=positive_int, default=d.max_new_tokens, help="largest max_tokens a request may ask"
    )
    limits.add_argument(
        "--max-batch-size", type=positive_int, default=d.max_batch_size, help="rows per batched generate"
    )
    limits.add_argument(
        "--batch-window-ms", type=float, default=d.batch_window_ms, help="how long a request waits for others to batch"
    )
    limits.add_argument("--max-queue", type=positive_int, default=d.max_queue, help="waiting requests before 429")
    limits.add_argument(
        "--decode-priority",
        choices=["overlap", "inline"],
        default="overlap",
        help="where speech is decoded: in each request's thread while the batch generates (overlap, default) or in "
        "the batcher's thread between generation steps (inline: one thread does all tensor work)",
    )


def limits_from_args(args: argparse.Namespace):
    from .limits import ServeLimits

    return ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_audio_seconds=args.max_audio_seconds,
        max_text_chars=args.max_text_chars,
        max_new_tokens=args.max_tokens_limit,
        max_batch_size=args.max_batch_size,
        batch_window_ms=max(0.0, args.batch_window_ms),
        max_queue=args.max_queue,
    )


def build_from_args(args: argparse.Namespace):
    """``(app, engine)`` for the options (loads the model)."""
    from ..chat import speech_chat_from_args
    from .app import build_app
    from .engine import ServingEngine

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = ServingEngine(speech_chat_from_args(args), limits_from_args(args), decode_priority=args.decode_priority)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    return build_app(engine, args.served_model_name or args.model, api_key=api_key), engine


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
    """Run ``app`` with uvicorn in a daemon thread (tests, benchmarks, notebooks): ``(server, thread, base_url)``
    once it accepts connections; ``port=0`` picks a free port. Stop it with ``server.should_exit = True`` and
    ``thread.join()``."""
    import socket
    import threading
    import time

    import uvicorn

    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="baichuan-audio-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    return server, thread, f"http://{host}:{port}"


def run(args: argparse.Namespace) -> int:
    """Load the model and serve it until interrupted."""
    import uvicorn

    app, _ = build_from_args(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"WARNING: serving on {args.host}: reachable from other machines", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


__all__ = ["API_KEY_ENV", "add_arguments", "build_from_args", "limits_from_args", "run", "serve_in_thread"]
