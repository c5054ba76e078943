"""What the ensemble did at each step: off by default, free when off."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["StepRecord"]


@dataclass(frozen=True)
class StepRecord:
    """One decoding step of one batch row.

    Attributes:
        step: index of the token being chosen (0 = first generated token).
        row: batch row.
        union_size: number of distinct candidates in the union.
        top1: each model's own most likely next text (``"<eos>"`` for end of sequence).
        winner: the ensembled best candidate's text.
        proposers: the models whose top-k contained the winner.
        prob: the ensembled probability of the winner.
        abstained: models that took no part in this step: waiting for an incomplete
            character, no mass on the union, past its context window, or weight 0.
        member_ms: per auxiliary, milliseconds its work for this step took (the part done
            ahead of time, while the primary ran, included).
        wait_ms: milliseconds the processor waited for the auxiliaries during this step
            (shared by the rows of one step).
    """

    step: int
    row: int
    union_size: int
    top1: dict[str, str]
    winner: str
    proposers: tuple[str, ...]
    prob: float
    abstained: tuple[str, ...] = field(default=())
    member_ms: dict[str, float] = field(default_factory=dict)
    wait_ms: float = 0.0
