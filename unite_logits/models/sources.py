"""What a model spec names, found without loading anything (and without torch).

A spec is a catalogue name, a ``.gguf`` file, a Hugging Face folder, or a hub id
(``org/name``). `resolve` classifies it, so that a typo or a missing package is reported
before minutes of loading; `cached_dir` says whether a GGUF-backed model is converted yet.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import store
from .catalogue import CATALOGUE, CatalogueEntry, get_entry, is_catalogue_name, part_paths
from .errors import ModelFileError, UnknownModelError
from .gguf_files import sha256_file
from .integrity import check_weight_files

__all__ = ["SourceKind", "ModelSource", "resolve", "source_for_entry", "cached_dir", "cache_key", "folder_digest"]

SourceKind = Literal["catalogue", "gguf", "folder", "hub"]


@dataclass(frozen=True)
class ModelSource:
    """What a spec names, found without loading anything."""

    spec: str
    kind: SourceKind
    name: str
    path: Path | None = None
    entry: CatalogueEntry | None = None
    sha256: str | None = None


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf")


def _gguf_source(spec: str, path: Path) -> ModelSource:
    """A local GGUF file; one with a catalogue model's digest shares that model's cache entry."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelFileError(f"{spec} is not a GGUF file (it does not start with the GGUF magic bytes)")
    digest = sha256_file(path)
    entry = next((e for e in CATALOGUE.values() if e.sha256 == digest), None)
    return ModelSource(spec, "gguf", entry.name if entry else path.stem, path=path, entry=entry, sha256=digest)


def resolve(spec: str | os.PathLike[str]) -> ModelSource:
    """Classify ``spec``: catalogue name, ``.gguf`` file, HF folder, or (``org/name``) hub id.

    Cheap (no weights read), yet a file that is not what it claims fails here.

    Raises:
        ModelFileError: a ``.gguf`` that is not GGUF, or a folder with a broken safetensors file.
        UnknownModelError: neither a known name nor an existing path.
        ModelNotInstalledError: a catalogue model whose package is missing.
    """
    text = os.fspath(spec)
    if is_catalogue_name(text):
        entry = get_entry(text)
        part_paths(entry)  # raises with the pip command if not installed
        return source_for_entry(entry)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_source(text, path.resolve())
    if path.is_dir():
        check_weight_files(path)  # headers only: a broken folder fails here, before any load
        return ModelSource(text, "folder", path.resolve().name, path=path.resolve())
    if _looks_like_path(text):
        raise UnknownModelError(f"no model file or folder at {text!r}")
    if "/" in text:
        return ModelSource(text, "hub", text)
    get_entry(text)  # raises UnknownModelError listing the known names
    raise AssertionError("unreachable")


def cache_key(source: ModelSource) -> str:
    if source.entry is not None:
        return f"{source.entry.name}-{source.entry.sha256[:12]}"
    assert source.path is not None and source.sha256 is not None
    return f"{source.path.stem}-{source.sha256[:12]}"


def source_for_entry(entry: CatalogueEntry) -> ModelSource:
    """The source of a catalogue entry, whether or not its package is installed."""
    return ModelSource(entry.name, "catalogue", entry.name, entry=entry)


def cached_dir(spec: str | ModelSource) -> Path | None:
    """The complete cache folder of a GGUF-backed spec, or None if it is not converted yet."""
    source = spec if isinstance(spec, ModelSource) else resolve(spec)
    if source.kind not in ("catalogue", "gguf"):
        return None
    directory = store.entry_dir(cache_key(source))
    return directory if store.is_complete(directory) else None


def folder_digest(folder: Path) -> str:
    """Identity of a folder's weights: config and every weight file's size and header (cheap)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("config.json")):
        digest.update(path.name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 16))
    return digest.hexdigest()
