"""Where converted models live, and how a cache entry is written without ever being half there.

A conversion writes into a temporary sibling directory and renames it into place as its
last step; ``rename`` is atomic on one file system, so readers see either no entry or a
complete one. Temporary directories carry the writer's pid so that leftovers of a killed
process can be recognised and removed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CacheNotWritableError

__all__ = [
    "CACHE_ENV",
    "MARKER",
    "cache_root",
    "entry_dir",
    "is_complete",
    "read_marker",
    "atomic_directory",
    "writer_lock",
    "discard",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "UNITE_LOGITS_CACHE"
MARKER = "unite-logits-cache.json"
_TMP_TAG = ".tmp-"


def cache_root() -> Path:
    """``$UNITE_LOGITS_CACHE``, else ``$XDG_CACHE_HOME/unite-logits``, else ``~/.cache/unite-logits``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        root = Path(override).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "unite-logits"
    if root.exists() and not root.is_dir():
        where = f"{CACHE_ENV}={override}" if override else str(root)
        raise CacheNotWritableError(f"the model cache {where} is a file, not a folder: point {CACHE_ENV} at a folder")
    return root


def entry_dir(key: str) -> Path:
    """Directory of the converted model cached under ``key``."""
    return cache_root() / "models" / key


def is_complete(directory: Path) -> bool:
    """True once a conversion finished: the marker is written just before the final rename."""
    return (directory / MARKER).is_file()


def read_marker(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MARKER).read_text())


@contextmanager
def writer_lock(target: Path) -> Iterator[None]:
    """Hold the lock on ``target``'s entry: one process converts, the others wait for it.

    An advisory ``flock`` on ``locks/<name>.lock`` in the cache root; the kernel releases it
    when the holder exits, even if killed, so no stale lock outlives its process.

    Raises:
        PermissionError: the cache folder is not writable.
    """
    locks = target.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{target.name}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process that is converting into %s", target)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def discard(target: Path) -> None:
    """Remove an entry; its marker goes first, so a crash midway leaves an incomplete entry."""
    (target / MARKER).unlink(missing_ok=True)
    shutil.rmtree(target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_shareable(directory: Path) -> None:
    """Give the entry ordinary permissions: mkdtemp (and safetensors) create owner-only ones."""
    mask = _umask()
    os.chmod(directory, 0o777 & ~mask)
    for path in directory.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned(parent: Path, name: str) -> None:
    """Delete temporary directories for ``name`` whose writer process is gone."""
    for candidate in parent.glob(f".{name}{_TMP_TAG}*"):
        pid_text = candidate.name[len(f".{name}{_TMP_TAG}") :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)


@contextmanager
def atomic_directory(target: Path, marker: dict[str, Any]) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``target`` if the block succeeds.

    ``marker`` is written into it as `MARKER` last. On an exception the temporary
    directory is removed and ``target`` is left untouched. If another process completed
    ``target`` meanwhile, its entry is kept and ours discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target.parent, target.name)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{_TMP_TAG}{os.getpid()}-", dir=target.parent))
    try:
        yield staging
        (staging / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
        _make_shareable(staging)
        if target.exists() and not is_complete(target):
            shutil.rmtree(target)  # not ours to keep: an entry without marker is unusable
        try:
            os.rename(staging, target)
        except OSError:
            if not is_complete(target):  # lost a race to another writer: keep theirs
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
