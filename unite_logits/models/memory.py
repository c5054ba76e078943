"""RAM estimates and the check that refuses a load that would not fit.

Running out of memory on a CPU box kills the process (or the machine) without a message;
refusing up front with one line is kinder. Estimates are deliberately simple, calibrated on
the catalogue models (see the constants), and can be bypassed with
``UNITE_LOGITS_SKIP_MEMORY_CHECK=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InsufficientMemoryError

__all__ = [
    "SKIP_ENV",
    "available_memory_bytes",
    "load_estimate",
    "conversion_estimate",
    "check_memory",
    "memory_check_skipped",
    "format_bytes",
]

SKIP_ENV = "UNITE_LOGITS_SKIP_MEMORY_CHECK"
_BASE_BYTES = 600 * 2**20  # interpreter, torch and transformers themselves
_LOAD_FACTOR = 1.25  # weights plus load-time copies, KV cache and logits of short runs
# Dequantizing GGUF holds the raw tensors, the fp32 model and the rebuilt copy at once, and
# reading a 262k-entry GGUF vocabulary is costly too. Measured peaks (2 cores, torch 2.13):
# SmolLM2 1.57 GB, Gemma 3 270M 3.30 GB, Qwen2.5 0.5B 5.36 GB, i.e. (peak - base) / fp32
# weight bytes of 1.8, 2.5 and 1.9; 2.6 keeps every estimate above its measurement.
_CONVERSION_FACTOR = 2.6


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation now (psutil if present, else /proc/meminfo)."""
    try:
        import psutil  # optional; never a dependency
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_estimate(n_params: int, bytes_per_param: int) -> int:
    """Peak RAM of loading an already-converted model."""
    return int(n_params * bytes_per_param * _LOAD_FACTOR) + _BASE_BYTES


def conversion_estimate(n_params: int) -> int:
    """Peak RAM of converting a GGUF model to an fp32 HF folder."""
    return int(n_params * 4 * _CONVERSION_FACTOR) + _BASE_BYTES


def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000
    raise AssertionError("unreachable")


def memory_check_skipped() -> bool:
    """True when ``UNITE_LOGITS_SKIP_MEMORY_CHECK`` asks to skip (then nothing is estimated)."""
    return os.environ.get(SKIP_ENV, "") not in ("", "0")


def check_memory(needed: int | None, what: str, *, available: int | None = None) -> None:
    """Raise `InsufficientMemoryError` if ``needed`` bytes exceed what is available.

    Unknown quantities (``None``) pass: better to try than to refuse on a guess.
    """
    if needed is None or memory_check_skipped():
        return
    if available is None:
        available = available_memory_bytes()
    if available is not None and needed > available:
        raise InsufficientMemoryError(
            f"{what} needs about {format_bytes(needed)} of RAM but only {format_bytes(available)} "
            f"is available; free memory or use a smaller model (set {SKIP_ENV}=1 to try anyway)"
        )
