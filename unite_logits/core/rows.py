"""The row store: every auxiliary's ids, cache and latest distribution for every row.

A generation has rows (batch rows, or beams); each auxiliary keeps, per live row, its own
token ids (`unite_logits.core.sync`), the ids its cache has seen, and its latest next-token
log-probabilities. All rows of one auxiliary share ONE cache (`RaggedKVCache`, or for a member
behind a server its runner's row cache), so a step costs one forward pass per auxiliary
whatever the number of rows:

* `AuxiliaryRows.refresh` compares, per row, the ids with what the cache has seen (only
  the part that changed since the last step, so the work does not grow with the text),
  drops the stale tail of each row and feeds every row's new tokens in one padded pass.
* `AuxiliaryRows.select` follows the generation's rows from one step to the next: beams
  that split duplicate a row, finished rows leave (they cost nothing after that); it is
  one gather along the batch axis of the cache and forks of the rows' ids, never a copy of
  a tokenizer or vocabulary.
* `Generation` holds the rows of one generation: finished flags, steps, each member's rows.
* `RowStore` carries the members from one call of the processor to the next: it matches each
  row to the row it continues (`match_parents` looks at the newest columns only), starts a
  new generation when the rows continue none, runs the members on their `Workers`, and
  guesses the next token so the members can start on it while the primary runs its forward
  pass (`RowStore.guess`; undone exactly when the guess was wrong).
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .member import Runner
from .prompts import PromptSource, strip_left_padding
from .sync import IdSync, TokenSync
from .token_bytes import TokenBytes
from .workers import Round, Workers

__all__ = ["AuxiliaryRows", "Generation", "RowStore", "Timing", "match_parents"]

logger = logging.getLogger(__name__)

Sync = IdSync | TokenSync

_PARENT_COLUMNS = 16
"""Newest columns compared to match a row to the row it continues (more only on a tie)."""
_GUESS_WINDOW = 8
"""Recent guesses looked at: guessing pauses while fewer than half of them were right."""


@dataclass
class _Row:
    """One row of one auxiliary: its ids (sync), what its cache has seen, and whether it votes."""

    sync: Sync
    fed: list[int] = field(default_factory=list)
    past_context: bool = False
    undo_fed: tuple[int, list[int]] | None = None  # (start, overwritten tail) while speculating

    def fork(self) -> "_Row":
        return _Row(self.sync.fork(), list(self.fed), self.past_context)

    @property
    def votes(self) -> bool:
        return self.sync.ready and not self.past_context


class AuxiliaryRows:
    """One auxiliary's state over the live rows of a generation (prefilled at construction).

    Args:
        runner: the auxiliary.
        syncs: one per row, holding the row's prompt ids.

    Raises:
        ValueError: a prompt is empty or longer than the member's context window.
    """

    def __init__(self, runner: Runner, syncs: Sequence[Sync]) -> None:
        self.runner = runner
        self.check_prompts(runner, syncs)
        self.rows = [_Row(sync) for sync in syncs]
        self._speculating = False
        self._before: tuple[Any, torch.Tensor, list[bool]] | None = None
        unique: dict[tuple[int, ...], int] = {}
        source = [unique.setdefault(tuple(sync.ids), len(unique)) for sync in syncs]
        self.cache = runner.new_cache(len(unique))
        self.logprobs = self.cache.feed([list(ids) for ids in unique])
        if len(unique) < len(syncs):
            self._select_cache(source)
        for row in self.rows:
            row.sync.take_changed_from()
            row.fed = list(row.sync.ids)

    @staticmethod
    def check_prompts(runner: Runner, syncs: Sequence[Sync]) -> None:
        """Refuse an empty prompt or one past the member's context window (before any work)."""
        for row, sync in enumerate(syncs):
            if not sync.ids:
                raise ValueError(
                    f"member {runner.name!r}: the prompt of row {row} is empty after tokenization; give a "
                    "non-empty prompt or a tokenizer that adds a BOS token"
                )
            if runner.limit is not None and len(sync.ids) > runner.limit:
                raise ValueError(
                    f"member {runner.name!r}: the prompt of row {row} has {len(sync.ids)} tokens, past its "
                    f"context window of {runner.limit}; shorten the prompt or leave this member out"
                )

    def __len__(self) -> int:
        return len(self.rows)

    def votes(self, row: int) -> bool:
        """Whether this member takes part for ``row`` at this step."""
        return self.rows[row].votes

    def push_token(self, row: int, token_id: int, data: bytes | None) -> None:
        self.rows[row].sync.push_token(token_id, data)

    def select(self, parents: Sequence[int]) -> None:
        """Row ``i`` continues row ``parents[i]``; rows not named are dropped (finished)."""
        if list(parents) == list(range(len(self.rows))):
            return
        taken: set[int] = set()
        rows = []
        for parent in parents:
            rows.append(self.rows[parent].fork() if parent in taken else self.rows[parent])
            taken.add(parent)
        self.rows = rows
        if rows:
            self._select_cache(parents)

    def _select_cache(self, parents: Sequence[int]) -> None:
        index = torch.as_tensor(list(parents), dtype=torch.long)
        self.cache.select_rows(index)
        self.logprobs = self.logprobs.index_select(0, index.to(self.logprobs.device))

    def refresh(self, maintain: bool = True) -> None:
        """Bring every voting row's cache and distribution up to date: one forward pass."""
        chunks: list[list[int]] = [self._stale_tail(index, row) for index, row in enumerate(self.rows)]
        fed = [index for index, chunk in enumerate(chunks) if chunk]
        if not fed:
            return
        logprobs = self.cache.feed(chunks, maintain=maintain)
        if len(fed) == len(self.rows):
            self.logprobs = logprobs
        else:
            index = torch.as_tensor(fed, dtype=torch.long, device=logprobs.device)
            self.logprobs = self.logprobs.index_copy(0, index, logprobs.index_select(0, index))

    # -- ahead of time ------------------------------------------------------------------
    def speculate(self, tokens: Sequence[tuple[int, bytes | None] | None]) -> None:
        """Advance row ``i`` by ``tokens[i]`` (None: not at all) before the primary has chosen it.

        Everything changed is recorded: `settle` keeps the rows whose guess was right and
        returns the others exactly to where they were. Cost: that of a `refresh`, plus a
        copy of the cache's positions.
        """
        self._before = (self.cache.snapshot(), self.logprobs, [row.past_context for row in self.rows])
        self._speculating = True
        for row, token in zip(self.rows, tokens):
            if token is not None:
                row.sync.checkpoint()
                row.sync.push_token(*token)
        self.refresh(maintain=False)

    def settle(self, right: Sequence[bool]) -> None:
        """Keep the rows whose guess was ``right``; undo the others (see `speculate`)."""
        if self._before is None:
            raise RuntimeError("settle without speculate")
        snapshot, logprobs, past_context = self._before
        wrong = [index for index, ok in enumerate(right) if not ok]
        for index, row in enumerate(self.rows):
            if right[index]:
                row.sync.commit()
            else:
                if row.sync.recording:
                    row.sync.rollback()
                if row.undo_fed is not None:
                    start, tail = row.undo_fed
                    row.fed[start:] = tail
                row.past_context = past_context[index]
            row.undo_fed = None
        self.cache.restore_rows(snapshot, wrong)
        if wrong and logprobs is not self.logprobs:
            rows = torch.as_tensor(wrong, dtype=torch.long, device=self.logprobs.device)
            self.logprobs = self.logprobs.index_copy(0, rows, logprobs.index_select(0, rows))
        self._before, self._speculating = None, False
        self.cache.maintain()

    def _stale_tail(self, index: int, row: _Row) -> list[int]:
        """Drop what the cache holds past the ids' common prefix; the ids to feed after it."""
        if not row.votes:
            return []
        ids = row.sync.ids
        limit = self.runner.limit
        if limit is not None and len(ids) > limit:
            row.past_context = True
            self.cache.clear(index)
            logger.warning(
                "member %r: row %d reached %d tokens, past its context window of %d; it abstains "
                "for this row from now on", self.runner.name, index, len(ids), limit,
            )
            return []
        fed = row.fed
        common = min(row.sync.take_changed_from(), len(fed))
        shared = min(len(ids), len(fed))
        while common < shared and ids[common] == fed[common]:
            common += 1
        if common == len(ids) == len(fed):
            return []
        if common == len(ids):
            common -= 1  # nothing new but a shorter text: re-feed the last id for its distribution
        drop = len(fed) - common
        if drop and not self.cache.can_drop(index, drop):
            self.cache.clear(index)
            self.runner.refills += 1
            common = 0
        elif drop:
            self.cache.drop(index, drop)
        chunk = ids[common:]
        if row.undo_fed is None and self._speculating:
            row.undo_fed = (common, fed[common:])
        del fed[common:]
        fed.extend(chunk)
        return chunk


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
        right guess of `AuxiliaryRows.speculate`), so it is not pushed again.
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

    def follow(self, input_ids: torch.Tensor) -> Generation:
        """The generation at this step: the rows advanced by the token the primary emitted last
        step (or a new generation, prefilled), every live row's distribution up to date."""
        self.timing = Timing(len(self.runners))
        generation = self.generation
        parents = match_parents(input_ids, generation.last_ids) if generation is not None else None
        applied = self._settle_guess(input_ids, parents)
        if generation is not None and parents is not None:
            generation.advance(input_ids, parents, self.primary_view.eos_ids, self.primary_view.bytes_of, applied)
        else:
            self._hits.clear()
            generation = self.generation = Generation(input_ids, self._start(input_ids))
        if generation.live:
            self._run([member.refresh for member in generation.members])
        return generation

    def guess(self, out: torch.Tensor) -> None:
        """Start the members on the token greedy search will pick, while the primary runs.

        The guess is each live row's best ensembled candidate in ``out`` (the step's result);
        rows whose best is EOS (they would end) are not advanced. The next `follow` keeps the
        rows whose guess was right and undoes the others (`AuxiliaryRows.settle`), so outputs
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
        jobs = [functools.partial(member.speculate, tokens) for member in generation.members]
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
    def _run(self, jobs: Sequence[Callable[[], None] | None]) -> None:
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
            member.settle(right)
        self._hits.extend(ok for ok, token in zip(right, guessed) if token is not None)
        return right

    def _start(self, input_ids: torch.Tensor) -> list[AuxiliaryRows]:
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
