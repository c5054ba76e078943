"""Find a catalogue model's GGUF file and prove it is the pinned one.

Files are hashed in a stream (1 MiB blocks) so that a 500 MB model never sits in memory
twice; multi-part models are joined and hashed in the same pass.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from ..progress import progress_bar
from .catalogue import CatalogueEntry, part_paths
from .errors import ModelIntegrityError

__all__ = ["sha256_file", "verify_sha256", "join_parts", "materialize_gguf"]

_BLOCK = 1 << 20


def _progress_bar(total: int, description: str):
    return progress_bar(total=total, desc=description, unit="B", unit_scale=True)


def _blocks(paths: Iterable[Path]) -> Iterable[bytes]:
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(_BLOCK):
                yield block


def _check_digest(actual: str, expected: str, what: str) -> None:
    if actual != expected.lower():
        raise ModelIntegrityError(
            f"{what} is corrupt or not the pinned file: sha256 {actual} != expected {expected}; "
            "reinstall the model package"
        )


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in blocks."""
    path = Path(path)
    digest = hashlib.sha256()
    with _progress_bar(path.stat().st_size, f"checking {path.name}") as bar:
        for block in _blocks([path]):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str) -> Path:
    """Return ``path`` if its sha256 is ``expected``; `ModelIntegrityError` otherwise."""
    _check_digest(sha256_file(path), expected, str(path))
    return Path(path)


def join_parts(
    parts: list[Path], destination: Path, expected_sha256: str
) -> Path:
    """Concatenate ``parts`` into ``destination``, hashing while writing.

    The file appears under its final name only once its digest matched, so a crash or a
    corrupt part never leaves a plausible-looking GGUF behind.
    """
    partial = destination.with_name(destination.name + ".partial")
    digest = hashlib.sha256()
    total = sum(part.stat().st_size for part in parts)
    try:
        with open(partial, "wb") as out, _progress_bar(total, f"joining {destination.name}") as bar:
            for block in _blocks(parts):
                digest.update(block)
                out.write(block)
                bar.update(len(block))
        _check_digest(digest.hexdigest(), expected_sha256, f"{destination.name} joined from {len(parts)} parts")
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def materialize_gguf(entry: CatalogueEntry, workdir: Path) -> Path:
    """A verified GGUF file for ``entry``: the installed file itself, or parts joined in ``workdir``."""
    parts = part_paths(entry)
    if len(parts) == 1:
        return verify_sha256(parts[0], entry.sha256)
    return join_parts(parts, workdir / entry.gguf_filename, entry.sha256)
