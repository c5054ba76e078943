"""Speculative sampling: a draft from a proposal, kept or replaced so the token follows the target.

Leviathan et al. 2023 and Chen et al. 2023: with the primary's distribution as the proposal
``p`` and the ensemble's as the target ``q``, keep the draft with probability ``min(1, q/p)``,
else draw from ``max(q - p, 0)`` renormalised; the token is then distributed as ``q`` exactly,
whatever ``p`` is. Draft-and-verify samples this way (`unite_logits.speculative`).
"""

from __future__ import annotations

import torch

__all__ = ["accept_or_resample"]


def accept_or_resample(draft: int | None, p: torch.Tensor | None, q: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[int, bool]:
    """The token at one position, and whether it is the draft.

    Args:
        draft: the drafted token, drawn from ``p`` (None: no draft here; draw from ``q``).
        p: ``(vocab,)`` the proposal the draft was drawn from (probabilities).
        q: ``(vocab,)`` the target distribution (probabilities).

    The result is distributed as ``q`` whatever ``p`` is (the draft being a draw from ``p``).
    Cost: O(vocab) tensor work.
    """
    if draft is None or p is None:
        return int(torch.multinomial(q, 1, generator=generator)), False
    p_draft, q_draft = float(p[draft]), float(q[draft])
    if p_draft > 0 and float(torch.rand((), generator=generator)) * p_draft < q_draft:
        return draft, True
    residual = (q - p).clamp(min=0)
    if float(residual.sum()) <= 0:  # q == p up to rounding: the draft was already a draw from q
        residual = q
    return int(torch.multinomial(residual, 1, generator=generator)), False
