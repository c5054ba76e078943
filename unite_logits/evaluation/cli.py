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


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"has to be in (0, 1], got {text}")
    return value


def _fraction(text: str) -> float:
    value = _probability(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"has to be between 0 and 1, got {text}")
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
    parser.add_argument("--include-path", default=None, metavar="DIR",
                        help="a folder of lm-eval task YAMLs (as lm-eval's --include_path): --task may name one of them")
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
    parser.add_argument("--members", nargs="+", default=None, metavar="MODEL",
                        help=f"model specs, primary first (default: {' '.join(DEFAULT_MEMBERS)})")
    parser.add_argument("--weights", type=_weights, default=None,
                        help="comma list of ensemble weights, primary first (default all 1)")
    parser.add_argument("--ensemble", default=None, metavar="FILE",
                        help="evaluate exactly the ensemble of an ensemble file (`select` writes DIR/ensemble.json), "
                             "on the documents held out from its tuning; instead of --members/--weights/--top-k")
    parser.add_argument("--confidence-gate", type=_probability, default=None, metavar="TAU",
                        help="score positions where the primary's top token has probability >= TAU by the primary "
                             "alone (not exact UniTE; docs/speculative.md)")
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
    """Register ``select``: determine an ensemble (members and weights) on a dev slice."""
    parser = subparsers.add_parser(
        "select", help="determine which models to ensemble, with which weights, and write OUT/ensemble.json",
        description="Split the task's documents into a dev slice and a held-out slice; on the dev slice, each "
                    "candidate alone (and every pair judged by the paper's rules), then ensembles of each best "
                    "candidate as primary with the others at grid weights; choose, preferring fewer models and equal "
                    "weights unless the gain clears its paired interval; evaluate on the held-out slice; write "
                    "OUT/ensemble.json, which generate, chat, serve, eval and lm-eval read.",
    )
    _add_common(parser, "select-results", None)
    parser.add_argument("--dev-fraction", type=_fraction, default=0.3, help="share of documents to choose on (0.3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dev/held-out split (default 0)")
    parser.add_argument("--primaries", type=_positive, default=2,
                        help="candidates tried as the primary: the best ones on the dev slice (default 2)")
    parser.add_argument("--no-search", action="store_true", help="only the compatibility report (no ensemble file)")
    parser.add_argument("--no-held-out", action="store_true", help="skip the evaluation on the held-out slice")
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

    if args.ensemble is not None and (args.members is not None or args.weights is not None
                                      or args.confidence_gate is not None):
        raise EvalUsageError("--ensemble FILE defines the models and their settings; give it without --members, "
                             "--weights or --confidence-gate")
    members = [] if args.ensemble is not None else (args.members or list(DEFAULT_MEMBERS))
    comparison = evaluate(args.task, members, out=args.out, limit=args.limit, weights=args.weights,
                          top_k=args.top_k, confidence_gate=args.confidence_gate, ensemble_file=args.ensemble,
                          batch_size=args.batch_size, num_fewshot=args.num_fewshot,
                          apply_chat_template=args.apply_chat_template, data_dir=args.data_dir,
                          include_path=args.include_path, progress=not args.no_progress, loader=loader,
                          reuse=args.reuse)
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
                    include_path=args.include_path, thresholds=thresholds, top_k=args.top_k,
                    batch_size=args.batch_size, dev_fraction=args.dev_fraction, seed=args.seed,
                    primaries=args.primaries, search=not args.no_search, held_out=not args.no_held_out,
                    heatmap=not args.no_heatmap, progress=not args.no_progress, loader=loader, reuse=args.reuse)
    print(json.dumps(report.to_dict(), default=str) if args.json else report.to_markdown())
    return 0
