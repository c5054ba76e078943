"""A task's documents split into a dev slice (to choose an ensemble on) and a held-out slice.

The split is of the documents lm-eval evaluates (after ``--limit``, the first N of each
subtask): a document goes to the dev slice when a hash of the seed, its subtask and its index
falls below ``dev_fraction``. So the split needs no other data split (any lm-eval task, a user's
own included, can be tuned), a document's side does not depend on how many documents there
are (a run can grow), and the same seed always gives the same split. The held-out slice is
never looked at while choosing; `unite-logits eval --ensemble FILE` evaluates there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["DEFAULT_DEV_FRACTION", "DEFAULT_SEED", "Split", "split_documents"]

DEFAULT_DEV_FRACTION = 0.3
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Split:
    """Per subtask, the document indices of each slice (lm-eval's ``samples`` argument)."""

    dev: dict[str, list[int]]
    held_out: dict[str, list[int]]
    seed: int
    dev_fraction: float
    limit: int | None = None

    @property
    def sizes(self) -> tuple[int, int]:
        return sum(map(len, self.dev.values())), sum(map(len, self.held_out.values()))

    def describe(self) -> dict[str, object]:
        dev, held_out = self.sizes
        return {"seed": self.seed, "dev_fraction": self.dev_fraction, "limit": self.limit, "dev_documents": dev,
                "held_out_documents": held_out}


def _on_dev(seed: int, subtask: str, index: int, fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}\0{subtask}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_documents(subtasks: dict[str, int], *, seed: int = DEFAULT_SEED, dev_fraction: float = DEFAULT_DEV_FRACTION,
                    limit: int | None = None) -> Split:
    """Split each subtask's first ``limit`` (all) documents; ``subtasks``: name -> count.

    Raises:
        ValueError: ``dev_fraction`` outside (0, 1), or a slice left empty.
    """
    if not 0 < dev_fraction < 1:
        raise ValueError(f"the dev fraction has to be between 0 and 1, but is {dev_fraction}")
    dev: dict[str, list[int]] = {}
    held_out: dict[str, list[int]] = {}
    for subtask, count in sorted(subtasks.items()):
        indices = range(min(count, limit) if limit is not None else count)
        dev[subtask] = [i for i in indices if _on_dev(seed, subtask, i, dev_fraction)]
        held_out[subtask] = [i for i in indices if not _on_dev(seed, subtask, i, dev_fraction)]
    split = Split(dev, held_out, seed, dev_fraction, limit)
    if not all(split.sizes):
        raise ValueError(f"splitting {sum(len(range(min(c, limit or c))) for c in subtasks.values())} documents at "
                         f"{dev_fraction} left a slice empty; give more documents (--limit) or another --dev-fraction")
    return split
