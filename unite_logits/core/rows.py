"""The per-token path's rows: which member row each step's row continues, and the guess.

A generation has rows (batch rows, or beams); each auxiliary keeps its own state for every
live row (`unite_logits.core.member_rows.AuxiliaryRows`). This module carries those states
from one call of the processor to the next:

* `match_parents` tells, for each row of a step, which row of the last step it continues (the
  newest columns only, so the cost does not grow with the text);
* `Generation` holds the rows of one generation: finished flags, steps, each member's rows,
  and follows them to the next step (beams that split fork a row, finished rows leave);
* `RowStore` starts a generation (one prefill pass per member), runs the members on their
  `Workers`, and guesses the next token so the members can read it while the primary runs its
  forward pass (`RowStore.guess`; a wrong guess is undone with `AuxiliaryRows.keep`).
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable, Sequence

import torch

from .member import Runner
from .member_rows import AuxiliaryRows, Sync
from .prompts import PromptSource, strip_left_padding
from .token_bytes import TokenBytes
from .workers import Round, Workers

__all__ = ["AuxiliaryRows", "Generation", "RowStore", "Timing", "match_parents"]

_PARENT_COLUMNS = 16
"""Newest columns compared to match a row to the row it continues (more only on a tie)."""
_GUESS_WINDOW = 8
"""Recent guesses looked at: guessing pauses while fewer than half of them were right."""


def match_parents(input_ids: torch.Tensor, previous: torch.Tensor) -> list[int] | None:
    """For each row of ``input_ids`` (one column longer), the row of ``previous`` it continues.

    Compares the newest columns (and the first) only, so the cost does not grow with the
    text; rows that tie there (beams that share their recent tokens) are told apart by a
    full comparison. None if some row continues no previous row (a new generation).
    """
    if input_ids.shape[1] != previous.shape[1] + 1:
        return None
    previous = previous.to(input_ids.device)
    width = min(_PARENT_COLUMNS, previous.shape[1])
    now = torch.cat([input_ids[:, :1], input_ids[:, -width - 1 : -1]], dim=1)
    then = torch.cat([previous[:, :1], previous[:, -width:]], dim=1)
    if now.shape == then.shape and torch.equal(now, then):
        return list(range(previous.shape[0]))
    equal = (now[:, None, :] == then[None, :, :]).all(-1)
    parents: list[int] = []
    for row, candidates in enumerate(equal.tolist()):
        matches = [p for p, same in enumerate(candidates) if same]
        if len(matches) > 1 and width < previous.shape[1]:
            matches = [p for p in matches if torch.equal(input_ids[row, :-1], previous[p])]
        if not matches:
            return None
        parents.append(matches[0])
    return parents


class Generation:
    """The rows of one generation: finished flags, steps, and each auxiliary's rows.

    ``members[j]`` holds the live (unfinished) rows only, in the order of `live`.
    """

    def __init__(self, input_ids: torch.Tensor, members: list[AuxiliaryRows]) -> None:
        self.last_ids = input_ids
        self.members = members
        self.finished = [False] * input_ids.shape[0]
        self.steps = [0] * input_ids.shape[0]
        self.live = list(range(input_ids.shape[0]))

    def advance(
        self,
        input_ids: torch.Tensor,
        parents: Sequence[int],
        eos_ids: frozenset[int],
        bytes_of: Callable[[int], bytes | None],
        applied: Sequence[bool] = (),
    ) -> None:
        """Follow the rows to this step: each continues ``parents[i]`` with its newest token.

        ``applied[j]``: live row ``j`` of the last step already holds its newest token (a
        right guess read by `RowStore.guess`), so it is not pushed again.
        """
        position = {row: index for index, row in enumerate(self.live)}
        tokens = input_ids[:, -1].tolist()
        finished = [self.finished[p] for p in parents]
        steps = [self.steps[p] + (0 if self.finished[p] else 1) for p in parents]
        for row, token in enumerate(tokens):
            if not finished[row] and token in eos_ids:
                finished[row] = True
        live = [row for row in range(len(parents)) if not finished[row]]
        member_parents = [position[parents[row]] for row in live]
        for member in self.members:
            member.select(member_parents)
        for index, row in enumerate(live):
            if applied and applied[position[parents[row]]]:
                continue
            data = bytes_of(tokens[row])
            for member in self.members:
                member.push_token(index, tokens[row], data)
        self.finished, self.steps, self.live, self.last_ids = finished, steps, live, input_ids

    def syncs_of(self, row: int) -> list[Sync] | None:
        """Each member's ids of batch row ``row`` (None once the row has finished): for inspection."""
        if self.finished[row]:
            return None
        index = self.live.index(row)
        return [member.rows[index].sync for member in self.members]


class Timing:
    """Seconds each member worked for the current step, and how long the caller waited on them."""

    def __init__(self, members: int) -> None:
        self.members = [0.0] * members
        self.wait = 0.0


