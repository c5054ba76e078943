"""Per-item results as an append-only JSON Lines log that a run can resume from.

Each finished item is one line, flushed and synced as soon as it is written, so an
interrupted run loses at most the item in progress. On resume a truncated last line
(the write that was cut off) is dropped and its item is redone; a damaged line
elsewhere is an error rather than a silently lost item. A small metadata file next to
the log refuses resuming with different members or settings.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unite_logits.evaluation.errors import EvalUsageError

__all__ = ["RecordLog", "check_meta"]


class RecordLog:
    """Finished items of one (task, mode) run, keyed by item id; every record must hold the
    per-system maps in ``required``."""

    required: tuple[str, ...] = ("answers", "correct", "tokens", "seconds")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        """Records already written; repairs a truncated final line in place."""
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        records: dict[str, dict[str, Any]] = {}
        offset = 0
        lines = raw.split(b"\n")
        for index, line in enumerate(lines):
            end = offset + len(line) + 1
            if line.strip():
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    if index < len(lines) - 1 and any(l.strip() for l in lines[index + 1:]):
                        raise EvalUsageError(f"{self.path}: line {index + 1} is damaged") from None
                    self._truncate(offset)  # the cut-off last write: redo that item
                    break
                if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                    raise EvalUsageError(
                        f"{self.path}: line {index + 1} is not a result record (no item id); "
                        "remove that line or use another --out"
                    )
                missing = [key for key in self.required if not isinstance(record.get(key), dict)]
                if missing:
                    raise EvalUsageError(
                        f"{self.path}: line {index + 1} (item {record['id']!r}) is not a complete result record "
                        f"(no {', '.join(repr(k) for k in missing)}); remove that line or use another --out"
                    )
                records[record["id"]] = record
            offset = end
        else:
            if raw and not raw.endswith(b"\n"):  # complete JSON but missing newline
                with self.path.open("ab") as fh:
                    fh.write(b"\n")
        return records

    def _truncate(self, size: int) -> None:
        with self.path.open("r+b") as fh:
            fh.truncate(size)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record and make it durable before the next item starts."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


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
