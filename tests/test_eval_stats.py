"""Statistics against known values."""

from __future__ import annotations

import math

import pytest

from unite_logits.evaluation.stats import paired_bootstrap, paired_normal, proportion, wilson_interval


def test_wilson_known_values() -> None:
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_proportion_counts() -> None:
    p = proportion([True, False, True, True])
    assert (p.correct, p.n, p.value) == (3, 4, 0.75)
    assert p.low < 0.75 < p.high


def test_paired_normal_known_value() -> None:
    # 100 items: 10 right only in a, 4 right only in b, 50 both, 36 neither.
    a = [True] * 10 + [False] * 4 + [True] * 50 + [False] * 36
    b = [False] * 10 + [True] * 4 + [True] * 50 + [False] * 36
    d = paired_normal(a, b)
    se = math.sqrt((0.10 + 0.04 - 0.06**2) / 100)
    assert d.diff == pytest.approx(0.06)
    assert d.low == pytest.approx(0.06 - 1.959964 * se, abs=1e-6)
    assert d.high == pytest.approx(0.06 + 1.959964 * se, abs=1e-6)


def test_paired_bootstrap_is_seeded_and_brackets_the_difference() -> None:
    a = [True] * 10 + [False] * 4 + [True] * 50 + [False] * 36
    b = [False] * 10 + [True] * 4 + [True] * 50 + [False] * 36
    one, two = paired_bootstrap(a, b, seed=3), paired_bootstrap(a, b, seed=3)
    assert one == two
    assert one.diff == pytest.approx(0.06)
    normal = paired_normal(a, b)
    assert one.low == pytest.approx(normal.low, abs=0.02)
    assert one.high == pytest.approx(normal.high, abs=0.02)
    same = paired_bootstrap(a, a)
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_bootstrap([True], [True, False])
