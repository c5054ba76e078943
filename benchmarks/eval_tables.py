"""The tables of docs/results.md, from the ``summary.json`` of ``unite-logits eval`` folders.

Each folder is one row: its task, documents, every system's ``acc`` (``acc_norm`` in a second
table), ensemble − best member per metric with its paired bootstrap interval; then, from the
summaries' agreement sections, where the ensemble wins and loses. Nothing is recomputed
that the summaries do not hold (run ``unite-logits report DIR`` first for an older folder).

    python -m benchmarks.eval_tables benchmarks/results/eval/*-pair
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SHORT = {"smollm2-135m-instruct": "SmolLM2", "gemma3-270m": "Gemma 3", "qwen2.5-coder-0.5b-instruct": "Qwen2.5-Coder"}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}".replace("-", "−")


def _signed(value: float) -> str:
    return f"{100 * value:+.1f}".replace("-", "−")


def _interval(gain: dict[str, Any]) -> str:
    return f"{_signed(gain['diff'])} [{_signed(gain['low'])}, {_signed(gain['high'])}]"


def _setting(summary: dict[str, Any]) -> str:
    """The ensemble's ``top_k`` and weights, as the folder's ``meta.json`` records them."""
    meta = summary.get("meta") or {}
    weights = meta.get("weights")
    return f"{meta.get('top_k', '?')}" + (f", weights {','.join(f'{w:g}' for w in weights)}" if weights else "")


def accuracy_table(summaries: list[dict[str, Any]], metric: str) -> str:
    """One row per folder: each system's ``metric`` with its Wilson interval, and the gain."""
    names = list(dict.fromkeys(r["name"] for s in summaries for r in s["results"]))
    systems = [n for n in names if n != "ensemble"] + ["ensemble"]
    head = ["task", "documents", "top_k", *[SHORT.get(n, n) for n in systems], f"ensemble − best member, {metric}"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for summary in summaries:
        cells = [summary["task"].removeprefix("unite_"), f"{summary['n']:,}", _setting(summary)]
        for name in systems:
            result = next((r for r in summary["results"] if r["name"] == name and r["metric"] == metric), None)
            cells.append("" if result is None else
                         f"{_pct(result['value'])} [{_pct(result['ci_low'])}, {_pct(result['ci_high'])}]")
        gain = summary["gains"].get(metric)
        best = SHORT.get(summary["best_members"].get(metric, ""), summary["best_members"].get(metric, ""))
        cells.append(f"{_interval(gain)} (vs {best})" if gain else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def agreement_table(summaries: list[dict[str, Any]]) -> str:
    """Per folder: the ensemble's accuracy where members disagree, and the references."""
    head = ["task", "top_k", "members", "some but not all members right", "ensemble right there",
            "best member right there", "UniTE", "mean of choice probabilities", "sum of log-likelihoods", "oracle"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for summary in summaries:
        agreement = summary.get("agreement")
        if not agreement:
            continue
        split = agreement["buckets"][1:-1]
        n, right = sum(b["n"] for b in split), sum(b["ensemble_right"] for b in split)
        best = sum(b["best_member_right"] for b in split)
        refs = {r["key"]: r for r in agreement["references"]}
        cells = [summary["task"].removeprefix("unite_"), _setting(summary), str(len(agreement["members"])), f"{n}",
                 f"{right} ({_pct(right / n) if n else '−'} %)", f"{best} ({_pct(best / n) if n else '−'} %)",
                 _pct(agreement["ensemble_accuracy"])]
        cells += [f"{_pct(refs[k]['accuracy'])} ({_signed(refs[k]['versus_best']['diff'])})"
                  for k in ("mean_probability", "sum_logprob", "oracle")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="unite-logits eval results folders")
    args = parser.parse_args(argv)
    summaries = []
    for folder in args.folders:
        summary = json.loads((folder / "summary.json").read_text())
        meta = folder / "meta.json"
        summary["meta"] = json.loads(meta.read_text()) if meta.exists() else {}
        summaries.append(summary)
    for metric in ("acc", "acc_norm"):
        print(accuracy_table(summaries, metric), end="\n\n")
    print(agreement_table(summaries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
