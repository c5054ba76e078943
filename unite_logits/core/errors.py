"""The errors the ensembling core raises at run time, importable without torch (the command
line catches them)."""

from __future__ import annotations

__all__ = ["MemberError", "NonFiniteScoresError"]


class MemberError(RuntimeError):
    """An auxiliary failed while it worked for the ensemble; the message names it."""


class NonFiniteScoresError(ValueError):
    """A model's next-token distribution holds NaN or infinite numbers (e.g. float16 on a CPU)."""
