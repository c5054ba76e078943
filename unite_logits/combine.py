"""The combine rule: renormalise each model over the union, average, merge onto primary ids.

Rule, per step:

1. Candidates the primary cannot emit (no primary id) or that the primary's own logits
   processors already ruled out (score ``-inf``) are dropped for every model.
2. Each model's probabilities over the remaining candidates are divided by their sum; a model
   whose sum is 0 (it gives none of them any mass) abstains.
3. The ensemble probability is the weighted mean over the models that did not abstain, the
   weights renormalised over those models: only ratios between weights matter.
4. Candidates that share a primary id (a text the primary can only start with the same first
   piece) merge by *adding* their probabilities, so the result still sums to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Combined", "combine"]


@dataclass(frozen=True)
class Combined:
    """Ensembled distribution over primary ids, and who took part."""

    probs: dict[int, float]
    participants: tuple[int, ...]
    kept: tuple[int, ...]


def combine(
    aligned: Sequence[Sequence[float]],
    weights: Sequence[float],
    emit_ids: Sequence[int | None],
    allowed: Sequence[bool],
) -> Combined:
    """Combine per-model aligned probabilities into one distribution over primary ids.

    Args:
        aligned: ``aligned[m][c]``: model ``m``'s probability for union candidate ``c``.
        weights: one non-negative weight per model.
        emit_ids: the primary id of each candidate (None: the primary cannot emit it).
        allowed: False for candidates the primary's processors masked out.

    Returns:
        The distribution (empty if no model gives any allowed candidate mass), the indices of
        the models that took part, and the indices of the candidates that were kept.
    """
    kept = [c for c, (pid, ok) in enumerate(zip(emit_ids, allowed)) if pid is not None and ok]
    mixture = [0.0] * len(kept)
    participants: list[int] = []
    weight_total = 0.0
    for model_index, (values, weight) in enumerate(zip(aligned, weights)):
        if weight <= 0:
            continue
        selected = [values[c] for c in kept]
        total = sum(selected)
        if total <= 0:
            continue
        participants.append(model_index)
        weight_total += weight
        for position, value in enumerate(selected):
            mixture[position] += weight * value / total
    probs: dict[int, float] = {}
    if weight_total > 0:
        for position, candidate in enumerate(kept):
            pid = emit_ids[candidate]
            assert pid is not None
            probs[pid] = probs.get(pid, 0.0) + mixture[position] / weight_total
    return Combined(probs, tuple(participants), tuple(kept))
