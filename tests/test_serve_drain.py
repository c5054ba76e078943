"""``unite-logits serve`` drains on SIGTERM: a real server process, requests in flight.

The server is the real command in a child process (`testkit.slow_cli`: every forward pass of
the tiny models 50 ms slower, so a request is surely in flight when the signal comes), on a
free 127.0.0.1 port, with ``--max-batch 1`` so that one request runs while the other waits:
both count as in flight. After SIGTERM new requests get 503 with ``Retry-After``, ``/health``
says ``draining``, what was in flight is answered in full (or, once a short grace period is
over, ends with the clear shutdown error), and the process exits 0.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from testkit.tiny_ensemble import save_tiny_pair  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny"
HELLO = [{"role": "user", "content": "Hello there"}]
DELAY_S = "0.05"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[str, str]:
    return save_tiny_pair(tmp_path_factory.mktemp("drain-models"))


class Server:
    """The ``serve`` command in a child process; ``url`` once it answers ``/health``."""

    def __init__(self, folders: tuple[str, str], cwd: Path, *extra: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = cwd / "server.log"
        self.child = subprocess.Popen(
            [sys.executable, "-m", "testkit.slow_cli", DELAY_S, "serve", "--primary", folders[0], "--aux", folders[1],
             "--port", str(self.port), "--served-model-name", MODEL, "--max-batch", "1", *extra],
            cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="-", max_retries=0, timeout=120)
        deadline = time.monotonic() + 120
        while self.get("/health")[0] != 200:
            assert self.child.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, str], Any]:
        """Status, headers and JSON body of one request on a fresh connection (0 if refused)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, None if body is None else json.dumps(body),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
        except ConnectionError:
            return 0, {}, None
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, dict[str, str], Any]:
        return self.request("GET", path)

    def in_flight(self) -> int:
        status, _, body = self.get("/health")
        return body["in_flight"] if status == 200 else -1

    def stop(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait(30)


def ask_chat(server: Server, out: dict[str, Any], started: threading.Event, max_tokens: int) -> None:
    """A streamed chat request: its pieces, its finish reason, or the error it ended with."""
    pieces, reasons = [], []
    try:
        stream = server.client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=max_tokens, stream=True)
        for chunk in stream:
            started.set()
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                reasons.append(chunk.choices[0].finish_reason)
    except openai.APIError as error:
        out["error"] = error
    out["text"], out["reasons"] = "".join(pieces), reasons


def ask_completion(server: Server, out: dict[str, Any], max_tokens: int) -> None:
    """A plain (non-streamed) completion request: its choice, or the error it got."""
    try:
        out["choice"] = server.client.completions.create(model=MODEL, prompt="The quick brown fox",
                                                         max_tokens=max_tokens).choices[0]
    except openai.APIStatusError as error:
        out["error"] = error


def both_in_flight(server: Server, max_tokens: int) -> tuple[dict[str, Any], dict[str, Any], list[threading.Thread]]:
    """A streamed chat (generating) and a plain completion (waiting for the one batch slot)."""
    streamed: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    started = threading.Event()
    threads = [threading.Thread(target=ask_chat, args=(server, streamed, started, max_tokens)),
               threading.Thread(target=ask_completion, args=(server, plain, max_tokens))]
    threads[0].start()
    assert started.wait(60), server.log.read_text()
    threads[1].start()
    deadline = time.monotonic() + 30
    while server.in_flight() != 2:
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.02)
    return streamed, plain, threads


def test_sigterm_drains_answers_in_flight_in_full_refuses_new_ones_and_exits_0(folders, tmp_path):
    server = Server(folders, tmp_path)
    try:
        tokens = 40  # about 2 s of generation each at 50 ms a forward pass
        alone_chat: dict[str, Any] = {}
        ask_chat(server, alone_chat, threading.Event(), tokens)
        alone_plain: dict[str, Any] = {}
        ask_completion(server, alone_plain, tokens)
        assert alone_chat["reasons"] == ["length"] and alone_plain["choice"].finish_reason == "length"
        streamed, plain, threads = both_in_flight(server, tokens)
        server.child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (health := server.get("/health"))[0] != 503:
            assert time.monotonic() < deadline, "the server did not start draining"
            time.sleep(0.02)
        status, headers, body = health
        assert body["status"] == "draining" and body["in_flight"] == 2 and int(headers["retry-after"]) >= 1
        status, headers, body = server.request("POST", "/v1/chat/completions",
                                               {"model": MODEL, "messages": HELLO, "max_tokens": 2})
        assert status == 503 and 1 <= int(headers["retry-after"]) <= 30, body
        assert body["error"]["code"] == "server_shutdown" and "takes no new requests" in body["error"]["message"]
        for thread in threads:
            thread.join(120)
        assert "error" not in streamed and "error" not in plain, (streamed, plain)
        assert streamed["text"] == alone_chat["text"] and streamed["reasons"] == ["length"]  # in full
        assert plain["choice"].text == alone_plain["choice"].text and plain["choice"].finish_reason == "length"
        assert server.child.wait(60) == 0, server.log.read_text()
        log = server.log.read_text()
        assert "shutting down: 2 request(s) in flight may finish within 30 s" in log and "drained" in log
        assert "Traceback" not in log
    finally:
        server.stop()


def test_past_a_short_grace_period_what_is_left_ends_with_the_shutdown_error_and_the_process_exits_0(folders, tmp_path):
    server = Server(folders, tmp_path, "--shutdown-grace", "1")
    try:
        streamed, plain, threads = both_in_flight(server, 3000)  # a minute of work each: longer than the grace
        signalled = time.monotonic()
        server.child.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        assert time.monotonic() - signalled < 15
        assert "shutting down" in str(streamed.get("error")), streamed  # in the stream, the headers being sent
        assert streamed["reasons"] == [] and streamed["text"]  # cut short after it had begun
        error = plain.get("error")
        assert error is not None and error.status_code == 503, plain  # it was waiting for the batch slot
        assert error.body["code"] == "server_shutdown" and "shutting down" in error.body["message"]
        assert server.child.wait(60) == 0, server.log.read_text()
        log = server.log.read_text()
        assert "grace period (1 s) is over: cancelling the 2 request(s) still in flight" in log, log
        assert "Traceback" not in log
    finally:
        server.stop()


def test_shutdown_grace_reaches_serve_and_bad_values_are_one_line(monkeypatch, capsys):
    import unite_logits.apps.serving as serving
    from unite_logits.apps import cli

    seen: list[float] = []
    monkeypatch.setattr(cli, "_load_ensemble", lambda args: type("E", (), {"models": []})())
    monkeypatch.setattr(serving, "serve", lambda ensemble, settings, **kwargs: seen.append(kwargs["shutdown_grace_s"]))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    assert cli.main(["serve", "--port", port]) == 0 and cli.main(["serve", "--port", port, "--shutdown-grace", "0"]) == 0
    assert seen == [30.0, 0.0]
    capsys.readouterr()
    for bad in ("-1", "soon"):
        assert cli.main(["serve", "--port", port, "--shutdown-grace", bad]) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert "--shutdown-grace" in err and len(err.strip().splitlines()) == 1
    assert seen == [30.0, 0.0]
