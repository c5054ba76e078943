"""Files of a results folder: per-sample records, and the run identity that guards resuming.

Records are written whole, atomically, from lm-eval's sample logs (the request cache is what
a run resumes from). ``check_meta`` writes a run's identity on its first use and refuses to
resume a folder made by another run.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unite_logits.evaluation.errors import EvalUsageError

__all__ = ["write_records", "check_meta"]


def write_records(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Write ``records`` as JSON Lines, atomically (a sibling renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, path)


def _short(value: Any) -> str:
    """A setting for a one-line message: digests cut to 12 characters."""
    text = json.dumps(value, ensure_ascii=False)
    return re.sub(r"([0-9a-f]{12})[0-9a-f]{52}", r"\1…", text)


def check_meta(path: Path, meta: Mapping[str, Any]) -> None:
    """Write run settings on first use; refuse to resume a run made with other settings."""
    path = Path(path)
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            stored = None
        if not isinstance(stored, dict):
            raise EvalUsageError(f"{path} is damaged (not a JSON object); delete it to start that run afresh, or use another --out")
        diffs = [k for k in meta if stored.get(k) != meta[k]]
        if diffs:
            detail = "; ".join(f"{k}: stored {_short(stored.get(k))}, now {_short(meta[k])}" for k in diffs)
            raise EvalUsageError(
                f"{path.parent} holds a run with other settings ({detail}); use another --out"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # renamed into place: never half written
    partial.write_text(json.dumps(dict(meta), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)
