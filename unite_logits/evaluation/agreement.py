"""Where an ensemble wins or loses on a multiple-choice task, from the records alone.

lm-eval's multiple-choice records hold each choice's log-likelihood under every system. From
them, for ``acc`` (the choice with the highest log-likelihood):

* each document is put in a bucket by how many members pick the gold answer. The ensemble's
  accuracy per bucket says what it does with the members' disagreements (the only documents
  where it can beat its best member) and how often it loses an answer that every member had;
* three references that need no model run: the oracle (any member right: the ceiling of any
  combination of these members), and two ways of combining whole answers instead of tokens,
  the mean of the members' choice distributions (a softmax over each member's choice
  log-likelihoods) and their product (the summed log-likelihoods). Each comes with the paired
  bootstrap interval against the best member, like the ensemble.

Documents whose output is not one log-likelihood per choice with an integer gold index (a
generative task) are not analysed: `analyse` returns None for such a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unite_logits.evaluation.stats import PairedDiff, paired_bootstrap

__all__ = ["Agreement", "Bucket", "Reference", "analyse"]


@dataclass(frozen=True)
class Bucket:
    """Documents on which ``members_right`` of the members pick the gold answer."""

    members_right: int
    n: int
    ensemble_right: int
    best_member_right: int  # the ensemble beats its best member by the sum of the differences


@dataclass(frozen=True)
class Reference:
    """A model-free combination of the members (or the oracle), against the best member."""

    key: str  # mean_probability, sum_logprob or oracle
    name: str
    accuracy: float
    versus_best: PairedDiff


@dataclass
class Agreement:
    """The ensemble against its members' agreement, on ``n`` multiple-choice documents."""

    members: list[str]
    best_member: str
    n: int
    ensemble_accuracy: float
    buckets: list[Bucket]
    references: list[Reference] = field(default_factory=list)

    def to_markdown(self) -> str:
        total = len(self.members)
        lines = ["\nacc by how many members pick the gold answer (argmax of the choices' log-likelihoods):\n",
                 f"| members right | documents | ensemble right | {self.best_member} right |", "|---|---|---|---|"]
        for b in self.buckets:
            share = f"{100 * b.ensemble_right / b.n:.1f} %" if b.n else "-"
            lines.append(f"| {b.members_right} of {total} | {b.n} | {b.ensemble_right} ({share}) | {b.best_member_right} |")
        lines.append(f"\nreferences against {self.best_member} (acc, points; paired bootstrap 95 % CI):\n")
        lines += ["| combination | acc | − best member |", "|---|---|---|",
                  f"| UniTE ensemble (token level) | {100 * self.ensemble_accuracy:.1f} | |"]
        for ref in self.references:
            d = ref.versus_best
            lines.append(f"| {ref.name} | {100 * ref.accuracy:.1f} | {100 * d.diff:+.1f} [{100 * d.low:+.1f}, "
                         f"{100 * d.high:+.1f}] |")
        return "\n".join(lines) + "\n"


def _choice_scores(record: Mapping[str, Any]) -> tuple[np.ndarray, int] | None:
    """A record's choice log-likelihoods and gold index, or None if it is not multiple choice."""
    output, target = record.get("output"), record.get("target")
    if not isinstance(output, list) or len(output) < 2 or not all(isinstance(v, (int, float)) for v in output):
        return None
    try:
        gold = int(str(target))
    except ValueError:
        return None
    scores = np.asarray(output, dtype=float)
    if not 0 <= gold < len(scores) or not np.all(np.isfinite(scores)):
        return None
    return scores, gold


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max())
    return shifted / shifted.sum()


def analyse(records: Mapping[str, Mapping[Any, Mapping[str, Any]]], members: Sequence[str], ensemble: str,
            best_member: str, seed: int = 0) -> Agreement | None:
    """The agreement analysis of ``records`` (system -> document key -> record) on the documents
    every system has; None unless every one of them is multiple choice. Cost: O(documents x
    choices), plus 10,000 bootstrap resamples per reference."""
    keys = sorted(set.intersection(*(set(records[name]) for name in [*members, ensemble])))
    if not keys or len(members) < 2:
        return None
    parsed: dict[str, list[tuple[np.ndarray, int]]] = {}
    for name in [*members, ensemble]:
        column = [_choice_scores(records[name][key]) for key in keys]
        if any(item is None for item in column):
            return None
        parsed[name] = [item for item in column if item is not None]
    gold = [g for _, g in parsed[ensemble]]
    right = {name: [int(np.argmax(s)) == g for s, g in parsed[name]] for name in parsed}
    counts = [sum(right[m][i] for m in members) for i in range(len(keys))]
    best = right[best_member]
    buckets = [Bucket(k, sum(c == k for c in counts), sum(r for c, r in zip(counts, right[ensemble]) if c == k),
                      sum(r for c, r in zip(counts, best) if c == k)) for k in range(len(members) + 1)]
    mean_probability, summed = [], []
    for i, g in enumerate(gold):
        choices = [parsed[m][i][0] for m in members]
        mean_probability.append(int(np.argmax(sum(_softmax(s) for s in choices))) == g)
        summed.append(int(np.argmax(sum(choices))) == g)
    oracle = [c > 0 for c in counts]
    references = [Reference(key, name, sum(flags) / len(flags), paired_bootstrap(flags, best, seed=seed))
                  for key, name, flags in (
                      ("mean_probability", "whole answers: mean of the members' choice probabilities", mean_probability),
                      ("sum_logprob", "whole answers: sum of the members' log-likelihoods", summed),
                      ("oracle", "oracle: any member right", oracle))]
    return Agreement(list(members), best_member, len(keys), sum(right[ensemble]) / len(keys), buckets, references)
