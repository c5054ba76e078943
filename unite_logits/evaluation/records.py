"""Files of a results folder: per-sample records, and the run identity that guards resuming.

Records are written whole, atomically, from lm-eval's sample logs (the request cache is what
a run resumes from), as gzip-compressed JSON Lines (``records/<system>.jsonl.gz``: a tenth of
the size, and byte-stable: no time stamp or file name in the header, so an unchanged run
rewrites the same bytes). Folders written before compression hold plain
``records/<system>.jsonl``; every reader takes either (`records_path`, `read_records`).
``check_meta`` writes a run's identity on its first use and refuses to resume a folder made
by another run.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unite_logits.evaluation.errors import EvalUsageError

__all__ = ["RECORDS_SUFFIX", "records_path", "read_records", "write_records", "check_meta"]

RECORDS_SUFFIX = ".jsonl.gz"
_PLAIN_SUFFIX = ".jsonl"


def records_path(folder: Path, stem: str) -> Path:
    """The records file of ``stem`` in ``folder``: the compressed one, else a plain one an older
    version wrote, else (neither exists) where the compressed one goes."""
    compressed = Path(folder) / f"{stem}{RECORDS_SUFFIX}"
    plain = Path(folder) / f"{stem}{_PLAIN_SUFFIX}"
    return plain if not compressed.exists() and plain.exists() else compressed


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a records file, compressed (``.gz``) or plain; blank lines skipped.

    Raises:
        EvalUsageError: the file is damaged (not gzip, not UTF-8 JSON Lines).
    """
    data = path.read_bytes()
    try:
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    except (gzip.BadGzipFile, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvalUsageError(f"{path} is damaged ({error}); rerun `unite-logits eval` there to rebuild it "
                             "from the request cache") from None


def write_records(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Write ``records`` as JSON Lines, gzip-compressed when ``path`` ends in ``.gz`` (with a
    fixed header, so the bytes depend on the records alone), atomically (a sibling renamed
    into place); a plain ``.jsonl`` an older version left beside it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
    if path.name.endswith(".gz"):
        with partial.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
            handle.write(data)
    else:
        partial.write_bytes(data)
    os.replace(partial, path)
    if path.name.endswith(".gz"):
        path.with_name(path.name.removesuffix(".gz")).unlink(missing_ok=True)


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
