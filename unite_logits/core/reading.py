"""Several readings of one growing text, read by a member in ONE forward pass on its cache.

A member reads the primary's text with its own tokenizer, and its reading of a prefix is not
always a prefix of its reading of a longer text (" muff" is ``▁muff``; " muffins" is one token
``▁muffins``). Draft-and-verify asks for the member's distribution after each of several
prefixes at once (the text so far, then after each drafted token); the per-token path asks
after one. A `ReadTree` holds what one cache row needs for that:

* ``base``: how many of the ids the row's cache holds are kept (the readings' common part);
* ``trunk``: the ids of the longest reading after ``base``, fed and kept;
* ``branches``: for a reading that leaves the trunk, ``(start, ids)``: its ids from the point
  where it leaves it, fed in the same pass and forgotten after it;
* ``queries``: where each wanted distribution is read: ``(-1, i)`` after ``trunk[i]``, or
  ``(b, i)`` after ``branches[b][1][i]``.

`tree_visibility` is the attention rule among a pass's new tokens (the scoring path's packed
texts in `unite_logits.core.forced` follow the same rule): a token sees the trunk before its
branch starts, and its own branch, causally. `build_tree` makes a tree from readings given as
"the cached ids up to ``s``, then these ids". Cost: O(length of the readings past ``base``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["ReadTree", "Reading", "build_tree", "tree_visibility"]


@dataclass
class ReadTree:
    """What one cache row keeps, feeds and reads in one pass (see the module docstring)."""

    base: int
    trunk: list[int]
    branches: list[tuple[int, list[int]]] = field(default_factory=list)
    queries: list[tuple[int, int]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        """New tokens fed: the trunk and every branch."""
        return len(self.trunk) + sum(len(ids) for _, ids in self.branches)

    def add_reading(self, ids: Sequence[int]) -> None:
        """Ask for the distribution after a reading whose ids after ``base`` are ``ids``: on the
        trunk when they are a prefix of it, else on a new branch from where they part."""
        common = 0
        limit = min(len(ids), len(self.trunk))
        while common < limit and ids[common] == self.trunk[common]:
            common += 1
        if common == len(ids):
            self.queries.append((-1, common - 1))
            return
        self.branches.append((self.base + common, list(ids[common:])))
        self.queries.append((len(self.branches) - 1, len(ids) - common - 1))

    def reading(self, query: int, kept: Sequence[int]) -> list[int]:
        """The full ids of query ``query``'s reading, given the ``kept`` ids (``base`` of them)."""
        branch, index = self.queries[query]
        if branch < 0:
            return list(kept[: self.base]) + self.trunk[: index + 1]
        start, ids = self.branches[branch]
        return (list(kept[: self.base]) + self.trunk)[:start] + ids[: index + 1]


@dataclass(frozen=True)
class Reading:
    """A reading of the text: the first ``shared`` ids of what the cache row holds, then ``tail``."""

    shared: int
    tail: tuple[int, ...]

    def length(self) -> int:
        return self.shared + len(self.tail)

    def after(self, start: int, held: Sequence[int]) -> list[int]:
        """Its ids from ``start`` on (``start`` at most its `common` prefix with ``held``)."""
        if start <= self.shared:
            return list(held[start : self.shared]) + list(self.tail)
        return list(self.tail[start - self.shared :])

    def common(self, held: Sequence[int]) -> int:
        """How many of its first ids equal ``held``'s."""
        common = min(self.shared, len(held))
        while common < len(held) and common - self.shared < len(self.tail) and held[common] == self.tail[common - self.shared]:
            common += 1
        return common


def build_tree(held: Sequence[int], readings: Sequence[Reading], queried: Sequence[int]) -> ReadTree:
    """The tree that turns a cache row holding ``held`` into the last reading, reading the
    distribution after each reading in ``queried`` (indices into ``readings``).

    ``base`` is the longest prefix of ``held`` that every reading starts with, less one where the
    trunk or a queried reading would otherwise have nothing to feed (a distribution is read after
    a fed id).
    """
    last = readings[-1]
    base = min(last.common(held), last.length() - 1)  # the trunk feeds at least one id
    for index in queried:
        reading = readings[index]
        base = min(base, reading.common(held), reading.length() - 1)
    base = max(base, 0)
    tree = ReadTree(base, last.after(base, held))
    for index in queried:
        tree.add_reading(readings[index].after(base, held))
    return tree


def tree_visibility(position: torch.Tensor, branch: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """``(rows, T, T)`` bool: new token ``q`` of a row sees new token ``k`` of the same row.

    Per row and column: ``position`` (-1: padding, sees nothing), ``branch`` (-1: trunk) and
    ``start`` (where the column's branch leaves the trunk; ignored on the trunk). ``q`` sees
    ``k`` when ``k`` is at or before ``q`` and either ``k`` is on the trunk before ``q``'s branch
    starts (anywhere before ``q`` if ``q`` is on the trunk), or both are on the same branch.
    """
    key_pos, query_pos = position[:, None, :], position[:, :, None]
    causal = (key_pos >= 0) & (query_pos >= 0) & (key_pos <= query_pos)
    key_on_trunk = branch[:, None, :] < 0
    query_start = torch.where(branch < 0, position + 1, start)[:, :, None]
    same_branch = (branch[:, None, :] == branch[:, :, None]) & (branch[:, :, None] >= 0)
    return causal & ((key_on_trunk & (key_pos < query_start)) | same_branch)
