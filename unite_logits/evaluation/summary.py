"""Turn per-item records into accuracies, the ensemble's gain, Markdown and JSON.

Works from the records alone (not from in-memory state), so a resumed or re-read run
summarises exactly what is on disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unite_logits.evaluation.stats import PairedDiff, paired_bootstrap, proportion

__all__ = ["ENSEMBLE", "SystemResult", "ModeSummary", "Summary", "summarize"]

ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class SystemResult:
    """One member alone, or the ensemble, on the evaluated items."""

    name: str
    correct: int
    n: int
    accuracy: float
    ci_low: float
    ci_high: float
    mean_tokens: float
    mean_seconds: float
    no_answer: int = 0  # responses with no readable answer (counted wrong)


@dataclass(frozen=True)
class ModeSummary:
    task: str
    mode: str
    n: int
    n_skipped: int
    systems: list[SystemResult]
    best_member: str | None
    gain: PairedDiff | None  # ensemble minus best member

    def system(self, name: str) -> SystemResult:
        return next(s for s in self.systems if s.name == name)


@dataclass
class Summary:
    """Results of one ``evaluate`` call: one ``ModeSummary`` per mode run."""

    task: str
    modes: dict[str, ModeSummary] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "modes": {m: asdict(s) for m, s in self.modes.items()}}

    def to_markdown(self) -> str:
        parts = []
        for mode, s in self.modes.items():
            parts.append(f"### {s.task} ({mode}): {s.n} items, {s.n_skipped} skipped as unscorable\n")
            parts.append("| system | correct / n | accuracy | 95% CI (Wilson) | no answer | mean tokens | mean s/item |")
            parts.append("|---|---|---|---|---|---|---|")
            for r in s.systems:
                parts.append(
                    f"| {r.name} | {r.correct} / {r.n} | {100 * r.accuracy:.1f} | "
                    f"[{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}] | {r.no_answer} | {r.mean_tokens:.1f} | {r.mean_seconds:.2f} |"
                )
            if s.gain is not None:
                g = s.gain
                parts.append(
                    f"\nensemble − best member ({s.best_member}): {100 * g.diff:+.1f} points, "
                    f"95% CI [{100 * g.low:+.1f}, {100 * g.high:+.1f}] (paired {g.method}, n={g.n})"
                )
            parts.append("")
        return "\n".join(parts)

    def save(self, out_dir: Path) -> tuple[Path, Path]:
        """Write ``<task>.summary.json`` and ``<task>.summary.md`` into ``out_dir``."""
        return save_report(out_dir, f"{self.task}.summary", self.to_dict(), self.to_markdown())


def save_report(out_dir: Path, stem: str, data: dict, markdown: str) -> tuple[Path, Path]:
    """Write a report as ``<stem>.json`` and ``<stem>.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    return json_path, md_path


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(
    task: str,
    mode: str,
    records: Sequence[Mapping[str, Any]],
    member_names: Sequence[str],
    n_skipped: int = 0,
    seed: int = 0,
) -> ModeSummary:
    """Accuracy with Wilson CI per system; paired bootstrap of ensemble minus best member."""
    names = list(member_names) + ([ENSEMBLE] if records and ENSEMBLE in records[0]["correct"] else [])
    systems = []
    for name in names:
        p = proportion([bool(r["correct"][name]) for r in records])
        systems.append(SystemResult(
            name, p.correct, p.n, p.value, p.low, p.high,
            _mean([r["tokens"][name] for r in records]),
            _mean([r["seconds"][name] for r in records]),
            sum(r["answers"][name] is None for r in records),
        ))
    members = [s for s in systems if s.name != ENSEMBLE]
    best = max(members, key=lambda s: s.accuracy).name if members else None  # ties: first
    gain = None
    if ENSEMBLE in names and best is not None:
        gain = paired_bootstrap(
            [bool(r["correct"][ENSEMBLE]) for r in records],
            [bool(r["correct"][best]) for r in records],
            seed=seed,
        )
    return ModeSummary(task, mode, len(records), n_skipped, systems, best, gain)
