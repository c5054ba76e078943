"""JSON over HTTP to one server, with a timeout, retries on connection errors, and one error type.

A pooled `httpx2.Client` (the HTTP client ``huggingface_hub`` already depends on) is shared
by the threads that send a batch's rows at once; it keeps connections alive, so a step
costs one short request per row and no TCP handshake.

What is retried: a connection that cannot be opened or breaks before an answer (server
restarting, too many connections) and HTTP 503 (llama-server still loading its model),
after 0.1 s, 0.2 s, 0.4 s, ... What is not: a server that accepted the request and stays
silent past ``timeout`` (waiting again would double a wait that already failed), an error
status, an answer that is not JSON. Each ends in `RemoteMemberError` naming member and URL.

``timeout`` bounds each read, and also each answer as a whole: the body is read in chunks
and a request still unanswered ``timeout`` seconds after it was sent fails, so a server that
sends its headers and then one byte every few seconds cannot hold a generation. (A server
that drips its *headers* is bounded by the read timeout only.)
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx2

from .errors import RemoteMemberError

__all__ = ["JsonClient"]

logger = logging.getLogger(__name__)

_FIRST_BACKOFF_S = 0.1
_RETRY_STATUSES = frozenset({503})
_SHOWN_BODY = 300
"""Characters of an error answer quoted in the message."""


class JsonClient:
    """Sends JSON requests to ``url`` on behalf of member ``member``.

    Args:
        url: the server's base URL (``http://host:port``, optionally with a path prefix).
        member: the member's name, for messages.
        timeout: seconds to wait for a connection and for an answer.
        retries: extra attempts after a connection error or a 503.
        connections: size of the connection pool (rows sent at once).
        api_key: sent as a bearer token, for servers that want one.
    """

    def __init__(
        self, url: str, member: str, *, timeout: float, retries: int, connections: int, api_key: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.member = member
        self.retries = retries
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            self._http = httpx2.Client(
                base_url=self.url,
                timeout=timeout,
                headers=headers,
                limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections),
                trust_env=False,  # a member on loopback or a LAN must not go through a proxy
            )
        except (httpx2.InvalidURL, httpx2.UnsupportedProtocol, ValueError) as error:
            raise self.error(f"not a usable URL ({error})") from None

    def error(self, problem: str) -> RemoteMemberError:
        return RemoteMemberError(self.member, self.url, problem)

    def close(self) -> None:
        self._http.close()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, allow: tuple[int, ...] = ()) -> Any:
        """The decoded JSON answer; None if the status is in ``allow`` (e.g. 404 for an optional endpoint)."""
        status, content = self._send(method, path, body)
        if status in allow:
            return None
        text = content.decode("utf-8", errors="replace")
        if status >= 400:
            text = text.strip().replace("\n", " ")
            shown = text[:_SHOWN_BODY] + ("..." if len(text) > _SHOWN_BODY else "")
            raise self.error(f"{method} {path} answered HTTP {status}: {shown or '(empty body)'}")
        try:
            return json.loads(content)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise self.error(f"{method} {path} answered something that is not JSON ({error}): {text[:80]!r}") from None

    def _read(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        """One request: its status and whole body, within ``timeout`` from sending it."""
        deadline = time.monotonic() + self.timeout
        with self._http.stream(method, path, json=body) as response:
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise self.error(
                        f"the answer to {method} {path} was still arriving after {self.timeout:g} s (the timeout "
                        "bounds a whole answer); the server is stalled or sending too slowly"
                    )
            return response.status_code, b"".join(chunks)

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        attempt = 0
        while True:
            try:
                status, content = self._read(method, path, body)
            except httpx2.TimeoutException as error:
                if isinstance(error, (httpx2.ConnectTimeout, httpx2.PoolTimeout)) and attempt < self.retries:
                    problem = f"{type(error).__name__}"
                else:
                    raise self.error(
                        f"no answer to {method} {path} within the timeout of {self.timeout:g} s "
                        f"({type(error).__name__}); raise `timeout` if the server is just slow"
                    ) from None
            except (httpx2.ConnectError, httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.WriteError) as error:
                if attempt >= self.retries:
                    raise self.error(
                        f"cannot reach the server ({type(error).__name__}: {error}) after {attempt + 1} "
                        "attempt(s); is it running and listening there?"
                    ) from None
                problem = f"{type(error).__name__}: {error}"
            except httpx2.HTTPError as error:  # anything else the transport raises (bad URL at request time, ...)
                raise self.error(f"{method} {path} failed: {type(error).__name__}: {error}") from None
            else:
                if status not in _RETRY_STATUSES or attempt >= self.retries:
                    return status, content
                problem = f"HTTP {status}"
            delay = _FIRST_BACKOFF_S * 2**attempt
            logger.info("remote member %r at %s: %s; retrying in %.1f s", self.member, self.url, problem, delay)
            time.sleep(delay)
            attempt += 1
