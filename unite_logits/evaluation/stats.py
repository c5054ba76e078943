"""Confidence intervals for accuracies and for paired accuracy differences.

Pure functions on lists of per-item correctness flags, so they are checked against
textbook values without any model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Z95", "Proportion", "PairedDiff", "wilson_interval", "proportion", "paired_bootstrap", "paired_normal"]

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Proportion:
    correct: int
    n: int
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedDiff:
    """Difference a - b of two accuracies on the same items, with a 95% interval."""

    diff: float
    low: float
    high: float
    n: int
    method: str


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval: well-behaved near 0 and 1 and for small n (unlike Wald)."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion(flags: Sequence[bool], z: float = Z95) -> Proportion:
    """Accuracy of a list of correctness flags with its Wilson interval."""
    n, k = len(flags), int(sum(bool(f) for f in flags))
    low, high = wilson_interval(k, n, z)
    return Proportion(k, n, k / n if n else 0.0, low, high)


def _paired_arrays(a: Sequence[bool], b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise ValueError(f"paired flags differ in length: {len(a)} vs {len(b)}")
    return np.asarray(a, dtype=float), np.asarray(b, dtype=float)


def paired_bootstrap(
    a: Sequence[bool], b: Sequence[bool], n_boot: int = 10_000, seed: int = 0
) -> PairedDiff:
    """Percentile bootstrap of mean(a) - mean(b), resampling items (fixed seed: reproducible)."""
    x, y = _paired_arrays(a, b)
    n = len(x)
    if n == 0:
        return PairedDiff(0.0, 0.0, 0.0, 0, "bootstrap")
    d = x - y
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return PairedDiff(float(d.mean()), float(low), float(high), n, "bootstrap")


def paired_normal(a: Sequence[bool], b: Sequence[bool], z: float = Z95) -> PairedDiff:
    """Normal approximation for paired proportions (Wald on the discordant pairs).

    With b01 = share right only in a, b10 = share right only in b:
    var = (b01 + b10 - (b01 - b10)^2) / n.
    """
    x, y = _paired_arrays(a, b)
    n = len(x)
    if n == 0:
        return PairedDiff(0.0, 0.0, 0.0, 0, "normal")
    only_a = float(np.mean((x == 1) & (y == 0)))
    only_b = float(np.mean((x == 0) & (y == 1)))
    diff = only_a - only_b
    se = math.sqrt(max(0.0, only_a + only_b - diff * diff) / n)
    return PairedDiff(diff, diff - z * se, diff + z * se, n, "normal")
