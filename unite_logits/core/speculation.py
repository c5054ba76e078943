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
  chosen by the ensemble against the draft (or after it), in how many rounds; and the same
  per batch row (``rows``), so a server can tell each request its own share of a batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
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
        rows: the same per batch row (a row's ``rounds`` are those it took part in, its
            ``member_passes`` the reads that included it); empty for a row's own stats.
    """

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    ensembled: int = 0
    gated: int = 0
    member_passes: int = 0
    rows: list["SpeculationStats"] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def of_rows(cls, rows: Iterable["SpeculationStats"]) -> "SpeculationStats":
        """The work of several rows of one batch (e.g. one request's choices): counts summed;
        ``rounds`` and ``member_passes`` are the most of any row, since the rows were read
        together in the same rounds."""
        rows = list(rows)
        return cls(rounds=max((r.rounds for r in rows), default=0), drafted=sum(r.drafted for r in rows),
                   accepted=sum(r.accepted for r in rows), ensembled=sum(r.ensembled for r in rows),
                   gated=sum(r.gated for r in rows), member_passes=max((r.member_passes for r in rows), default=0))

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
