"""``unite-logits chat``: multi-turn history per member template, /reset, /exit, pipes, Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from testkit.tiny_ensemble import tiny_ensemble

from unite_logits import Ensemble
from unite_logits.apps import cli
from unite_logits.apps.chat import INTERRUPTED, run_chat
from unite_logits.ensemble.options import GenerationOptions

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ensemble():
    return tiny_ensemble()


@pytest.fixture
def spy_member_prompts(monkeypatch, ensemble):
    """What each auxiliary was given, turn by turn (decoded), from the processors built."""
    seen: list[str] = []
    build = Ensemble._processor

    def processor(self, member_prompts, trace):
        made = build(self, member_prompts, trace)
        (row,) = made.member_prompts[0]  # the auxiliary's prompt for the one row of the chat turn
        seen.append(self.models[1].tokenizer.decode(row))
        return made

    monkeypatch.setattr(Ensemble, "_processor", processor)
    return seen


def chat(ensemble, text, **kwargs):
    out = io.StringIO()
    code = run_chat(ensemble, GenerationOptions(max_new_tokens=6), stdin=io.StringIO(text), out=out, **kwargs)
    return code, out.getvalue()


def test_each_turn_sees_the_whole_history_in_each_members_template(ensemble, spy_member_prompts):
    code, out = chat(ensemble, "Hello there\n\nWhat is 12 plus 30?\n")
    answers = out.splitlines()
    assert code == 0 and len(answers) == 2 and all(answers)
    first, second = spy_member_prompts
    assert first.endswith("[USER] Hello there\n[ASSISTANT] ")
    # The auxiliary's own bracket template, with the ensemble's first answer in it.
    assert second.endswith(f"[USER] Hello there\n[ASSISTANT] {answers[0]}\n[USER] What is 12 plus 30?\n[ASSISTANT] ")


def test_reset_forgets_and_exit_leaves(ensemble, spy_member_prompts):
    code, out = chat(ensemble, "Hello there\n/reset\nHello there\n/exit\nnever read\n", system="Be brief.")
    first, second = spy_member_prompts
    assert first == second and first.count("[USER]") == 1 and "[SYSTEM] Be brief." in first
    assert len(spy_member_prompts) == 2  # nothing after /exit
    answers = out.splitlines()
    assert code == 0 and answers[0] == answers[1]  # greedy, same history: same answer


def test_a_turn_too_long_is_refused_in_one_line_and_the_chat_goes_on(ensemble, spy_member_prompts, capsys):
    too_long = "pancakes " * 5000  # past the tiny primary's 4096 positions
    code, out = chat(ensemble, f"{too_long}\nHello there\n")
    err = capsys.readouterr().err
    assert code == 0 and "context window" in err and len(err.strip().splitlines()) == 1
    (only,) = spy_member_prompts  # the long turn left no trace in the history
    assert only.count("[USER]") == 1 and "pancakes" not in only
    assert len(out.splitlines()) == 1


def test_a_template_that_refuses_the_conversation_is_one_line(capsys):
    strict = tiny_ensemble()
    strict.models[1].tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + strict.models[1].tokenizer.chat_template)
    code, out = chat(strict, "Hello there\n", system="Be brief.")
    err = capsys.readouterr().err
    assert code == 0 and out == "" and "System role not supported" in err and len(err.strip().splitlines()) == 1


def test_the_cli_chat_reads_a_pipe(monkeypatch, ensemble, capsys):
    monkeypatch.setattr(cli, "_load_ensemble", lambda args: ensemble)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello there\n"))
    assert cli.main(["chat", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    expected = ensemble.generate([{"role": "user", "content": "Hello there"}], GenerationOptions(max_new_tokens=5)).text
    assert out == expected + "\n"


CHILD = textwrap.dedent("""
    import sys
    from testkit.tiny_ensemble import tiny_ensemble
    from unite_logits.apps.chat import run_chat
    from unite_logits.ensemble.options import GenerationOptions
    sys.exit(run_chat(tiny_ensemble(), GenerationOptions(max_new_tokens=4000)))
