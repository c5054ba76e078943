"""``unite-logits eval`` and ``unite-logits select`` subcommands.

The project's main CLI registers these with ``add_eval_parser(subparsers)`` and
``add_select_parser(subparsers)``; each sets ``func`` so the caller runs
``args.handler(args)``. User errors raise ``EvalUsageError`` (a ``ValueError``) with a
message fit to print. Models are resolved by ``unite_logits.models.loading.load_model``,
imported only when a command runs so argument parsing stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from unite_logits.evaluation.errors import EvalUsageError
from unite_logits.evaluation.tasks import MODES, TASKS, get_task

if TYPE_CHECKING:
    from unite_logits.models.loading import LoadedModel

__all__ = ["DEFAULT_MEMBERS", "add_eval_parser", "add_select_parser", "run_eval", "run_select", "main"]

DEFAULT_MEMBERS = ("smollm2-135m-instruct", "gemma3-270m")
Loader = Callable[[str], tuple[Any, Any]]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _weights(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_common(parser: argparse.ArgumentParser, default_out: str, default_limit: int | None) -> None:
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="benchmark to run")
    parser.add_argument("--limit", type=_positive, default=default_limit,
                        help="evaluate only the first N items (default: %(default)s)")
    parser.add_argument("--out", default=default_out, help="results directory; a rerun resumes there")
    parser.add_argument("--data", default=None, metavar="PATH", help="task data file (overrides the default file)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="benchmark data directory (default: $UNITE_LOGITS_DATA or ../shared/data)")
    parser.add_argument("--top-k", type=_positive, default=10, help="union top-k of the ensemble / agreement k")
    parser.add_argument("--max-new-tokens", type=_positive, default=None, help="default: per task")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval``: each member alone and the ensemble on a benchmark."""
    parser = subparsers.add_parser(
        "eval", help="evaluate members alone and their ensemble on a benchmark",
        description="Evaluate each member alone and the UniTE ensemble (first member is the primary).",
    )
    _add_common(parser, "eval-results", None)
    parser.add_argument("--members", nargs="+", default=list(DEFAULT_MEMBERS), metavar="MODEL",
                        help="model specs, primary first (default: %(default)s)")
    parser.add_argument("--mode", choices=MODES, default="free",
                        help="free generation, constrained letter choice (multiple-choice tasks), or both")
    parser.add_argument("--weights", type=_weights, default=None,
                        help="comma list of ensemble weights, primary first (default all 1), as in generate")
    parser.set_defaults(handler=run_eval)
    return parser


def add_select_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``select``: the compatibility report over candidate models."""
    parser = subparsers.add_parser(
        "select", help="compatibility report: which models are worth ensembling",
        description="Profile candidates on a dev slice and judge every pair by the paper's rules.",
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


def _default_loader() -> Loader:
    try:
        from unite_logits.models.loading import load_model
    except ImportError as exc:  # the loader ships separately
        raise EvalUsageError(f"model loading is unavailable: {exc}") from exc
    return load_model


def _load(specs: Sequence[str], loader: Loader | None) -> list[LoadedModel]:
    """Each spec loaded once and named by its spec (a catalogue name, or the path given)."""
    from unite_logits.models.loading import LoadedModel

    if len(set(specs)) != len(specs):
        raise EvalUsageError(f"each model may be given once: {list(specs)}")
    load = loader or _default_loader()
    members = []
    for spec in specs:
        loaded = load(spec)
        members.append(LoadedModel(loaded[0], loaded[1], spec, getattr(loaded, "digest", None)))
    return members


def _check_weights(weights: Sequence[float] | None, n_models: int) -> None:
    from unite_logits.ensemble.ensemble import check_weights

    try:
        check_weights(weights, n_models)
    except (TypeError, ValueError) as error:
        raise EvalUsageError(f"--weights: {error}") from None


def run_eval(args: argparse.Namespace, loader: Loader | None = None) -> int:
    """Run ``eval``; data problems are reported before any model is loaded."""
    from unite_logits.evaluation.runner import evaluate, load_items

    task = get_task(args.task)
    if args.mode != "free" and not task.multiple_choice:
        raise EvalUsageError(f"--mode {args.mode} needs a multiple-choice task (arc, piqa, mmlu)")
    items = load_items(task, args.data_dir, args.data, args.limit)
    _check_weights(args.weights, len(args.members))
    members = _load(args.members, loader)
    summary = evaluate(task, members, out_dir=args.out, mode=args.mode, items=items, top_k=args.top_k,
                       weights=args.weights, max_new_tokens=args.max_new_tokens, progress=not args.no_progress)
    print(summary.to_markdown())
    print(f"records and summary in {args.out}")
    return 0


def run_select(args: argparse.Namespace, loader: Loader | None = None) -> int:
    """Run ``select`` and print the report with its reasons."""
    from unite_logits.evaluation.runner import load_items
    from unite_logits.evaluation.selection import Thresholds, select

    if len(args.candidates) < 2:
        raise EvalUsageError("select needs at least two --candidates")
    for name, value in (("--min-vocab-overlap", args.min_vocab_overlap),
                        ("--min-top-k-agreement", args.min_top_k_agreement)):
        if value is not None and not 0 <= value <= 1:
            raise EvalUsageError(f"{name} must be between 0 and 1, got {value}")
    thresholds = Thresholds(args.max_gap / 100, args.max_length_ratio,
                            args.min_vocab_overlap, args.min_top_k_agreement)
    load_items(get_task(args.task), args.data_dir, args.data, args.limit)  # fail fast on data
    members = _load(args.candidates, loader)
    report = select(args.task, members, limit=args.limit, out_dir=args.out, data_dir=args.data_dir,
                    data_path=args.data, thresholds=thresholds, top_k=args.top_k,
                    max_new_tokens=args.max_new_tokens, heatmap=not args.no_heatmap,
                    progress=not args.no_progress)
    print(report.to_markdown())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m unite_logits.evaluation.cli``) until the main CLI wires these."""
    parser = argparse.ArgumentParser(prog="unite-logits")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(subparsers)
    add_select_parser(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except EvalUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
