"""Draining: after SIGTERM the server finishes what it has and takes nothing new.

A rolling restart (Kubernetes, systemd) stops a server with SIGTERM and waits a grace period
before killing it. `Drain` holds the state: how many requests are in flight and, once
draining has begun, until when. `RefuseWhileDraining` (ASGI middleware, outermost) counts the
requests in flight and, while draining, answers every new one 503 with ``Retry-After`` (an
OpenAI-style error body, which the ``openai`` client retries on); ``/health`` is left to the
route, which reports ``draining``. The uvicorn server (`unite_logits.apps.serving.server`)
decides when to stop: once nothing is in flight, or when the grace period is over.
"""

from __future__ import annotations

import math
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from . import openai_format as fmt

__all__ = ["DEFAULT_SHUTDOWN_GRACE_S", "Drain", "RefuseWhileDraining"]

DEFAULT_SHUTDOWN_GRACE_S = 30.0
"""How long a draining server waits for the requests in flight (uvicorn's and vLLM's sense)."""

HEALTH_PATH = "/health"


class Drain:
    """Requests in flight, and whether (and until when) the server is draining.

    Touched only from the event loop's thread, so plain counters suffice.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self.deadline: float | None = None  # time.monotonic() by which the server stops

    @property
    def draining(self) -> bool:
        return self.deadline is not None

    def begin(self, grace_s: float) -> None:
        """Start draining: refuse new requests, allow those in flight ``grace_s`` seconds."""
        if self.deadline is None:
            self.deadline = time.monotonic() + grace_s

    def seconds_left(self) -> float:
        """Of the grace period (0 when not draining or past it)."""
        return 0.0 if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def retry_after(self) -> int:
        """Whole seconds until this server is gone at the latest (at least 1): when to retry."""
        return max(1, math.ceil(self.seconds_left()))


class RefuseWhileDraining:
    """ASGI middleware: counts HTTP requests in flight; while draining, a new one gets 503."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            retry = self.drain.retry_after()
            body = fmt.error_body(f"the server is shutting down and takes no new requests; retry in {retry} s "
                                  "(another replica may answer sooner)", "server_error", code="server_shutdown")
            await JSONResponse(body, status_code=503, headers={"Retry-After": str(retry)})(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)  # returns once the whole response (a stream too) is sent
        finally:
            self.drain.in_flight -= 1
