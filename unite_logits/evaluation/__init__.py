"""Each member alone and the ensemble on the benchmarks researchers run, and the "determine" report.

Evaluation runs on lm-evaluation-harness through the one `unite` model
(`unite_logits.lm_eval`); this package adds what lm-eval does not do: every member alone and
the ensemble on the same documents in one command, the paired bootstrap interval of their
difference, resume after a kill, the documents where they differ (``evaluate``), and the
compatibility verdict (``select``). ``paper`` holds the UniTE paper's own protocols (prompts,
answer reading), shipped as lm-eval tasks. Heavy modules are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from unite_logits.evaluation.errors import EvalUsageError

if TYPE_CHECKING:
    from unite_logits.evaluation.run_task import evaluate
    from unite_logits.evaluation.selection import SelectReport, Thresholds, select
    from unite_logits.evaluation.summary import Comparison

_HOMES = {
    "evaluate": "unite_logits.evaluation.run_task",
    "Comparison": "unite_logits.evaluation.summary",
    "SelectReport": "unite_logits.evaluation.selection",
    "Thresholds": "unite_logits.evaluation.selection",
    "select": "unite_logits.evaluation.selection",
}

__all__ = ["EvalUsageError", "evaluate", "select", "SelectReport", "Thresholds", "Comparison"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
