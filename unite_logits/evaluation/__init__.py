"""Evaluation harness and compatibility report ("determine" half of UniTE).

``evaluate`` scores each member alone and the ensemble on a benchmark (resumable,
per-item JSONL); ``select`` reports which candidates are worth ensembling. The runner and
the report (and with them torch and transformers) are imported on first use, so the CLI
can parse ``eval``/``select`` options without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from unite_logits.evaluation.errors import EvalUsageError
from unite_logits.evaluation.summary import Summary
from unite_logits.evaluation.tasks import TASKS, Item, Task, get_task

if TYPE_CHECKING:
    from unite_logits.evaluation.runner import EvalMember, evaluate
    from unite_logits.evaluation.selection import SelectReport, Thresholds, select

_HOMES = {
    "EvalMember": "unite_logits.evaluation.runner",
    "evaluate": "unite_logits.evaluation.runner",
    "SelectReport": "unite_logits.evaluation.selection",
    "Thresholds": "unite_logits.evaluation.selection",
    "select": "unite_logits.evaluation.selection",
}

__all__ = [
    "EvalUsageError",
    "EvalMember",
    "evaluate",
    "select",
    "SelectReport",
    "Thresholds",
    "Summary",
    "TASKS",
    "Task",
    "Item",
    "get_task",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
