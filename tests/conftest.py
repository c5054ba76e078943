"""Shared fixtures: tiny tokenizers and models built in-process (see `testkit.tiny`).

Helpers (tiny models, strategies, real-model loaders, fakes, servers) live in the `testkit`
package beside ``tests/``; pytest puts the repository root on the path (``pythonpath = .``).
"""

from __future__ import annotations

import os
from pathlib import Path

# The package assumes no data folder: these tests read this project's benchmark files, which
# live beside the checkouts (../shared/data), unless UNITE_LOGITS_DATA names others. And the
# Hugging Face hub stays off (datasets and huggingface_hub read the variables on first import).
_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not os.environ.get("UNITE_LOGITS_DATA") and _SHARED_DATA.is_dir():
    os.environ["UNITE_LOGITS_DATA"] = str(_SHARED_DATA)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from testkit import tiny  # noqa: E402

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(scope="session", params=list(tiny.TOKENIZERS))
def any_tokenizer(request):
    return request.param, tiny.TOKENIZERS[request.param]()


@pytest.fixture(scope="session", params=list(tiny.LOSSLESS))
def lossless_tokenizer(request):
    return request.param, tiny.TOKENIZERS[request.param]()


@pytest.fixture(scope="session")
def primary():
    """A tiny Llama over the byte-level BPE tokenizer: the primary of the processor tests."""
    tokenizer = tiny.byte_bpe()
    return tiny.tiny_llama(tokenizer, seed=0), tokenizer


@pytest.fixture(scope="session")
def members():
    """Two auxiliaries with other tokenizers: a Gemma 3 with sliding-window layers, a GPT-2."""
    from unite_logits import Member

    sp, uni = tiny.sp_bpe(), tiny.unigram()
    return [Member(tiny.tiny_gemma3(sp, seed=3, sliding_window=6), sp, name="gemma"),
            Member(tiny.tiny_gpt2(uni, seed=4), uni, name="gpt2")]
