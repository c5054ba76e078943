"""Members against the ensemble on the same documents: metrics, the paired difference, where they differ.

Works from the per-sample records alone, so a resumed run summarises exactly what its
records hold. For every metric whose values are 0/1 (acc, acc_norm, exact_match): each
system's mean with its Wilson 95 % interval, and the paired bootstrap 95 % interval of
ensemble minus the best member on that metric; the documents where the ensemble and the best
member by the task's first metric differ go to ``differences.jsonl``. On a multiple-choice
task, `unite_logits.evaluation.agreement` adds where the ensemble wins and loses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unite_logits.evaluation.agreement import Agreement, analyse
from unite_logits.evaluation.runs import ENSEMBLE, SystemRun, TaskRun
from unite_logits.evaluation.stats import PairedDiff, paired_bootstrap, proportion

__all__ = ["SystemResult", "Comparison", "compare", "save_report"]


@dataclass(frozen=True)
class SystemResult:
    """One system's value of one metric over the documents, with its 95 % interval (binary metrics)."""

    name: str
    metric: str
    value: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass
class Comparison:
    """The systems of one task on the same documents, and the ensemble against its best member."""

    task: str
    n: int
    metrics: list[str]
    results: list[SystemResult]
    best_member: str | None  # by the first metric
    gains: dict[str, PairedDiff] = field(default_factory=dict)  # per binary metric: ensemble - its best member
    best_members: dict[str, str] = field(default_factory=dict)  # per binary metric: the member gains compare with
    differences: list[dict[str, Any]] = field(default_factory=list)
    agreement: Agreement | None = None

    def result(self, name: str, metric: str) -> SystemResult:
        return next(r for r in self.results if r.name == name and r.metric == metric)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("differences")
        data["n_differences"] = len(self.differences)
        return data

    def to_markdown(self) -> str:
        systems = list(dict.fromkeys(r.name for r in self.results))
        head = "| system | " + " | ".join(self.metrics) + " |"
        lines = [f"### {self.task}: {self.n} documents\n", head, "|---|" + "---|" * len(self.metrics)]
        for name in systems:
            cells = []
            for metric in self.metrics:
                r = self.result(name, metric)
                if r.ci_low is not None and r.ci_high is not None:
                    cells.append(f"{100 * r.value:.1f} [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]")
                else:
                    cells.append(f"{r.value:.4g}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for metric, gain in self.gains.items():
            best = self.best_members.get(metric, self.best_member)
            lines.append(f"\n{metric}: ensemble − best member ({best}) {100 * gain.diff:+.1f} points, "
                         f"95% CI [{100 * gain.low:+.1f}, {100 * gain.high:+.1f}] (paired {gain.method}, n={gain.n})")
        if self.gains:
            first = self.metrics[0]
            better = sum(1 for d in self.differences if d["ensemble"] > d["best_member"])
            worse = len(self.differences) - better
            lines.append(f"\n{first}: the ensemble is right where {self.best_member} is wrong on {better} documents, "
                         f"wrong where it is right on {worse} (differences.jsonl)")
        if self.agreement is not None:
            lines.append(self.agreement.to_markdown().rstrip("\n"))
        return "\n".join(lines) + "\n"

    def save(self, out: Path) -> tuple[Path, Path]:
        """Write ``summary.json``, ``summary.md`` and ``differences.jsonl`` into ``out``."""
        paths = save_report(out, "summary", self.to_dict(), self.to_markdown())
        with (Path(out) / "differences.jsonl").open("w", encoding="utf-8") as handle:
            for row in self.differences:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return paths


def _binary(values: Sequence[float]) -> bool:
    return bool(values) and all(v in (0.0, 1.0) for v in values)


def compare(run: TaskRun, seed: int = 0) -> Comparison:
    """The comparison of ``run``'s systems (members first, then the ensemble if it ran)."""
    keyed = {s.name: {(r["task"], r["doc_id"]): r for r in s.records} for s in run.systems}
    common = sorted(set.intersection(*(set(k) for k in keyed.values()))) if keyed else []
    metrics = [m for m in run.metrics if all(m in keyed[s.name][d]["metrics"] for s in run.systems for d in common)]
    results: list[SystemResult] = []
    values: dict[tuple[str, str], list[float]] = {}
    for system in run.systems:
        for metric in metrics:
            column = [keyed[system.name][d]["metrics"][metric] for d in common]
            values[(system.name, metric)] = column
            if _binary(column):
                p = proportion([v == 1.0 for v in column])
                results.append(SystemResult(system.name, metric, p.value, p.n, p.low, p.high))
            else:
                results.append(SystemResult(system.name, metric, sum(column) / max(len(column), 1), len(column)))
    members = [s.name for s in run.systems if s.name != ENSEMBLE]
    first = metrics[0] if metrics else None
    best = max(members, key=lambda name: sum(values[(name, first)])) if members and first else None  # ties: first
    comparison = Comparison(run.name, len(common), metrics, results, best)
    if best is None or ENSEMBLE not in keyed:
        return comparison
    for metric in metrics:
        best_here = max(members, key=lambda name: sum(values[(name, metric)]))  # ties: the first member
        ours, theirs = values[(ENSEMBLE, metric)], values[(best_here, metric)]
        if _binary(ours) and _binary(theirs):
            comparison.gains[metric] = paired_bootstrap([v == 1.0 for v in ours], [v == 1.0 for v in theirs], seed=seed)
            comparison.best_members[metric] = best_here
    comparison.agreement = analyse({name: {d: keyed[name][d] for d in common} for name in keyed}, members, ENSEMBLE,
                                   best, seed=seed)
    if first is not None:
        for doc, ours_value, theirs_value in zip(common, values[(ENSEMBLE, first)], values[(best, first)]):
            if ours_value != theirs_value:
                comparison.differences.append({
                    "task": doc[0], "doc_id": doc[1], "metric": first, "ensemble": ours_value, "best_member": theirs_value,
                    "context": keyed[ENSEMBLE][doc]["context"][-300:], "target": keyed[ENSEMBLE][doc]["target"],
                    "outputs": {name: keyed[name][doc]["output"] for name in keyed},
                })
    return comparison


def save_report(out_dir: Path, stem: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write a report as ``<stem>.json`` and ``<stem>.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    return json_path, md_path
