"""One auxiliary's rows: its own ids for every row of a generation, its cache, its reads.

Each live row of a generation (a batch row, or a beam) has, for each auxiliary, its own token
ids for the text so far (`unite_logits.core.sync`) and what its cache holds (``fed``). All rows
of one auxiliary share ONE cache (`RaggedKVCache`, or for a member behind a server its runner's
row cache), so every read costs one forward pass whatever the number of rows.

The one operation is `AuxiliaryRows.read`: push some of the primary's tokens into each row and
get the member's distribution after each push, for every row, in one pass. The per-token path
pushes one token per step (`push_token`, then `refresh`); draft-and-verify pushes a whole draft
and then keeps the part the ensemble accepted (`keep`, an O(changed ids) rollback of the row's
ids; the cache drops what it no longer needs at the next read). A read keeps, per row, only
the ids that changed since the last one, so its work does not grow with the text.

A member abstains for a row where the text ends inside an incomplete character, or where its
reading is longer than its context window (it abstains there, and at every later position
while the reading stays that long; a warning says so once per row).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
import torch

from .member import Runner
from .reading import ReadTree, Reading, build_tree
from .sync import IdSync, TokenSync

__all__ = ["AuxiliaryRows", "Sync"]

logger = logging.getLogger(__name__)

Sync = IdSync | TokenSync
Mark = tuple[int, tuple[object, ...]]


@dataclass
class _Row:
    """One row of one auxiliary: its ids (sync), what its cache holds, the marks of its last read."""

    sync: Sync
    fed: list[int] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)  # before the read's first push, then after each
    warned: bool = False  # past the context window

    def fork(self) -> "_Row":
        return _Row(self.sync.fork(), list(self.fed), warned=self.warned)

    def reading(self) -> Reading:
        """The row's ids now, as the part shared with what the cache holds and the rest."""
        ids = self.sync.ids
        shared = min(self.sync.changed_from, len(self.fed), len(ids))
        return Reading(shared, tuple(ids[shared:]))

    @property
    def changed(self) -> bool:
        """Whether the ids may differ from what the cache holds."""
        return self.sync.changed_from < len(self.fed) or len(self.sync.ids) != len(self.fed)


