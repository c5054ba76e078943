"""Fake catalogue entries backed by tiny packages written into a temporary directory.

They let the fast tests exercise lookup, integrity checks and caching without real weights.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from unite_logits.models import catalogue
from unite_logits.models.catalogue import CatalogueEntry, GGUFPart


def make_package(root: Path, files: dict[str, bytes], *, init: str = "") -> str:
    """Write package ``fake_<random>`` with ``files`` under ``root``; return its import name."""
    name = f"fake_{uuid.uuid4().hex[:10]}"
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(init)
    for relative, content in files.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_bytes(content)
    return name


def fake_entry(
    monkeypatch: pytest.MonkeyPatch,
    root: Path,
    chunks: list[bytes],
    *,
    sha256: str | None = None,
    name: str = "fake-model",
    installed: bool = True,
) -> CatalogueEntry:
    """Register a catalogue entry whose GGUF is ``chunks`` joined, each in its own package."""
    monkeypatch.syspath_prepend(str(root))
    parts = []
    for index, chunk in enumerate(chunks):
        package = make_package(root, {f"data/part{index}.bin": chunk}) if installed else f"missing_{uuid.uuid4().hex}"
        parts.append(GGUFPart(package, f"data/part{index}.bin"))
    joined = b"".join(chunks)
    entry = CatalogueEntry(
        name=name,
        title="Fake",
        requirements=(f"{name}-weights==1.2.3",),
        pip_options=("--no-deps",),
        parts=tuple(parts),
        gguf_filename=f"{name}.gguf",
        sha256=sha256 or hashlib.sha256(joined).hexdigest(),
        size_bytes=len(joined),
        n_params=1000,
    )
    monkeypatch.setitem(catalogue.CATALOGUE, name, entry)
    return entry
