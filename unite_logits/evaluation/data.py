"""Where the benchmark files live and how a JSON Lines file is read.

One rule for every task and command: the folder given (``--data-dir``, ``data_dir=``), else
the ``UNITE_LOGITS_DATA`` environment variable, else none. Nothing outside the package is
assumed: with no folder the shipped task names are lm-eval's own tasks over their standard
Hugging Face datasets (`unite_logits.lm_eval.task_folder`), and the tasks that exist only as
local files (the paper's protocols) say that they need one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from unite_logits.evaluation.errors import EvalUsageError

__all__ = ["DATA_ENV", "DOWNLOAD_HINT", "OFFLINE", "find_data_dir", "offline_by_default", "resolve_data_dir", "read_jsonl",
           "unavailable"]

DATA_ENV = "UNITE_LOGITS_DATA"
DOWNLOAD_HINT = "HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0"
"""The variables that let a run download a dataset into the Hugging Face cache (once)."""
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def offline_by_default() -> None:
    """Set `OFFLINE` where the user has not set the variables. ``datasets`` and
    ``huggingface_hub`` read them once, when first imported (importing lm-eval's tasks does
    that), so the commands call this before importing anything of lm-eval."""
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)


def find_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The data folder given (``data_dir``, else ``$UNITE_LOGITS_DATA``), or None when neither
    is set. A folder that is named but missing is an error, never silently skipped.

    Raises:
        EvalUsageError: the named folder is not there.
    """
    if data_dir is not None and str(data_dir) != "":
        path, source = Path(data_dir), "--data-dir"
    elif os.environ.get(DATA_ENV):
        path, source = Path(os.environ[DATA_ENV]), f"${DATA_ENV}"
    else:
        return None
    if not path.is_dir():
        raise EvalUsageError(f"benchmark data folder not found: {path} (from {source}); "
                             f"pass --data-dir DIR or set {DATA_ENV}=DIR to a folder that exists")
    return path


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data folder, for what only local files can give (the paper's protocols).

    Raises:
        EvalUsageError: none is given, or the named folder is missing; the message says how.
    """
    path = find_data_dir(data_dir)
    if path is None:
        raise EvalUsageError(f"no benchmark data folder: none given with --data-dir and ${DATA_ENV} is not set; "
                             f"pass --data-dir DIR (data_dir= from Python) or set {DATA_ENV}=DIR")
    return path


def unavailable(what: str, error: BaseException, *, data_folder: Path | None, local_file: str | None) -> str:
    """One line on why a task's documents could not be had (``what``: e.g. ``task 'piqa'``):
    what was tried (the data folder; else the Hugging Face datasets cache, offline or not) and
    the ways to fix it. ``local_file``: the file a shipped task reads in a data folder."""
    import datasets

    reason = " ".join(f"{type(error).__name__}: {error}".split())
    reason = reason if len(reason) <= 300 else reason[:297] + "..."
    if data_folder is not None:
        return f"{what} could not be loaded from the data folder {data_folder} ({reason})"
    offline = os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0") or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    where = f"the Hugging Face datasets cache {datasets.config.HF_DATASETS_CACHE}" + (", offline" if offline else "")
    if local_file is None:  # an lm-eval task that is not shipped: its dataset is all there is
        message = f"{what}: the dataset could not be had from {where} ({reason})"
        return message + (f"; let it be downloaded once with {DOWNLOAD_HINT}" if offline else "")
    fixes = [f"pass --data-dir DIR (a folder with {local_file})", f"set {DATA_ENV}=DIR"]
    if offline:
        fixes.append(f"let its dataset be downloaded once with {DOWNLOAD_HINT}")
    return (f"{what}: no data folder was given (--data-dir, ${DATA_ENV}) and lm-eval's standard dataset "
            f"could not be had from {where} ({reason}); {', '.join(fixes[:-1])} or {fixes[-1]}")


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