class AuxiliaryRows:
    """One auxiliary's state over the live rows of a generation (prefilled at construction).

    Args:
        runner: the auxiliary.
        syncs: one per row, holding the row's prompt ids.

    Attributes:
        logprobs: ``(rows, vocab)`` the member's distribution after what each row's cache
            holds (the per-token path's "current" distribution).

    Raises:
        ValueError: a prompt is empty or longer than the member's context window.
    """

    def __init__(self, runner: Runner, syncs: Sequence[Sync]) -> None:
        self.runner = runner
        self.check_prompts(runner, syncs)
        self.rows = [_Row(sync) for sync in syncs]
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
        """Whether this member takes part for ``row`` now (a complete character, within its window)."""
        return self._votes(self.rows[row])

    def push_token(self, row: int, token_id: int, data: bytes | None) -> None:
        """The primary emitted ``token_id`` (standing for ``data``) in ``row``; read at `refresh`."""
        self.rows[row].sync.push_token(token_id, data)

    # -- rows of the generation -----------------------------------------------------------
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

    # -- reads ----------------------------------------------------------------------------
    def refresh(self, wanted: Sequence[bool] | None = None) -> None:
        """Bring every voting row's distribution (`logprobs`) up to date (only the ``wanted``
        rows, if given): one forward pass, none if no such row changed."""
        readings = [[row.reading()] if row.changed and self._votes(row) and (wanted is None or wanted[index]) else []
                    for index, row in enumerate(self.rows)]
        self._read_readings(readings, [[0] if row else [] for row in readings])

    def read(self, pushes: Sequence[Sequence[tuple[int, bytes | None]]],
             wanted: Sequence[Sequence[bool]] | None = None) -> list[list[torch.Tensor | None]]:
        """Push ``pushes[r]`` (the primary's tokens, with their bytes) into row ``r`` and read the
        member's distribution after each push: one forward pass for every row.

        Returns, per row and push, the ``(vocab,)`` log-probabilities, or None where the member
        abstains (or ``wanted[r][j]`` is False: the push is read later, with the next read).
        Marks are kept so that `keep` can roll a row back to any push of this read.
        """
        readings: list[list[Reading]] = []
        queried: list[list[int]] = []
        where: list[list[int | None]] = []
        for index, (row, row_pushes) in enumerate(zip(self.rows, pushes)):
            row.sync.release()
            row.marks = [row.sync.mark()]
            row_readings: list[Reading] = []
            row_queried: list[int] = []
            row_where: list[int | None] = []
            for j, (token, data) in enumerate(row_pushes):
                row.sync.push_token(token, data)
                row.marks.append(row.sync.mark())
                if self._within_window(index, row):
                    row_readings.append(row.reading())
                    if self._votes(row) and (wanted is None or wanted[index][j]):
                        row_queried.append(len(row_readings) - 1)
                        row_where.append(len(row_queried) - 1)
                        continue
                row_where.append(None)
            readings.append(row_readings)
            queried.append(row_queried)
            where.append(row_where)
        values = self._read_readings(readings, queried)
        return [[None if at is None else row_values[at] for at in row_where]
                for row_where, row_values in zip(where, values)]

    def keep(self, row: int, pushes: int) -> None:
        """Keep the first ``pushes`` pushes of the last `read` of ``row`` and undo the rest.

        Cost: O(ids changed by the undone pushes); the cache drops what it holds past the kept
        ids at the next read.
        """
        marks = self.rows[row].marks
        if not 0 <= pushes < len(marks):
            raise ValueError(f"row {row}: cannot keep {pushes} pushes of a read of {len(marks) - 1}")
        if pushes < len(marks) - 1:
            self.rows[row].sync.rollback_to(marks[pushes])
        self.rows[row].sync.release()

    # -- internals ------------------------------------------------------------------------
    def _votes(self, row: _Row) -> bool:
        limit = self.runner.limit
        return row.sync.ready and (limit is None or len(row.sync.ids) <= limit)

    def _within_window(self, index: int, row: _Row) -> bool:
        limit = self.runner.limit
        if limit is None or len(row.sync.ids) <= limit:
            return True
        if not row.warned:
            row.warned = True
            logger.warning("member %r: row %d reached %d tokens, past its context window of %d; it abstains "
                           "for this row from there on", self.runner.name, index, len(row.sync.ids), limit)
        return False

    def _read_readings(self, readings: Sequence[Sequence[Reading]],
                       queried: Sequence[Sequence[int]]) -> list[list[torch.Tensor]]:
        """Per row, the distribution after each queried reading; the row's cache ends holding its
        last reading (where it has queries). One forward pass, none if nothing is asked."""
        trees: list[ReadTree | None] = []
        served: list[list[torch.Tensor | int]] = []  # a tensor: answered from `logprobs`; an int: a query
        for index, (row, row_readings, row_queried) in enumerate(zip(self.rows, readings, queried)):
            fresh = [j for j in row_queried if not self._is_held(row, row_readings[j])]
            if not fresh:
                trees.append(None)
                served.append([self.logprobs[index] for _ in row_queried])
                continue
            tree = self._tree(index, row, row_readings, fresh)
            answer: list[torch.Tensor | int] = []
            for j in row_queried:
                answer.append(fresh.index(j) if j in fresh else self.logprobs[index])
            trees.append(tree)
            served.append(answer)
        if all(tree is None for tree in trees):
            return [[value for value in row if isinstance(value, torch.Tensor)] for row in served]
        results = self.cache.read(trees)
        out: list[list[torch.Tensor]] = []
        updated = []
        for index, (row, fed, result, answer) in enumerate(zip(self.rows, trees, results, served)):
            if fed is None or result is None:
                out.append([value for value in answer if isinstance(value, torch.Tensor)])
                continue
            out.append([value if isinstance(value, torch.Tensor) else result[value] for value in answer])
            del row.fed[fed.base:]
            row.fed.extend(fed.trunk)
            if len(row.fed) == len(row.sync.ids) and fed.trunk == row.sync.ids[fed.base:]:
                row.sync.take_changed_from()  # the cache holds the row's ids now
            else:
                row.sync.changed_from = min(row.sync.changed_from, fed.base)
            updated.append((index, result[-1]))
        if updated:
            rows = torch.as_tensor([index for index, _ in updated], dtype=torch.long, device=self.logprobs.device)
            self.logprobs = self.logprobs.index_copy(0, rows, torch.stack([value for _, value in updated]).to(self.logprobs))
        return out

    def _is_held(self, row: _Row, reading: Reading) -> bool:
        """Whether ``reading`` is exactly what the row's cache holds (its `logprobs` answer it)."""
        return reading.length() == len(row.fed) and reading.common(row.fed) == len(row.fed)

    def _tree(self, index: int, row: _Row, readings: Sequence[Reading], queried: Sequence[int]) -> ReadTree:
        """The row's tree, its trunk ending with the last reading and read there too (so that
        `logprobs` is after what the cache holds); a refill when the cache cannot drop exactly."""
        tree = build_tree(row.fed, readings, queried)
        drop = len(row.fed) - tree.base
        if drop and not self.cache.can_drop(index, drop):
            self.cache.clear(index)
            self.runner.refills += 1
            whole = [Reading(0, tuple(row.fed[: r.shared]) + r.tail) for r in readings]
            row.fed = []
            tree = build_tree(row.fed, whole, queried)
        if tree.queries[-1:] != [(-1, len(tree.trunk) - 1)]:
            tree.queries.append((-1, len(tree.trunk) - 1))
        return tree

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"AuxiliaryRows({self.runner.name!r}, rows={len(self.rows)})"

