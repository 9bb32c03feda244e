"""The ``baichuan-audio`` command line.

Sub-commands: ``convert`` (original checkpoint -> this layout), ``check-parity`` (run every stage of a reference
fixture directory and compare with the original implementation's outputs). Every sub-command has ``--help``.
"""

from __future__ import annotations

import argparse
import sys


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
