"""The compatibility report as data, Markdown and files (``<task>.select.json`` / ``.md``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unite_logits.evaluation.selection.judge import PairReport, Thresholds
from unite_logits.evaluation.selection.measure import CandidateProfile
from unite_logits.evaluation.summary import save_report

__all__ = ["SelectReport"]


@dataclass
class SelectReport:
    """Every candidate's profile, every pair's verdict and the suggested set (primary first)."""

    task: str
    thresholds: Thresholds
    candidates: list[CandidateProfile]
    pairs: list[PairReport]
    best_set: list[str]
    best_set_reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        pct = lambda x: "–" if x is None else f"{100 * x:.1f}"  # noqa: E731
        lines = [f"### Compatibility on {self.task}\n",
                 "| candidate | n | accuracy | mean chars | mean words | style (step share) |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {c.name} | {c.n} | {pct(c.accuracy)} | {c.mean_chars:.0f} | {c.mean_words:.1f} | "
                  f"{c.style} ({pct(c.step_share)}%) |" for c in self.candidates]
        lines += ["", "| pair | acc. gap (pts) | length ratio | vocab a⊂b / b⊂a (%) | "
                  "top-k agree a→b / b→a (%) | verdict |", "|---|---|---|---|---|---|"]
        for p in self.pairs:
            lines.append(
                f"| {p.a} + {p.b} | {pct(p.accuracy_gap)} | {p.length_ratio:.2f}x | "
                f"{pct(p.vocab_overlap_a_in_b)} / {pct(p.vocab_overlap_b_in_a)} | "
                f"{pct(p.top_k_agreement_a_in_b)} / {pct(p.top_k_agreement_b_in_a)} | "
                f"{'compatible' if p.compatible else 'not compatible'}: {'; '.join(p.reasons)} |"
            )
        lines += ["", f"**Suggested set:** {', '.join(self.best_set)} (primary first)"]
        lines += [f"- {r}" for r in self.best_set_reasons]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: Path) -> tuple[Path, Path]:
        """Write ``<task>.select.json`` and ``<task>.select.md`` into ``out_dir``."""
        return save_report(out_dir, f"{self.task}.select", self.to_dict(), self.to_markdown())
