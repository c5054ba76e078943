"""Evaluation harness and compatibility report ("determine" half of UniTE).

``evaluate`` scores each member alone and the ensemble on a benchmark (resumable,
per-item JSONL); ``select`` reports which candidates are worth ensembling. Models and
the core processor are imported lazily by the functions that need them.
"""

from unite_logits.evaluation.errors import EvalUsageError
from unite_logits.evaluation.runner import EvalMember, evaluate
from unite_logits.evaluation.selection import SelectReport, Thresholds, select
from unite_logits.evaluation.summary import Summary
from unite_logits.evaluation.tasks import TASKS, Item, Task, get_task

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
