"""What the ensemble did at each step: off by default, free when off."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .alignment import EOS, candidate_key

if TYPE_CHECKING:
    from .step import RowOutcome
    from .token_bytes import TokenBytes

__all__ = ["StepRecord", "StepRecorder"]


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


class StepRecorder:
    """A `unite_logits.core.step.StepTrace` that appends one `StepRecord` per row to ``records``.

    Args:
        records: where the records go.
        primary_view: the primary's tokenizer as bytes (the winner is one of its ids).
        names: the names of the step's models, primary first.
        everyone: every model of the ensemble, for ``abstained`` (weight-0 members included).
        steps: per row of the step, the token index being chosen.
        batch_rows: per row of the step, its batch row.
        member_ms, wait_ms: the step's timings (see `StepRecord`).
    """

    def __init__(self, records: list[StepRecord], primary_view: TokenBytes, names: Sequence[str], everyone: Sequence[str], steps: Sequence[int],
                 batch_rows: Sequence[int], member_ms: dict[str, float], wait_ms: float) -> None:
        self.records = records
        self.primary_view = primary_view
        self.names = list(names)
        self.everyone = list(everyone)
        self.steps = steps
        self.batch_rows = batch_rows
        self.member_ms = member_ms
        self.wait_ms = wait_ms

    def __call__(self, row: int, outcome: RowOutcome) -> None:
        probs = outcome.combined.probs
        winner = max(probs, key=probs.__getitem__)
        winning = {candidate for candidate, pid in zip(outcome.union, outcome.emit) if pid == winner}
        pairs = list(zip(outcome.models, outcome.proposals))
        proposers = tuple(
            self.names[model] for model, proposal in pairs
            if any(candidate_key(proposal.view, t) in winning for t in proposal.top_ids)
        )
        top1 = {self.names[model]: _show(candidate_key(proposal.view, proposal.top_ids[0])) for model, proposal in pairs}
        voting = {self.names[outcome.models[p]] for p in outcome.combined.participants}
        self.records.append(StepRecord(
            step=self.steps[row],
            row=self.batch_rows[row],
            union_size=len(outcome.union),
            top1=top1,
            winner=_show(candidate_key(self.primary_view, winner)),
            proposers=proposers,
            prob=probs[winner],
            abstained=tuple(name for name in self.everyone if name not in voting),
            member_ms=dict(self.member_ms),
            wait_ms=self.wait_ms,
        ))


def _show(candidate: object) -> str:
    if candidate is EOS:
        return "<eos>"
    if isinstance(candidate, bytes):
        return candidate.decode("utf-8", errors="backslashreplace")
    return f"<special {candidate[1]}>" if isinstance(candidate, tuple) else "?"