""")


def _read_until(stream, predicate, seconds=180.0) -> bytes:  # a loaded machine starts slowly
    got = b""
    deadline = time.monotonic() + seconds
    while not predicate(got) and time.monotonic() < deadline:
        got += stream.read() or b""
        time.sleep(0.05)
    return got


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_ctrl_c_stops_the_answer_and_the_conversation_goes_on():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = INTERRUPTED.encode()
    try:
        os.set_blocking(child.stdout.fileno(), False)
        out = b""
        for turn in (1, 2):  # Ctrl-C while each answer streams; the second turn shows the chat went on
            child.stdin.write(b"Hello there\n")
            child.stdin.flush()
            out += _read_until(child.stdout, lambda got: len(got) > 0)
            child.send_signal(signal.SIGINT)
            out += _read_until(child.stdout, lambda got: (out + got).count(marker) == turn)
            assert out.count(marker) == turn, out
        child.stdin.write(b"/exit\n")
        child.stdin.close()
        code = child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert code == 0, child.stderr.read().decode()
    assert len(out) < 4000  # both answers stopped long before their 4000 tokens


# -- on the real models -------------------------------------------------------------------
def _real_cli(args, stdin_text=""):
    from testkit.real_models import skip_unless_installed

    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        skip_unless_installed(name)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "unite_logits", *args], input=stdin_text.encode(), cwd=ROOT, env=env,
                          capture_output=True, timeout=900)


@pytest.mark.real_models
def test_real_generate_answers_a_bare_question_as_a_chat():
    done = _real_cli(["generate", "What is the capital of France?", "--json", "--max-new-tokens", "24"])
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert result["format"] == "chat" and "Paris" in result["text"]


@pytest.mark.real_models
def test_real_chat_remembers_the_conversation():
    done = _real_cli(["chat", "--max-new-tokens", "40"], "What is the capital of France?\nAnd of Italy?\n")
    assert done.returncode == 0, done.stderr.decode()
    first, second = done.stdout.decode().strip().splitlines()
    assert "Paris" in first and "Rome" in second  # "And of Italy?" only makes sense with the first turn


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_in_a_terminal_ctrl_c_and_ctrl_d_behave_as_in_a_shell():
    """On a real (pseudo-)terminal: a prompt, Ctrl-C stops the answer, Ctrl-C at the prompt hints, Ctrl-D leaves."""
    import pty

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    main_fd, child_fd = pty.openpty()
    def own_terminal():  # a new session whose controlling terminal is the pty, as a shell sets it up
        import fcntl
        import termios

        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        # as a shell starts a foreground job: a test run in the background inherits SIGINT ignored
        # (non-interactive shells ignore it for `&` jobs), and Python then installs no Ctrl-C handler
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env,
                             stdin=child_fd, stdout=child_fd, stderr=subprocess.PIPE, preexec_fn=own_terminal)
    os.close(child_fd)
    os.set_blocking(main_fd, False)
    screen = b""

    def read_while(waiting, seconds: float) -> None:
        nonlocal screen
        deadline = time.monotonic() + seconds
        while waiting() and time.monotonic() < deadline:
            try:
                screen += os.read(main_fd, 65536)
            except (BlockingIOError, OSError):
                time.sleep(0.05)

    def wait_for_screen(needle: bytes, count: int = 1, seconds: float = 180.0) -> None:
        read_while(lambda: screen.count(needle) < count, seconds)
        assert screen.count(needle) >= count, (needle, screen[-500:])

    try:
        wait_for_screen(b">>> ")
        assert b"Chatting with tiny-primary + tiny-aux" in screen and b"/reset" in screen
        os.write(main_fd, b"Hello there\n")
        wait_for_screen(b"Hello there\r\n")  # the terminal echoes the line
        echoed = screen.index(b"Hello there\r\n") + len(b"Hello there\r\n")
        read_while(lambda: len(screen) <= echoed, 120)  # until the answer streams (Ctrl-C now stops it)
        assert len(screen) > echoed, "the answer never started"
        os.write(main_fd, b"\x03")  # Ctrl-C, turned into SIGINT by the terminal
        wait_for_screen(INTERRUPTED.encode(), seconds=60)
        wait_for_screen(b">>> ", count=2, seconds=60)  # the conversation goes on
        os.write(main_fd, b"\x03")  # Ctrl-C at the prompt
        wait_for_screen(b"Ctrl-D leaves", seconds=60)
        os.write(main_fd, b"\x04")  # Ctrl-D
        code = child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        os.close(main_fd)
    assert code == 0, child.stderr.read().decode()
