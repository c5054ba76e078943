"""Shared fixtures: tiny tokenizers and models built in-process (see testkit/tiny.py).

Helper modules (tiny models, strategies, real-model loaders, fakes) live in ``testkit/``,
beside ``tests/``, and are imported by their module names.
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "testkit"))

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

import tiny  # noqa: E402


@pytest.fixture(scope="session", params=list(tiny.TOKENIZERS))
def any_tokenizer(request):
    return request.param, tiny.TOKENIZERS[request.param]()


@pytest.fixture(scope="session", params=list(tiny.LOSSLESS))
def lossless_tokenizer(request):
    return request.param, tiny.TOKENIZERS[request.param]()
