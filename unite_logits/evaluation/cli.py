"""``unite-logits eval`` and ``unite-logits select``: lm-eval tasks, each member alone and the ensemble.

The main CLI registers these with ``add_eval_parser(subparsers)`` and
``add_select_parser(subparsers)``; each sets ``handler``. User errors raise
``EvalUsageError`` (a ``ValueError``) with a message fit to print. Nothing heavy is imported
until a command runs, so argument parsing stays fast.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from unite_logits.evaluation.errors import EvalUsageError

__all__ = ["DEFAULT_MEMBERS", "add_eval_parser", "add_report_parser", "add_select_parser", "run_eval", "run_report",
           "run_select"]

DEFAULT_MEMBERS = ("smollm2-135m-instruct", "gemma3-270m")
Loader = Callable[[str], Any]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _weights(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_common(parser: argparse.ArgumentParser, default_out: str, default_limit: int | None) -> None:
    parser.add_argument("--task", required=True,
                        help="lm-eval task: a shipped offline one (piqa, arc_easy, arc_challenge, hellaswag, mmlu, "
                             "paper_gsm8k, ...; the unite_ prefix may be left out) or any lm-eval task name")
    parser.add_argument("--limit", type=_positive, default=default_limit,
                        help="evaluate only the first N documents (default: %(default)s)")
    parser.add_argument("--out", default=default_out, help="results folder; a rerun resumes there")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="benchmark data folder: the shipped tasks read their local files there (default: "
                             "$UNITE_LOGITS_DATA; with neither, lm-eval's own tasks over their standard datasets, "
                             "from the Hugging Face datasets cache)")
    parser.add_argument("--top-k", type=_positive, default=10, help="union top-k of the ensemble / agreement k")
    parser.add_argument("--batch-size", type=_positive, default=8, help="requests per forward pass (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--reuse", action="append", default=[], metavar="DIR",
                        help="an earlier results folder whose answers are taken over where a system's task, documents, "
                             "models and settings match (a member alone matches whatever the ensemble's --top-k and "
                             "--weights were): a top-k sweep or an added member recomputes only what changed; repeatable")


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval``: each member alone and the ensemble on an lm-eval task."""
    parser = subparsers.add_parser(
        "eval", help="evaluate members alone and their ensemble on an lm-eval task",
        description="Each member alone and the UniTE ensemble (first member the primary) on the same documents of "
                    "an lm-eval task, through the one `unite` model; the paired difference with its bootstrap interval.",
    )
    _add_common(parser, "eval-results", None)
    parser.add_argument("--members", nargs="+", default=list(DEFAULT_MEMBERS), metavar="MODEL",
                        help="model specs, primary first (default: %(default)s)")
    parser.add_argument("--weights", type=_weights, default=None,
                        help="comma list of ensemble weights, primary first (default all 1)")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    parser.add_argument("--apply-chat-template", action="store_true",
                        help="each model reads the prompts in its own chat template")
    parser.set_defaults(handler=run_eval)
    return parser


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report``: an eval results folder summarised again from its records."""
    parser = subparsers.add_parser(
        "report", help="summarise an eval results folder again from its records (no model is loaded)",
        description="Rebuild summary.json, summary.md and differences.jsonl of an `eval` results folder from its "
                    "per-sample records, and print the summary.",
    )
    parser.add_argument("out", metavar="DIR", help="an `unite-logits eval` results folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run_report)
    return parser


def add_select_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``select``: the compatibility report over candidate models."""
    parser = subparsers.add_parser(
        "select", help="compatibility report: which models are worth ensembling",
        description="Each candidate alone on a dev slice of an lm-eval task; every pair judged by the paper's rules.",
    )
    _add_common(parser, "select-results", 50)
    parser.add_argument("--candidates", nargs="+", required=True, metavar="MODEL", help="two or more model specs")
    parser.add_argument("--max-gap", type=float, default=10.0, help="max accuracy gap in points (default 10)")
    parser.add_argument("--max-length-ratio", type=float, default=2.0, help="max ratio of mean response lengths")
    parser.add_argument("--min-vocab-overlap", type=float, default=None, help="optional gate, 0..1")
    parser.add_argument("--min-top-k-agreement", type=float, default=None, help="optional gate, 0..1")
    parser.add_argument("--no-heatmap", action="store_true", help="skip the PNG heatmap")
    parser.set_defaults(handler=run_select)
    return parser


def _require_lm_eval() -> None:
    """lm-eval is there; the Hugging Face hub is off unless the user turned it on (set before
    lm-eval's imports, which read the variables once)."""
    from unite_logits.evaluation.data import offline_by_default

    offline_by_default()
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise EvalUsageError("evaluation runs on lm-evaluation-harness, which is missing: "
                             "pip install 'unite-logits[lm-eval]'") from None


def run_eval(args: argparse.Namespace, loader: Loader | None = None) -> int:
    """Run ``eval`` and print the comparison (Markdown, or JSON with ``--json``)."""
    _require_lm_eval()
    from unite_logits.evaluation.run_task import evaluate

    comparison = evaluate(args.task, args.members, out=args.out, limit=args.limit, weights=args.weights,
                          top_k=args.top_k, batch_size=args.batch_size, num_fewshot=args.num_fewshot,
                          apply_chat_template=args.apply_chat_template, data_dir=args.data_dir,
                          progress=not args.no_progress, loader=loader, reuse=args.reuse)
    print(json.dumps(comparison.to_dict(), default=str) if args.json else comparison.to_markdown())
    if not args.json:
        print(f"records, summary and differences in {args.out}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Run ``report``: rewrite and print a folder's summary."""
    from unite_logits.evaluation.run_task import report

    comparison = report(args.out)
    print(json.dumps(comparison.to_dict(), default=str) if args.json else comparison.to_markdown())
    return 0


def run_select(args: argparse.Namespace, loader: Loader | None = None) -> int:
    """Run ``select`` and print the report with its reasons."""
    if len(args.candidates) < 2:
        raise EvalUsageError("select needs at least two --candidates")
    for name, value in (("--min-vocab-overlap", args.min_vocab_overlap),
                        ("--min-top-k-agreement", args.min_top_k_agreement)):
        if value is not None and not 0 <= value <= 1:
            raise EvalUsageError(f"{name} must be between 0 and 1, got {value}")
    _require_lm_eval()
    from unite_logits.evaluation.selection import Thresholds, select

    thresholds = Thresholds(args.max_gap / 100, args.max_length_ratio, args.min_vocab_overlap, args.min_top_k_agreement)
    report = select(args.task, args.candidates, limit=args.limit, out=args.out, data_dir=args.data_dir,
                    thresholds=thresholds, top_k=args.top_k, batch_size=args.batch_size, heatmap=not args.no_heatmap,
                    progress=not args.no_progress, loader=loader, reuse=args.reuse)
    print(json.dumps(report.to_dict(), default=str) if args.json else report.to_markdown())
    return 0
