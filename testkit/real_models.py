"""Shared access to the real catalogue models for ``@pytest.mark.real_models`` tests.

Import what you need into a test module (``from testkit.real_models import real_model``). Models
load from the cache (converting on first use) once per test session; a model whose package
is not installed skips with the pip command that would install it.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from unite_logits.models.catalogue import catalogue_names, get_entry, missing_packages
from unite_logits.models.loading import LoadedModel, cached_dir, load_model, source_for_entry

__all__ = ["REAL_MODEL_NAMES", "skip_unless_installed", "load_real", "load_real_tokenizer", "real_model"]

REAL_MODEL_NAMES: tuple[str, ...] = tuple(catalogue_names())


def skip_unless_installed(name: str) -> None:
    """Skip the calling test, naming the install command, if ``name``'s package is missing."""
    entry = get_entry(name)
    if missing_packages(entry):
        pytest.skip(f"{name} is not installed; install it with: {entry.pip_command}")


@functools.lru_cache(maxsize=None)
def _load(name: str) -> LoadedModel:
    return load_model(name, progress=True)


def load_real(name: str) -> LoadedModel:
    """``(model, tokenizer)`` of a catalogue model, fp32 on CPU, loaded once per session."""
    skip_unless_installed(name)
    return _load(name)


@functools.lru_cache(maxsize=None)
def _tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    folder = cached_dir(source_for_entry(get_entry(name)))
    if folder is None:  # convert (and keep the model loaded for later tests)
        return _load(name).tokenizer
    return AutoTokenizer.from_pretrained(folder)


def load_real_tokenizer(name: str) -> Any:
    """The converted tokenizer of a catalogue model, from the cache (converting if needed)."""
    skip_unless_installed(name)
    return _tokenizer(name)


@pytest.fixture(scope="session", params=REAL_MODEL_NAMES)
def real_model(request: pytest.FixtureRequest) -> LoadedModel:
    """Each catalogue model in turn (parametrized by name)."""
    return load_real(request.param)
