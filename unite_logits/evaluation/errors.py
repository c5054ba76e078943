"""User-facing errors of the evaluation harness.

Kept in this package (not a project-wide errors module) so the harness can land without
touching files the core owns; the CLI turns these into a clean message and exit code.
"""

from __future__ import annotations

__all__ = ["EvalUsageError"]


class EvalUsageError(ValueError):
    """A user mistake (bad task name, missing data, mismatched resume directory, ...)."""
