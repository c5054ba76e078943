"""Cheap proofs that a model folder holds what it claims, before transformers reads it.

Two checks, both far cheaper than loading:

* ``read_safetensors_header``: the 8-byte length, a JSON header of that length, and tensor
  offsets that end exactly at the end of the file. A garbage header (which would make
  transformers allocate gigabytes: ``MemoryError``) or a truncated file is one clear error.
* ``file_records`` / ``damaged_files``: a conversion records every file's size, mtime,
  sha256 and a *sampled* sha256 (`sample_sha256`: 16 blocks of 64 KiB spread over the file,
  1 MiB read whatever its size). On every load, sizes and sampled hashes are compared (a few
  milliseconds per file); a file whose mtime changed is hashed again in full. So a file
  overwritten in place (even with the same size) is caught, and so is damage that kept the
  mtime (a disk error, a copy with ``cp -p``) wherever it touches a sampled block. Not caught:
  damage that kept the mtime and falls between the sampled blocks (``unite-logits models
  --verify`` hashes every file in full).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import ModelFileError

__all__ = ["read_safetensors_header", "check_weight_files", "file_records", "damaged_files", "sha256_of",
           "sample_sha256"]

_MAX_HEADER = 100 * 2**20  # the safetensors format's own limit
_BLOCK = 1 << 20
_SAMPLES = 16
_SAMPLE = 64 << 10


def _header_problem(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    size = path.stat().st_size
    if size < 8:
        return None, f"only {size} bytes"
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > min(_MAX_HEADER, size - 8):
            return None, f"header length {length} does not fit a {size}-byte file (garbage or truncated)"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None, "header is not JSON (garbage)"
    if not isinstance(header, dict):
        return None, "header is not a JSON object"
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in info["data_offsets"])
            [int(d) for d in info["shape"]]
        except (TypeError, KeyError, ValueError):
            return None, f"tensor {key!r} has no valid shape/offsets"
        if not 0 <= begin <= stop:
            return None, f"tensor {key!r} has invalid offsets"
        end = max(end, stop)
    if end != size - 8 - length:
        return None, f"tensor data ends at byte {end} but the file holds {size - 8 - length} (truncated or padded)"
    return header, None


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file, after checking it describes the file.

    Raises:
        ModelFileError: the file is too short, its header is garbage, or it is truncated.
    """
    header, problem = _header_problem(Path(path))
    if problem is not None:
        raise ModelFileError(f"{path} is not a valid safetensors file: {problem}")
    assert header is not None
    return header


def check_weight_files(folder: Path) -> list[dict[str, Any]]:
    """Headers of every ``*.safetensors`` file in ``folder`` (see `read_safetensors_header`)."""
    return [read_safetensors_header(path) for path in sorted(Path(folder).glob("*.safetensors"))]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_sha256(path: Path) -> str:
    """sha256 of `_SAMPLES` blocks of 64 KiB at evenly spaced offsets (first and last included):
    1 MiB read whatever the file's size, so it can run on every load."""
    size = Path(path).stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        span = max(size - _SAMPLE, 0)
        for index in range(_SAMPLES):
            handle.seek(span * index // (_SAMPLES - 1))
            digest.update(handle.read(_SAMPLE))
    return digest.hexdigest()


def file_records(folder: Path, *, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {size, mtime_ns, sha256, sample}}`` of every file under ``folder``."""
    records = {}
    for path in sorted(Path(folder).rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative not in skip:
            stat = path.stat()
            records[relative] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_of(path),
                                 "sample": sample_sha256(path)}
    return records


def damaged_files(folder: Path, records: dict[str, dict[str, Any]], *, full: bool = False) -> list[str]:
    """One reason per recorded file that is missing, resized, differs in its sampled blocks, or
    (if touched, or with ``full``) hashes differently in full, plus any safetensors file whose
    header does not describe it. Empty when all is well. A record without a sampled hash (an
    older conversion) is hashed in full."""
    problems = []
    for relative, record in records.items():
        path = Path(folder) / relative
        try:
            stat = path.stat()
        except OSError:
            problems.append(f"{relative} is missing")
            continue
        if stat.st_size != record.get("size"):
            problems.append(f"{relative} has {stat.st_size} bytes, {record.get('size')} were written")
        elif full or "sample" not in record or stat.st_mtime_ns != record.get("mtime_ns"):
            if sha256_of(path) != record.get("sha256"):
                problems.append(f"{relative} was modified (sha256 differs from the conversion's)")
        elif sample_sha256(path) != record["sample"]:
            problems.append(f"{relative} is damaged although its mtime is the conversion's (its sampled sha256 "
                            "differs)")
    for path in sorted(Path(folder).glob("*.safetensors")):
        _, problem = _header_problem(path)
        if problem is not None:
            problems.append(f"{path.name}: {problem}")
    return list(dict.fromkeys(problems))


def replace_json(path: Path, data: dict[str, Any]) -> None:
    """Rewrite a small JSON file atomically (write a sibling, then rename over it)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(temporary, path)
