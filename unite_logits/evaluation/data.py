"""Where the benchmark files live and how a JSON Lines file is read.

One resolution rule for every task and command: explicit argument, then the
``UNITE_LOGITS_DATA`` environment variable, then ``../shared/data`` relative to the
working directory (the layout of this project's checkouts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from unite_logits.evaluation.errors import EvalUsageError

__all__ = ["DATA_ENV", "resolve_data_dir", "read_jsonl"]

DATA_ENV = "UNITE_LOGITS_DATA"
_DEFAULT_RELATIVE = Path("..") / "shared" / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory to use; raises ``EvalUsageError`` naming what was tried."""
    tried: list[str] = []
    candidates: list[Path] = []
    if data_dir is not None:
        candidates.append(Path(data_dir))
    elif os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]))
    else:
        candidates.append(Path.cwd() / _DEFAULT_RELATIVE)
    for path in candidates:
        if path.is_dir():
            return path
        tried.append(str(path))
    raise EvalUsageError(
        f"benchmark data directory not found (tried {', '.join(tried)}); "
        f"pass --data-dir/--data or set {DATA_ENV}"
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All records (JSON objects) of a JSON Lines file; blank lines are skipped, bad lines
    (not UTF-8, not JSON, not an object) are errors naming the line."""
    if not path.is_file():
        raise EvalUsageError(f"data file not found: {path}")
    rows: list[dict[str, Any]] = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EvalUsageError(f"{path}:{number}: not valid UTF-8 (byte {exc.start})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalUsageError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise EvalUsageError(f"{path}:{number}: a record has to be a JSON object, not {type(row).__name__}")
        rows.append(row)
    return rows