class RowStore:
    """The members' rows across the calls of one processor, and the workers that run them.

    Args:
        runners: one per active member.
        sources: where each active member's row prompts come from.
        primary_view: the primary's tokenizer as bytes (its EOS ids end rows).
        pad_token_id: the id that left-pads the primary's prompts in a batch.
        workers: run each member's jobs (on its own thread, or inline).

    Per call: `follow` (settle the guess in flight, follow or start the rows, refresh every
    member), then the caller's step, then `guess`. `close` ends the generation and the
    workers; a later call starts them again.
    """

    def __init__(self, runners: Sequence[Runner], sources: Sequence[PromptSource], primary_view: TokenBytes,
                 pad_token_id: int | None, workers: Workers) -> None:
        self.runners = list(runners)
        self.sources = list(sources)
        self.primary_view = primary_view
        self.pad_token_id = pad_token_id
        self.workers = workers
        self.generation: Generation | None = None
        self.timing = Timing(len(self.runners))
        self._guess: tuple[Round, list[int | None]] | None = None
        self._hits: collections.deque[bool] = collections.deque(maxlen=_GUESS_WINDOW)

    def follow(self, input_ids: torch.Tensor, gated: Sequence[bool] | None = None) -> Generation:
        """The generation at this step: the rows advanced by the token the primary emitted last
        step (or a new generation, prefilled), every live row's distribution up to date but
        those of ``gated`` batch rows (the members read them later, with the next read)."""
        self.timing = Timing(len(self.runners))
        generation = self.generation
        parents = match_parents(input_ids, generation.last_ids) if generation is not None else None
        applied = self._settle_guess(input_ids, parents)
        if generation is not None and parents is not None:
            generation.advance(input_ids, parents, self.primary_view.eos_ids, self.primary_view.bytes_of, applied)
        else:
            self._hits.clear()
            generation = self.generation = Generation(input_ids, self.start_members(input_ids))
        if generation.live:
            wanted = None if gated is None else [not gated[row] for row in generation.live]
            self._run([functools.partial(member.refresh, wanted) for member in generation.members])
        return generation

    def guess(self, out: torch.Tensor) -> None:
        """Start the members on the token greedy search will pick, while the primary runs.

        The guess is each live row's best ensembled candidate in ``out`` (the step's result);
        rows whose best is EOS (they would end) are not advanced. The next `follow` keeps the
        rows whose guess was right and undoes the others (`AuxiliaryRows.keep`), so outputs
        never depend on it. Skipped when members run one after another, while most recent
        guesses were wrong (sampling, or a later processor that changes the choice), and at a
        generation's first step (a single call, as in scoring, must not leave work behind).
        """
        generation = self.generation
        if generation is None or not self.workers.concurrent or not generation.members or not any(generation.steps):
            return
        if len(self._hits) >= _GUESS_WINDOW and sum(self._hits) < _GUESS_WINDOW // 2:
            return
        best = out.index_select(0, torch.as_tensor(generation.live, device=out.device)).argmax(dim=-1).tolist()
        view = self.primary_view
        tokens = [None if token in view.eos_ids else (token, view.bytes_of(token)) for token in best]
        if all(token is None for token in tokens):
            return
        pushes = [[] if token is None else [token] for token in tokens]
        jobs = [functools.partial(member.read, pushes) for member in generation.members]
        self._guess = (self.workers.start(jobs), [None if t is None else t[0] for t in tokens])

    def close(self) -> None:
        """Forget the generation in progress and stop the workers (waiting for work in flight)."""
        guess, self._guess, self.generation = self._guess, None, None
        if guess is not None:
            try:
                self.workers.wait(guess[0])
            except BaseException:  # noqa: BLE001 - only stopping; the caller's error says what failed
                pass
        self.workers.close()

    @property
    def recent_guesses(self) -> list[bool]:
        """Whether each recent guess was right, oldest first."""
        return list(self._hits)

    # -- internals ------------------------------------------------------------------------
    def _run(self, jobs: Sequence[Callable[[], object] | None]) -> None:
        """Run one job per member on the workers and wait for all (timed)."""
        self._collect(self.workers.start(jobs))

    def _collect(self, round_: Round) -> None:
        started = time.perf_counter()
        seconds = self.workers.wait(round_)
        self.timing.wait += time.perf_counter() - started
        for index, value in enumerate(seconds):
            self.timing.members[index] += value

    def _settle_guess(self, input_ids: torch.Tensor, parents: list[int] | None) -> list[bool]:
        """Wait for the guess in flight; per live row of the last step, whether it was right."""
        if self._guess is None:
            return []
        round_, guessed = self._guess
        self._guess = None
        self._collect(round_)
        generation = self.generation
        if generation is None or parents is None:
            return []
        if parents == list(range(len(parents))):
            actual = input_ids[generation.live, -1].tolist()
            right = [token is not None and token == real for token, real in zip(guessed, actual)]
        else:  # beams reordered: undo every guess
            right = [False] * len(guessed)
        for member in generation.members:
            for row, ok in enumerate(right):
                member.keep(row, 1 if ok and guessed[row] is not None else 0)
        self._hits.extend(ok for ok, token in zip(right, guessed) if token is not None)
        return right

    def start_members(self, input_ids: torch.Tensor) -> list[AuxiliaryRows]:
        """Each member's rows for a new generation, prefilled in one forward pass per member."""
        prompts = strip_left_padding(input_ids.tolist(), self.pad_token_id)
        syncs = [[source.sync(row, prompt) for row, prompt in enumerate(prompts)] for source in self.sources]
        for runner, member_syncs in zip(self.runners, syncs):
            AuxiliaryRows.check_prompts(runner, member_syncs)  # user errors as themselves, before work
        members: list[AuxiliaryRows | None] = [None] * len(syncs)

        def prefill(index: int) -> None:
            members[index] = AuxiliaryRows(self.runners[index], syncs[index])

        self._run([functools.partial(prefill, index) for index in range(len(syncs))])
        return [member for member in members if member is not None]
