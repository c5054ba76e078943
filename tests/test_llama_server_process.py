"""The llama-server process wrapper and the set-up's smoke test.

A server that dies must say why by name (a binary built for another CPU dies of SIGILL on its
first model load). Stand-in binaries here are real executables (shell scripts) that die the
way a broken build does; the real llama-server runs through the same code in
``test_remote.py`` and ``test_served_primary.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from unite_logits.remote.llama_server import LlamaServer, LlamaServerError, exit_reason, main, smoke_test


def executable(tmp_path: Path, body: str) -> str:
    script = tmp_path / "llama-server"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("returncode, words", [
    (-signal.SIGILL, "killed by SIGILL (illegal instruction"),
    (128 + signal.SIGILL, "killed by SIGILL"),
    (-signal.SIGSEGV, "killed by SIGSEGV"),
    (-signal.SIGKILL, "killed by SIGKILL (killed (out of memory"),
    (1, "exited with status 1"),
    (0, "exited with status 0"),
])
def test_exit_reason_names_the_signal(returncode, words):
    assert exit_reason(returncode).startswith(words)


def test_a_server_that_dies_of_sigill_is_reported_by_signal_name(tmp_path):
    binary = executable(tmp_path, 'echo "load_tensors: loading model"; kill -ILL $$')
    with pytest.raises(LlamaServerError, match=r"killed by SIGILL \(illegal instruction.*\n.*load_tensors"):
        LlamaServer(binary, tmp_path / "model.gguf").start()


def test_smoke_test_fails_with_the_cause(tmp_path):
    binary = executable(tmp_path, "echo 'error: unknown argument' >&2; exit 3")
    with pytest.raises(LlamaServerError, match="exited with status 3:\n.*unknown argument"):
        smoke_test(binary, tmp_path / "model.gguf")


def test_smoke_test_command_exits_non_zero_naming_the_binary(tmp_path, capsys):
    pytest.importorskip("gguf")
    from testkit.real_models import skip_unless_installed

    skip_unless_installed("smollm2-135m-instruct")
    binary = executable(tmp_path, "kill -ILL $$")
    assert main([binary]) == 1
    err = capsys.readouterr().err
    assert f"llama-server check FAILED for {binary}" in err and "SIGILL" in err


def test_smoke_test_command_without_a_binary_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("UNITE_LOGITS_LLAMA_SERVER", str(tmp_path / "missing"))
    done = subprocess.run([sys.executable, "-m", "unite_logits.remote.llama_server"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "install_llama_server.sh" in done.stderr
