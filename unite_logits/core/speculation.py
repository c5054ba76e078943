"""Draft and verify: the rules that do not depend on a generation loop.

The primary drafts a few tokens alone; the members then read the whole draft in one pass each,
and at every drafted position UniTE's rule decides as it would have decided token by token.
This module holds the bookkeeping, free of torch and transformers (the command line reads its
defaults cheaply):

* `unite_logits.core.sampling.accept_or_resample` (with torch): speculative sampling;
* `DraftSchedule`: how many tokens to draft next: the length that makes an emitted token
  cheapest by the rounds so far ("cost": acceptance and the time of a draft pass and of a
  verification, measured), transformers' "heuristic" assistant schedule (+2 after a round that
  kept every draft, -1 otherwise), or constant;
* `SpeculationStats`: per generation, how many tokens were drafted, accepted as drafted, and
  chosen by the ensemble against the draft (or after it), in how many rounds; and the same
  per batch row (``rows``), so a server can tell each request its own share of a batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .checks import check_int

__all__ = ["DEFAULT_DRAFT_TOKENS", "DraftSchedule", "RoundCost", "SCHEDULES", "Schedule", "SpeculationStats",
           "MAX_DRAFT_TOKENS"]

Schedule = Literal["cost", "heuristic", "constant"]
SCHEDULES: tuple[Schedule, ...] = ("cost", "heuristic", "constant")
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


@dataclass(frozen=True)
class RoundCost:
    """What one round did and took: per row (positions judged, of them those where the
    ensemble's token was the primary's own top token: a kept draft); the primary's passes;
    how many of them ran alone (before the members started reading beside the last ones) and
    their seconds; the seconds of the whole round."""

    rows: Sequence[tuple[int, int]]
    passes: int = 0
    solo_passes: int = 0
    solo_seconds: float = 0.0
    seconds: float = 0.0


class DraftSchedule:
    """Tokens to draft per round, from ``tokens`` in the first round.

    * ``"cost"`` (default): the draft length that minimises the expected time per emitted token,
      ``((n + 1) * d + v) / E(n)``, where ``d`` is the time of one primary pass (measured on
      the passes that ran alone), ``v`` what a round takes beyond its primary passes (the
      members' reads where they do not overlap the primary's last pass, ensembling), and ``E(n) = (1 - a**(n+1)) / (1 - a)``
      the tokens a round of ``n`` drafts emits when each drafted position is kept with
      probability ``a`` (the share of judged positions where the ensemble chose the primary's
      top token, with a prior of one of each; the position after a draft counts too, so rounds
      without drafts still teach it).
      Recent rounds count most (weights decay by `DECAY` per round). Costs a few dozen float
      operations per round. A draft of 0 tokens is a per-token step (see below).
    * ``"heuristic"``: transformers' assistant schedule, +2 after a round in which every row kept
      its whole draft, -1 otherwise.
    * ``"constant"``: ``tokens`` throughout.

    "cost" given no `RoundCost` (the generation loop gives none when sampling: measured times
    differ from run to run, and a draft length that followed them would make the same seed
    draw different text) adapts as "heuristic" does.

    Between 1 and `MAX_DRAFT_TOKENS`; "cost" may choose 0, a round of one position, which costs
    what a step of the per-token path costs (where drafts are seldom kept, drafting does not
    pay: the schedule then falls back to it, and measures again). The choice changes speed only:
    every draft length gives the same tokens (greedy) or the same distribution (sampling).
    """

    DECAY = 0.8

    def __init__(self, tokens: int, schedule: Schedule = "cost") -> None:
        self.start = check_int("num_draft_tokens", tokens, minimum=1)
        if self.start > MAX_DRAFT_TOKENS:
            raise ValueError(f"`num_draft_tokens` has to be at most {MAX_DRAFT_TOKENS}, but is {tokens}")
        if schedule not in SCHEDULES:
            raise ValueError(f"`draft_schedule` has to be one of {', '.join(map(repr, SCHEDULES))}, but is {schedule!r}")
        self.schedule = schedule
        self.reset()

    def reset(self) -> None:
        """Back to the first round's length, forgetting what was measured (a new generation)."""
        self.tokens = self.start
        self._kept = self._judged = 0.0
        self._pass_seconds: float | None = None
        self._verify_seconds: float | None = None

    @property
    def acceptance(self) -> float:
        """The estimated chance that a drafted position is kept (prior: one kept, one not)."""
        return (self._kept + 1) / (self._judged + 2)

    def update(self, all_kept: bool, cost: RoundCost | None = None) -> None:
        """After a round: ``all_kept`` when every row kept every token it drafted; ``cost``
        what the round did and took (the "cost" schedule learns from it; without it, it adapts
        as "heuristic"; the others ignore it)."""
        if self.schedule == "cost" and cost is not None:
            self._learn(cost)
            self.tokens = self.cheapest()
        elif self.schedule != "constant":  # "heuristic", or "cost" told no times
            self.tokens = min(MAX_DRAFT_TOKENS, self.tokens + 2) if all_kept else max(1, self.tokens - 1)

    def _learn(self, cost: RoundCost) -> None:
        self._kept = self.DECAY * self._kept + sum(kept for _, kept in cost.rows)
        self._judged = self.DECAY * self._judged + sum(judged for judged, _ in cost.rows)
        if cost.solo_passes:
            self._pass_seconds = _blend(self._pass_seconds, cost.solo_seconds / cost.solo_passes, self.DECAY)
        if self._pass_seconds is not None:
            rest = max(0.0, cost.seconds - cost.passes * self._pass_seconds)
            self._verify_seconds = _blend(self._verify_seconds, rest, self.DECAY)

    def cheapest(self) -> int:
        """The draft length of least expected time per emitted token, by what was measured."""
        if self._pass_seconds is None or self._verify_seconds is None:
            return self.tokens
        a, d, v = self.acceptance, self._pass_seconds, self._verify_seconds
        return min(range(MAX_DRAFT_TOKENS + 1), key=lambda n: ((n + 1) * d + v) * (1 - a) / (1 - a ** (n + 1)))


def _blend(old: float | None, new: float, decay: float) -> float:
    return new if old is None else decay * old + (1 - decay) * new
