"""Start, check and stop llama.cpp's ``llama-server`` on 127.0.0.1.

One process type, `LlamaServer`, for the set-up's smoke test (``python -m
unite_logits.remote.llama_server``), the test suite's fixtures and the benchmarks. A server
that dies says why by name: a binary built for another CPU dies of ``SIGILL`` as soon as it
loads a model, and "exited with status -4" hides that.

Cost: starting a server loads the GGUF (about 1 s for the catalogue's SmolLM2, 2 s for Gemma 3
270M on 2 cores); the smoke test's one completion takes well under a second.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx2

__all__ = ["BINARY_ENV", "LlamaServer", "LlamaServerError", "exit_reason", "find_binary", "free_port", "smoke_test"]

logger = logging.getLogger(__name__)

BINARY_ENV = "UNITE_LOGITS_LLAMA_SERVER"
START_TIMEOUT_S = 120.0
_LOG_TAIL = 2000
_SIGNAL_CAUSES = {
    signal.SIGILL: "illegal instruction: the binary uses CPU instructions this machine cannot run "
                   "(built with -march=native on another CPU, or for AMX/AVX-512 a process may not use); "
                   "rebuild it portably with bash scripts/install_llama_server.sh",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error (a truncated or damaged model file?)",
    signal.SIGKILL: "killed (out of memory, or stopped by hand)",
    signal.SIGABRT: "aborted (see the log for the assertion)",
}


class LlamaServerError(RuntimeError):
    """``llama-server`` could not be started, died, or answered wrongly; the message says why."""


def exit_reason(returncode: int) -> str:
    """A process's exit status in words: ``"killed by SIGILL (illegal instruction: ...)"``.

    Negative codes are signals (``subprocess``'s convention); 128 + n is a signal as a shell
    reports it.
    """
    number = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else 0
    if number:
        try:
            sig = signal.Signals(number)
        except ValueError:
            return f"killed by signal {number}"
        cause = _SIGNAL_CAUSES.get(sig)
        return f"killed by {sig.name}" + (f" ({cause})" if cause else "")
    return f"exited with status {returncode}"


def find_binary() -> str | None:
    """``$UNITE_LOGITS_LLAMA_SERVER``, else ``llama-server`` beside this Python, else on PATH."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    beside = Path(sys.executable).parent / "llama-server"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("llama-server")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another process may take it before it is bound)."""
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
        extra_args: more command-line options (``--swa-full`` lets Gemma 3 reuse a prefix).
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
        """Start and wait until ``/health`` says the model is loaded (a port taken meanwhile: retry).

        Raises:
            LlamaServerError: the process died (its signal named) or was not healthy in time.
        """
        for _attempt in range(3):
            self.port = free_port()
            self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
            if self._wait_healthy():
                return self
            if self.process.poll() is None:
                self.stop()
                raise LlamaServerError(f"llama-server did not become healthy in {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            if "bind" not in self.log_tail().lower():
                break
        assert self.process is not None
        raise LlamaServerError(f"llama-server {exit_reason(self.process.returncode)}:\n{self.log_tail()}")

    def _wait_healthy(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
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


def smoke_test(binary: str, gguf: Path) -> str:
    """Serve ``gguf`` with ``binary`` and ask for one completion; returns the text it gave.

    Raises:
        LlamaServerError: the server died (by which signal), never became healthy, or its
            answer was not a completion; with the server's log tail. A completion that runs
            checks the model load and the compute kernels, where a bad build dies.
    """
    with LlamaServer(binary, gguf, slots=1, ctx_per_slot=512, extra_args=()) as server:
        try:
            answer = httpx2.post(f"{server.url}/completion", json={"prompt": "The capital of France is", "n_predict": 4, "temperature": 0},
                                 timeout=60.0, trust_env=False)
        except httpx2.HTTPError as error:
            assert server.process is not None
            state = "still running" if server.process.poll() is None else exit_reason(server.process.returncode)
            raise LlamaServerError(f"llama-server ({state}) did not answer a completion: {error}\n{server.log_tail()}") from None
        content = answer.json().get("content") if answer.status_code == 200 else None
        if not isinstance(content, str):
            raise LlamaServerError(f"llama-server answered a completion with HTTP {answer.status_code}: {answer.text[:300]}")
        return content


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m unite_logits.remote.llama_server [BINARY]``: the set-up's smoke test."""
    parser = argparse.ArgumentParser(prog="python -m unite_logits.remote.llama_server",
                                     description="Check that llama-server runs here: load a catalogue GGUF, "
                                                 "answer one completion on 127.0.0.1.")
    parser.add_argument("binary", nargs="?", help="the llama-server to check (default: the one beside this Python)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="catalogue model to load (default %(default)s)")
    args = parser.parse_args(argv)
    binary = args.binary or find_binary()
    if binary is None:
        print("llama-server check: no llama-server found; install it with bash scripts/install_llama_server.sh",
              file=sys.stderr)
        return 2
    from ..models.catalogue import get_entry, is_installed
    from ..models.gguf_files import materialize_gguf

    entry = get_entry(args.model)
    if not is_installed(entry):
        print(f"llama-server check: skipped, {args.model} is not installed ({entry.pip_command})", file=sys.stderr)
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="unite-llama-check-") as workdir:
        try:
            text = smoke_test(binary, materialize_gguf(entry, Path(workdir)))
        except LlamaServerError as error:
            print(f"llama-server check FAILED for {binary}: {error}", file=sys.stderr)
            return 1
    print(f"llama-server check: {args.model} loaded and answered {text!r} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
