"""Draft and verify: the rules that do not depend on a generation loop.

The primary drafts a few tokens alone; the members then read the whole draft in one pass each,
and at every drafted position UniTE's rule decides as it would have decided token by token.
This module holds the bookkeeping, free of torch and transformers (the command line reads its
defaults cheaply):

* `unite_logits.core.sampling.accept_or_resample` (with torch): speculative sampling;
* `DraftSchedule`: how many tokens to draft next, adapted to how many the last round kept
  (transformers' "heuristic" assistant schedule: +2 after a round that kept every draft, -1
  otherwise), or constant;
* `SpeculationStats`: per generation, how many tokens were drafted, accepted as drafted, and
  chosen by the ensemble against the draft (or after it), in how many rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .checks import check_int

__all__ = ["DEFAULT_DRAFT_TOKENS", "DraftSchedule", "Schedule", "SpeculationStats", "MAX_DRAFT_TOKENS"]

Schedule = Literal["heuristic", "constant"]
DEFAULT_DRAFT_TOKENS = 4
"""Tokens the primary drafts in a generation's first round."""
MAX_DRAFT_TOKENS = 32
"""The most tokens one round drafts (rollbacks stay within every cache's margin)."""


@dataclass
class SpeculationStats:
    """What draft-and-verify did in one generation, summed over its rows.

    Attributes:
        rounds: draft-then-verify rounds.
        drafted: tokens the primary drafted.
        accepted: drafted tokens kept as drafted.
        ensembled: tokens the ensemble chose itself (against a draft, or after a kept draft).
        gated: positions kept without asking the members (the confidence gate).
        member_passes: forward passes (reads) per member, summed over members.
    """

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    ensembled: int = 0
    gated: int = 0
    member_passes: int = 0

    @property
    def emitted(self) -> int:
        return self.accepted + self.ensembled

    @property
    def acceptance(self) -> float:
        """The share of drafted tokens kept (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"rounds": self.rounds, "drafted": self.drafted, "accepted": self.accepted,
                "ensembled": self.ensembled, "gated": self.gated, "member_passes": self.member_passes,
                "acceptance": round(self.acceptance, 4)}


class DraftSchedule:
    """Tokens to draft per round: starts at ``tokens``; "heuristic" adds 2 after a round in which
    every row kept its whole draft and takes 1 away otherwise (never below 1 nor above
    `MAX_DRAFT_TOKENS`), "constant" keeps it."""

    def __init__(self, tokens: int, schedule: Schedule = "heuristic") -> None:
        self.start = check_int("num_draft_tokens", tokens, minimum=1)
        if self.start > MAX_DRAFT_TOKENS:
            raise ValueError(f"`num_draft_tokens` has to be at most {MAX_DRAFT_TOKENS}, but is {tokens}")
        if schedule not in ("heuristic", "constant"):
            raise ValueError(f"`draft_schedule` has to be 'heuristic' or 'constant', but is {schedule!r}")
        self.schedule = schedule
        self.tokens = self.start

    def reset(self) -> None:
        self.tokens = self.start

    def update(self, all_kept: bool) -> None:
        """After a round: ``all_kept`` when every row kept every token it drafted."""
        if self.schedule == "heuristic":
            self.tokens = min(MAX_DRAFT_TOKENS, self.tokens + 2) if all_kept else max(1, self.tokens - 1)
