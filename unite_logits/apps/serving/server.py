"""Running the application with uvicorn: in the foreground (the CLI) or on a background thread.

uvicorn is the usual ASGI server under FastAPI: HTTP/1.1 keep-alive, streaming without
buffering. `serve` drains on SIGTERM or Ctrl-C (`unite_logits.apps.serving.drain`): new
requests get 503, those in flight finish within the grace period, what is left then is
cancelled with a clear error, and the process exits 0 (a second signal stops at once).
`BackgroundServer` serves on a free loopback port from a thread, for notebooks and tests.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

from .app import ServerSettings, create_app
from .drain import DEFAULT_SHUTDOWN_GRACE_S, Drain
from .worker import GenerationWorker

__all__ = ["serve", "BackgroundServer", "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_SHUTDOWN_GRACE_S"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
GRACEFUL_SHUTDOWN_S = 5  # for responses still open once their generations are cancelled


class _DrainingServer(uvicorn.Server):
    """uvicorn, with a drain before its own shutdown.

    uvicorn on a signal closes its listening sockets at once (new clients get "connection
    refused", not an answer) and then re-raises the signal, so the process dies of it. Here
    the first SIGTERM/SIGINT only starts the drain; the event loop's tick (every 0.1 s) ends
    it when nothing is in flight or the grace period is over; then uvicorn's shutdown runs
    as usual, and the signal is not re-raised: the process exits 0.
    """

    def __init__(self, config: uvicorn.Config, worker: GenerationWorker, drain: Drain, grace_s: float) -> None:
        super().__init__(config)
        self.worker = worker
        self.drain = drain
        self.grace_s = grace_s
        self.signals = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Runs in a signal handler: only counts; `on_tick` acts (and logs) on the event loop."""
        self.signals += 1
        if self.should_exit and sig == signal.SIGINT:  # Ctrl-C while uvicorn shuts down: as uvicorn, quit now
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.signals and not self.should_exit:
            self.should_exit = self._drained()
        return await super().on_tick(counter)

    def _drained(self) -> bool:
        """Start or follow the drain; True once the server may stop (what is left cancelled)."""
        if not self.drain.draining:
            self.drain.begin(self.grace_s)
            if self.grace_s > 0:
                logger.info("shutting down: %d request(s) in flight may finish within %g s; new ones get 503 "
                            "(signal again to stop now)", self.drain.in_flight, self.grace_s)
        if self.drain.in_flight == 0:
            logger.info("drained: no request in flight; stopping")
            return True
        if self.signals > 1 or self.drain.seconds_left() <= 0:
            logger.warning("%s: cancelling the %d request(s) still in flight", "stopping now" if self.signals > 1
                           else f"the shutdown grace period ({self.grace_s:g} s) is over", self.drain.in_flight)
            self.worker.cancel_all()
            return True
        return False


def serve(ensemble: Any, settings: ServerSettings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          log_level: str = "info", shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S) -> None:
    """Serve ``ensemble`` until SIGTERM or Ctrl-C, then drain: new requests get 503 with
    ``Retry-After`` and ``/health`` says ``draining``; the requests in flight have
    ``shutdown_grace_s`` seconds to finish (0: none), then what is left ends with a
    ``server_shutdown`` error. A second signal cancels at once."""
    if not shutdown_grace_s >= 0:
        raise ValueError(f"`shutdown_grace_s` has to be a number of seconds >= 0, but is {shutdown_grace_s!r}")
    app = create_app(ensemble, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    _DrainingServer(config, app.state.worker, app.state.drain, shutdown_grace_s).run()


class BackgroundServer:
    """The server on ``host`` and a free port, in a daemon thread; ``with`` starts and stops it."""

    def __init__(self, ensemble: Any, settings: ServerSettings, host: str = DEFAULT_HOST,
                 log_level: str = "warning") -> None:
        self.app = create_app(ensemble, settings)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.host, self.port = self._socket.getsockname()[:2]
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level=log_level, lifespan="on",
                                                     timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="unite-logits-server", daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the OpenAI API, e.g. ``http://127.0.0.1:54321/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.app.state.worker.cancel_all()
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
