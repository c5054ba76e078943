"""The combine rule: merge candidates onto primary ids, renormalise each model, average.

Rule, per step:

1. Candidates the primary cannot emit (no primary id) or that the primary's own logits
   processors already ruled out (score ``-inf``) are dropped for every model.
2. Candidates that fall on the same primary id (texts the primary can only start with the
   same first piece) merge: a model's probability for the merged candidate is the sum over
   the *distinct* tokens of that model that scored them, so one token never counts twice.
3. Each model's probabilities over the remaining primary ids are divided by their sum; a
   model whose sum is 0 (it gives none of them any mass) abstains.
4. The ensemble probability is the weighted mean over the models that did not abstain, the
   weights renormalised over those models: only ratios between weights matter. It sums to 1
   over the union.
5. ``mass``: the weighted mean, over the same models, of the probability each gave the union
   before renormalising. The ensemble's log-probability of a candidate is reported as
   ``log(probs[c] * mass)``: the union keeps the mass its models put on it, shared out by rule
   4. With one model this is that model's own log-probability, so an ensemble of one scores
   text exactly as the model does; ratios between candidates (and so the choice of greedy
   search or sampling) are those of rule 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .alignment import Aligned

__all__ = ["Combined", "combine"]


@dataclass(frozen=True)
class Combined:
    """Ensembled distribution over primary ids (summing to 1), which models took part, and the
    mass they gave the union (rule 5)."""

    probs: dict[int, float]
    participants: tuple[int, ...]
    mass: float = 1.0


def combine(
    aligned: Sequence[Aligned],
    weights: Sequence[float],
    emit_ids: Sequence[int | None],
    allowed: Sequence[bool],
) -> Combined:
    """Combine per-model aligned probabilities into one distribution over primary ids.

    Args:
        aligned: one `Aligned` per model, over the same union.
        weights: one non-negative weight per model.
        emit_ids: the primary id of each candidate (None: the primary cannot emit it).
        allowed: False for candidates the primary's processors masked out.

    Returns:
        The distribution (empty if no model gives any allowed candidate mass) and the indices
        of the models that took part.
    """
    kept = [c for c, (pid, ok) in enumerate(zip(emit_ids, allowed)) if pid is not None and ok]
    mixture: dict[int, float] = {emit_ids[c]: 0.0 for c in kept}  # type: ignore[misc]
    participants: list[int] = []
    weight_total = 0.0
    mass = 0.0
    for model_index, (model, weight) in enumerate(zip(aligned, weights)):
        if weight <= 0:
            continue
        merged = _merge_onto_primary_ids(model, kept, emit_ids)
        total = sum(merged.values())
        if total <= 0:
            continue
        participants.append(model_index)
        weight_total += weight
        mass += weight * total
        for pid, value in merged.items():
            mixture[pid] += weight * value / total
    if weight_total <= 0:
        return Combined({}, (), 0.0)
    return Combined({pid: value / weight_total for pid, value in mixture.items()}, tuple(participants),
                    min(mass / weight_total, 1.0))


def _merge_onto_primary_ids(model: Aligned, kept: Sequence[int], emit_ids: Sequence[int | None]) -> dict[int, float]:
    merged: dict[int, float] = {}
    counted: set[tuple[int, object]] = set()
    for candidate in kept:
        pid = emit_ids[candidate]
        assert pid is not None
        source = model.sources[candidate]
        if source is None or (pid, source) in counted:
            merged.setdefault(pid, 0.0)
            continue
        counted.add((pid, source))
        merged[pid] = merged.get(pid, 0.0) + model.probs[candidate]
    return merged
