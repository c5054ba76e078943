"""The compatibility report as data, Markdown and files (``<task>.select.json`` / ``.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unite_logits.evaluation.selection.judge import PairReport, Thresholds
from unite_logits.evaluation.selection.measure import CandidateProfile
from unite_logits.evaluation.stats import paired_bootstrap, proportion
from unite_logits.evaluation.summary import save_report

if TYPE_CHECKING:
    from unite_logits.evaluation.selection.search import Choice, Option

__all__ = ["Determined", "SelectReport", "held_out_rows"]


def held_out_rows(flags: dict[str, dict[Any, bool]], members: Sequence[str], equal: str, chosen: str) -> dict[str, Any]:
    """The held-out table: each system's score with its 95 % interval, the best member there, and
    the equal-weight and chosen ensembles against it (paired bootstrap over the same documents)."""
    docs = sorted(set.intersection(*(set(f) for f in flags.values())))
    column = {name: [f[d] for d in docs] for name, f in flags.items()}
    systems = {}
    for name, values in column.items():
        p = proportion(values)
        systems[name] = {"score": round(p.value, 4), "low": round(p.low, 4), "high": round(p.high, 4)}
    best = max(members, key=lambda name: sum(column[name]))  # ties: the first
    out: dict[str, Any] = {"documents": len(docs), "systems": systems, "best_member": best, "chosen": chosen}
    for label, name in (("equal_minus_best", equal), ("chosen_minus_best", chosen)):
        gain = paired_bootstrap(column[name], column[best])
        out[label] = {"diff": round(gain.diff, 4), "low": round(gain.low, 4), "high": round(gain.high, 4)}
    return out


@dataclass
class Determined:
    """What the search looked at on the dev slice, what it chose and why, and the held-out table."""

    metric: str
    split: dict[str, Any]
    options: list["Option"]
    choice: "Choice"
    held_out: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        ranked = sorted(self.options, key=lambda o: -o.score)
        return {"metric": self.metric, "split": self.split, "chosen": self.choice.option.spec.to_dict(),
                "reasons": self.choice.reasons,
                "dev": [{"system": o.name, "score": round(o.score, 4), "n": len(o.flags)} for o in ranked],
                "held_out": self.held_out}

    def to_markdown(self) -> str:
        pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
        split = self.split
        lines = [f"### Determined on the dev slice ({split['dev_documents']} documents; "
                 f"{split['held_out_documents']} held out, seed {split['seed']})\n",
                 f"**Chosen:** {self.choice.option.name} ({self.metric} {pct(self.choice.option.score)} on dev)", ""]
        lines += [f"- {reason}" for reason in self.choice.reasons]
        ranked = sorted(self.options, key=lambda o: -o.score)
        lines += ["", f"| option (best 10 of {len(ranked)}) | dev {self.metric} |", "|---|---|"]
        lines += [f"| {o.name} | {pct(o.score)} |" for o in ranked[:10]]
        if self.held_out is not None:
            held = self.held_out
            lines += ["", f"#### Held out ({held['documents']} documents, never looked at while choosing)", "",
                      f"| system | {self.metric} [95 % CI] |", "|---|---|"]
            for name, row in held["systems"].items():
                lines.append(f"| {name} | {pct(row['score'])} [{pct(row['low'])}, {pct(row['high'])}] |")
            for label, key in (("equal weights", "equal_minus_best"), (f"chosen ({held['chosen']})", "chosen_minus_best")):
                gain = held[key]
                lines.append(f"\n{label} minus the best member ({held['best_member']}): {100 * gain['diff']:+.1f} "
                             f"[{100 * gain['low']:+.1f}, {100 * gain['high']:+.1f}] points")
        return "\n".join(lines) + "\n"


@dataclass
class SelectReport:
    """Every candidate's profile, every pair's verdict and the suggested set (primary first)."""

    task: str
    thresholds: Thresholds
    candidates: list[CandidateProfile]
    pairs: list[PairReport]
    best_set: list[str]
    best_set_reasons: list[str]
    determined: Determined | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self) if self.determined is None else {
            **{k: v for k, v in asdict(SelectReport(self.task, self.thresholds, self.candidates, self.pairs,
                                                    self.best_set, self.best_set_reasons)).items()},
            "determined": self.determined.to_dict()}
        return out

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
        if self.determined is not None:
            lines += ["", self.determined.to_markdown().rstrip("\n")]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: Path) -> tuple[Path, Path]:
        """Write ``<task>.select.json`` and ``<task>.select.md`` into ``out_dir``."""
        return save_report(out_dir, f"{self.task}.select", self.to_dict(), self.to_markdown())
