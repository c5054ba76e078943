"""A small real HTTP server on 127.0.0.1 whose completion answers a test scripts.

It speaks enough of llama-server's API (``/props``, ``/v1/models``, ``/tokenize`` with the
test's tokenizer) for a `RemoteMember` to accept it, then answers ``/completion`` and
``/v1/completions`` with whatever the test sets: bad JSON, an error status, too few
candidates, a vLLM-style answer, silence past the timeout. It stands in for no model: the
model tests run against a real ``llama-server`` (`llama_server.py`); this one exists to
produce the broken answers a real server rarely gives on demand.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Reply", "ScriptedServer", "llama_cpp_answer", "vllm_answer"]


@dataclass
class Reply:
    """What the server sends back: a status, a raw body, a delay before it, and (``drip_s``)
    a pause before each byte of the body, as a stalled server sends it."""

    status: int = 200
    body: bytes = b"{}"
    delay_s: float = 0.0
    drip_s: float = 0.0

    @classmethod
    def json(cls, value: Any, status: int = 200) -> "Reply":
        return cls(status, json.dumps(value).encode())


def llama_cpp_answer(candidates: list[tuple[int, float]]) -> dict[str, Any]:
    """llama-server's ``/completion`` answer listing ``candidates`` as (id, logprob)."""
    top = [{"id": i, "token": f"t{i}", "bytes": [], "logprob": lp} for i, lp in candidates]
    return {"completion_probabilities": [{"id": top[0]["id"], "logprob": top[0]["logprob"], "top_logprobs": top}]}


def vllm_answer(candidates: list[tuple[int, float]]) -> dict[str, Any]:
    """vLLM's legacy ``/v1/completions`` answer, candidates keyed ``token_id:ID``."""
    top = {f"token_id:{i}": lp for i, lp in candidates}
    return {"choices": [{"text": "", "logprobs": {"tokens": [f"token_id:{candidates[0][0]}"],
                                                  "token_logprobs": [candidates[0][1]], "top_logprobs": [top]}}]}


class ScriptedServer:
    """Serve on a free port until closed; ``completion`` decides each completion's `Reply`.

    Args:
        tokenizer: answers ``/tokenize`` as this tokenizer would (so the member accepts it).
        llama_cpp: answer ``/props`` (llama-server) or not (a plain OpenAI-compatible server).
        n_ctx: context per request reported by ``/props``.
        n_vocab: vocabulary size reported by ``/v1/models``: the tokenizer's by default, None
            for none (as vLLM).
    """

    def __init__(self, tokenizer: Any, *, llama_cpp: bool = True, n_ctx: int = 4096, n_vocab: int | None = -1) -> None:
        self.tokenizer = tokenizer
        self.llama_cpp = llama_cpp
        self.n_ctx = n_ctx
        self.n_vocab = len(tokenizer) if n_vocab == -1 else n_vocab
        self.completion: Callable[[dict[str, Any]], Reply] = lambda body: Reply.json({})
        self.bodies: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._send(server.route("GET", self.path, {}))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                self._send(server.route("POST", self.path, body))

            def _send(self, reply: Reply) -> None:
                time.sleep(reply.delay_s)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if not reply.drip_s:
                        self.wfile.write(reply.body)
                    for byte in reply.body if reply.drip_s else b"":
                        self.wfile.flush()
                        time.sleep(reply.drip_s)
                        self.wfile.write(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def route(self, method: str, path: str, body: dict[str, Any]) -> Reply:
        if (method, path) == ("GET", "/props"):
            if not self.llama_cpp:
                return Reply(404, b'{"error": "not found"}')
            return Reply.json({"default_generation_settings": {"n_ctx": self.n_ctx}, "total_slots": 2})
        if (method, path) == ("GET", "/v1/models"):
            meta = {} if self.n_vocab is None else {"meta": {"n_vocab": self.n_vocab}}
            return Reply.json({"data": [{"id": "scripted", **meta}]})
        if (method, path) == ("POST", "/tokenize"):
            text = body.get("content", body.get("prompt", ""))
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return Reply.json({"tokens": ids})
        if (method, path) in (("POST", "/completion"), ("POST", "/v1/completions")):
            self.bodies.append(body)
            return self.completion(body)
        return Reply(404, b'{"error": "not found"}')

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
