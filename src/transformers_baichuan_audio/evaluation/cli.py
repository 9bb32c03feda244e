"""``baichuan-audio eval TASK --model M --dataset D --out results.json``: the command-line front end.

:func:`add_arguments` adds the options to a parser (the ``eval`` sub-command of :mod:`..cli`); :func:`run` runs
them. The dataset and its columns are checked before the model is loaded, so a wrong path or column fails at once.
Decoding is greedy unless ``--sample`` (the model's sampling settings). Bad input (missing dataset, missing column,
unknown task, a rows file of another run) prints ``error: ...`` and returns 2.
"""

from __future__ import annotations

import argparse
import sys

TASK_NAMES = ("asr", "spoken-qa", "consistency", "latency")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``eval`` options (the model options of :func:`..loading.add_model_arguments` included)."""
    from ..loading import add_model_arguments, positive_int

    parser.add_argument("task", choices=TASK_NAMES, help="what to measure")
    add_model_arguments(parser)
    parser.add_argument(
        "--dataset",
        required=True,
        help="hub dataset name, a save_to_disk folder, an audiofolder, or a .jsonl / .csv manifest with audio paths",
    )
    parser.add_argument("--subset", help="hub dataset configuration (e.g. 'clean' of openslr/librispeech_asr)")
    parser.add_argument("--split", help="split (e.g. test); a DatasetDict with several splits needs it")
    parser.add_argument("--streaming", action="store_true", help="stream a hub dataset instead of downloading it")
    parser.add_argument("--limit", type=positive_int, help="only the first N examples")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="examples per generate call (not latency)")
    parser.add_argument("--out", default="results.json", help="result file; rows go to <stem>.rows.jsonl beside it")
    parser.add_argument("--audio-column", help="column with the audio (default: the Audio feature / usual names)")
    parser.add_argument("--audio-dir", help="folder of relative audio paths of a manifest (default: its folder)")
    parser.add_argument("--text-column", help="asr: column with the reference transcript")
    parser.add_argument("--answer-column", help="spoken-qa: column with the reference answer(s)")
    parser.add_argument("--alias-column", help="spoken-qa: column with more accepted answers (comma-separated)")
    parser.add_argument("--answer-separator", help="spoken-qa: split reference answer strings at this separator")
    parser.add_argument("--question-column", help="spoken-qa: column with the question text (for an LLM judge)")
    parser.add_argument("--id-column", help="column with an example id copied into the rows")
    parser.add_argument(
        "--language",
        choices=["auto", "en", "zh", "other"],
        default="auto",
        help="en: Whisper English normaliser + WER; zh: basic normaliser + CER; other: basic + WER; auto: per row",
    )
    parser.add_argument("--spelling-mapping", help="Whisper normalizer.json (British -> American spellings)")
    parser.add_argument("--answer", choices=["text", "speech"], default="text", help="spoken-qa: S->T or S->S")
    parser.add_argument(
        "--asr-model", default=None, help="scoring ASR checkpoint for speech answers (default openai/whisper-large-v3)"
    )
    parser.add_argument("--asr-device", default=None, help="device of the scoring ASR (default: the model's)")
    parser.add_argument("--asr-language", default=None, help="language passed to a Whisper scoring ASR (e.g. english)")
    parser.add_argument("--judge", choices=["exact", "contains", "llm"], default="contains", help="spoken-qa judge")
    parser.add_argument("--judge-model", help="llm judge: model name at the endpoint")
    parser.add_argument("--judge-base-url", help="llm judge: OpenAI-compatible endpoint (key: $OPENAI_API_KEY)")
    parser.add_argument("--judge-scale", type=int, choices=[10], help="llm judge: 1-10 rating instead of correct")
    parser.add_argument("--sample", action="store_true", help="sample with the model's settings (default: greedy)")
    parser.add_argument("--no-warmup", action="store_true", help="latency: no untimed warm-up turn")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _options(args):
    from .tasks import EvalOptions

    return EvalOptions(
        language=args.language,
        spelling_mapping=args.spelling_mapping,
        text_column=args.text_column,
        answer_column=args.answer_column,
        alias_column=args.alias_column,
        question_column=args.question_column,
        id_column=args.id_column,
        answer_separator=args.answer_separator,
        answer=args.answer,
        warmup=not args.no_warmup,
    )


def run(args: argparse.Namespace, scoring_asr=None, judge=None) -> int:
    """Run ``baichuan-audio eval`` (``scoring_asr`` / ``judge``: injected instead of the ones the options name)."""
    from dataclasses import asdict

    from ..chat import input_errors
    from .datasets_io import DatasetError, open_dataset
    from .runner import markdown_table, run_evaluation
    from .tasks import DEFAULT_SCORING_ASR, EvalContext, EvaluationError, make_task, pipeline_asr

    try:
        task = make_task(args.task)
        dataset = open_dataset(
            args.dataset,
            args.split,
            args.subset,
            audio_column=args.audio_column,
            audio_dir=args.audio_dir,
            streaming=args.streaming,
        )
        options = _options(args)
        task.prepare(dataset, options)
        if task.needs_judge and judge is None:
            from .judges import make_judge

            try:
                judge = make_judge(
                    args.judge, model=args.judge_model, base_url=args.judge_base_url, scale=args.judge_scale
                )
            except (ValueError, RuntimeError) as err:
                raise EvaluationError(str(err)) from err
        from ..chat import speech_chat_from_args

        args.greedy = args.greedy or not args.sample
        chat = speech_chat_from_args(args)
        if task.needs_scoring_asr and scoring_asr is None:
            device = args.asr_device or str(chat.model.device)
            scoring_asr = pipeline_asr(args.asr_model or DEFAULT_SCORING_ASR, device=device, language=args.asr_language)
        ctx = EvalContext(chat, scoring_asr=scoring_asr, judge=judge, options=options)
        run_info = {
            "model": args.model,
            "dataset": args.dataset,
            "split": args.split,
            "subset": args.subset,
            "options": {**asdict(options), "judge": args.judge if task.needs_judge else None, "sample": args.sample},
        }
        result = run_evaluation(
            task,
            dataset,
            ctx,
            args.out,
            run=run_info,
            limit=args.limit,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except (DatasetError, EvaluationError, *input_errors()) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(result))
    print(f"results written to {args.out}", file=sys.stderr)
    return 0


__all__ = ["TASK_NAMES", "add_arguments", "run"]
