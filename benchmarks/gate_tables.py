"""docs/results.md's confidence-gate table: an ensemble scored through the gate against the exact
ensemble, on the same documents, from the records of two ``unite-logits eval`` folders.

A gated folder is ``<exact folder>-gate<tau>`` (``eval --confidence-gate TAU --reuse <exact
folder>``); its ensemble's records are compared document by document with the exact folder's:
accuracy of each, gated − exact with its 95 % paired bootstrap interval, and how many documents
changed their answer.

    python -m benchmarks.gate_tables benchmarks/results/eval/arc_easy-pair-gate0.8 ...
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from unite_logits.evaluation.records import read_records, records_path
from unite_logits.evaluation.stats import paired_bootstrap

ENSEMBLE = "ensemble"
TASKS = {"unite_arc_easy": "ARC-Easy", "unite_piqa": "PIQA", "unite_hellaswag": "HellaSwag",
         "unite_arc_challenge": "ARC-Challenge"}


def _answers(folder: Path, metric: str) -> dict[tuple[str, int], tuple[bool, list[float]]]:
    records = read_records(records_path(folder / "records", ENSEMBLE))
    return {(r["task"], r["doc_id"]): (r["metrics"][metric] == 1.0, r["output"]) for r in records}


def row(gated_folder: Path, metric: str = "acc") -> str:
    """One table row: task, tau, documents, exact and gated accuracy, gated − exact, changed answers."""
    match = re.fullmatch(r"(.+)-gate([0-9.]+)", gated_folder.name)
    if match is None:
        raise ValueError(f"{gated_folder} is not named <exact folder>-gate<tau>")
    exact_folder, tau = gated_folder.parent / match.group(1), match.group(2)
    gated, exact = _answers(gated_folder, metric), _answers(exact_folder, metric)
    docs = sorted(gated)
    if not docs or any(doc not in exact for doc in docs):
        raise ValueError(f"{exact_folder} does not hold every document of {gated_folder}")
    right_gated = [gated[d][0] for d in docs]
    right_exact = [exact[d][0] for d in docs]
    changed = sum(_choice(gated[d][1]) != _choice(exact[d][1]) for d in docs)
    gain = paired_bootstrap(right_gated, right_exact)
    task = TASKS.get(docs[0][0], docs[0][0])
    return (f"| {task} | {tau} | {len(docs):,} | {100 * sum(right_exact) / len(docs):.1f} | "
            f"{100 * sum(right_gated) / len(docs):.1f} | {100 * gain.diff:+.1f} [{100 * gain.low:+.1f}, "
            f"{100 * gain.high:+.1f}] | {changed} |")


def _choice(output: list[float]) -> int:
    """The answer an ``acc`` record picked: the choice of highest log-likelihood."""
    return max(range(len(output)), key=lambda index: output[index])


def table(folders: Sequence[Path], metric: str = "acc") -> str:
    lines = [f"| task | τ | documents | exact, {metric} | gated, {metric} | gated − exact | answers changed |",
             "|---|---|---|---|---|---|---|"]
    return "\n".join([*lines, *(row(folder, metric) for folder in folders)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="gated eval folders (<exact folder>-gate<tau>)")
    parser.add_argument("--metric", default="acc")
    args = parser.parse_args(argv)
    print(table(args.folders, args.metric))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
