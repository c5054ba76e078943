"""The verdict of the compatibility report: which pairs are worth ensembling, and which set.

The paper's rules are the default: two models are worth ensembling when their accuracies
are within 10 points and their responses are of comparable length (here: ratio of mean
lengths in characters at most 2x). Overlap and agreement are reported for judgement and
only gate the verdict when a threshold for them is given. Pure arithmetic; no model runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from unite_logits.evaluation.selection.measure import CandidateProfile

__all__ = ["Thresholds", "PairReport", "judge_pair", "choose_set"]


@dataclass(frozen=True)
class Thresholds:
    """Verdict rules; defaults are the paper's (10-point gap, comparable length)."""

    max_accuracy_gap: float = 0.10
    max_length_ratio: float = 2.0
    min_vocab_overlap: float | None = None
    min_top_k_agreement: float | None = None


@dataclass
class PairReport:
    """Measures of one pair, its verdict and one reason per rule."""

    a: str
    b: str
    accuracy_gap: float
    length_ratio: float
    vocab_overlap_a_in_b: float | None = None
    vocab_overlap_b_in_a: float | None = None
    top_k_agreement_a_in_b: float | None = None
    top_k_agreement_b_in_a: float | None = None
    compatible: bool = False
    reasons: list[str] = field(default_factory=list)


def _length_ratio(a: CandidateProfile, b: CandidateProfile) -> float:
    short, long_ = sorted((a.mean_chars, b.mean_chars))
    if long_ == 0:
        return 1.0
    return float("inf") if short == 0 else long_ / short


def judge_pair(
    a: CandidateProfile,
    b: CandidateProfile,
    t: Thresholds,
    *,
    vocab_overlap_a_in_b: float | None = None,
    vocab_overlap_b_in_a: float | None = None,
    top_k_agreement_a_in_b: float | None = None,
    top_k_agreement_b_in_a: float | None = None,
) -> PairReport:
    """Verdict with one reason per rule (passed or failed); a measure left None is not judged."""
    pair = PairReport(
        a.name, b.name, abs(a.accuracy - b.accuracy), _length_ratio(a, b),
        vocab_overlap_a_in_b, vocab_overlap_b_in_a, top_k_agreement_a_in_b, top_k_agreement_b_in_a,
    )
    checks = [
        (pair.accuracy_gap <= t.max_accuracy_gap + 1e-12,
         f"accuracy gap {100 * pair.accuracy_gap:.1f} pts {'≤' if pair.accuracy_gap <= t.max_accuracy_gap + 1e-12 else '>'} {100 * t.max_accuracy_gap:.0f}"),
        (pair.length_ratio <= t.max_length_ratio,
         f"length ratio {pair.length_ratio:.2f}x {'≤' if pair.length_ratio <= t.max_length_ratio else '>'} {t.max_length_ratio:g}x"),
    ]
    overlaps = [v for v in (pair.vocab_overlap_a_in_b, pair.vocab_overlap_b_in_a) if v is not None]
    if t.min_vocab_overlap is not None and overlaps:
        ok = min(overlaps) >= t.min_vocab_overlap
        checks.append((ok, f"vocabulary overlap {100 * min(overlaps):.1f}% {'≥' if ok else '<'} {100 * t.min_vocab_overlap:.0f}%"))
    agreements = [v for v in (pair.top_k_agreement_a_in_b, pair.top_k_agreement_b_in_a) if v is not None]
    if t.min_top_k_agreement is not None and agreements:
        ok = min(agreements) >= t.min_top_k_agreement
        checks.append((ok, f"top-k agreement {100 * min(agreements):.1f}% {'≥' if ok else '<'} {100 * t.min_top_k_agreement:.0f}%"))
    pair.compatible = all(ok for ok, _ in checks)
    pair.reasons = [reason for _, reason in checks]
    return pair


def choose_set(profiles: Sequence[CandidateProfile], pairs: Sequence[PairReport]) -> tuple[list[str], list[str]]:
    """Best model as primary, then each next-best candidate compatible with all chosen."""
    by_pair = {frozenset((p.a, p.b)): p for p in pairs}
    ranked = sorted(profiles, key=lambda c: -c.accuracy)
    chosen, reasons = [ranked[0].name], [f"{ranked[0].name}: primary (highest accuracy, {100 * ranked[0].accuracy:.1f})"]
    for cand in ranked[1:]:
        clashes = [by_pair[frozenset((cand.name, c))] for c in chosen if not by_pair[frozenset((cand.name, c))].compatible]
        if clashes:
            why = "; ".join(f"with {p.a if p.b == cand.name else p.b}: " + ", ".join(
                r for r in p.reasons if ">" in r or "<" in r) for p in clashes)
            reasons.append(f"{cand.name}: left out ({why})")
        else:
            chosen.append(cand.name)
            reasons.append(f"{cand.name}: added (compatible with {', '.join(chosen[:-1])})")
    return chosen, reasons
