"""Running the application with uvicorn: in the foreground (the CLI) or on a background thread.

uvicorn is the usual ASGI server under FastAPI: HTTP/1.1 keep-alive, graceful shutdown,
streaming without buffering. `BackgroundServer` serves on a free loopback port from a thread,
for notebooks and tests.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from .app import ServerSettings, create_app
from .worker import GenerationWorker

__all__ = ["serve", "BackgroundServer", "DEFAULT_HOST", "DEFAULT_PORT"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
GRACEFUL_SHUTDOWN_S = 5  # for responses still open once their generations are cancelled


class _CancellingServer(uvicorn.Server):
    """On Ctrl-C or SIGTERM, cancel the generations first, so that open responses end at once."""

    def __init__(self, config: uvicorn.Config, worker: GenerationWorker) -> None:
        super().__init__(config)
        self.worker = worker

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.worker.cancel_all()
        super().handle_exit(sig, frame)


def serve(ensemble: Any, settings: ServerSettings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          log_level: str = "info") -> None:
    """Serve ``ensemble`` until Ctrl-C or SIGTERM; answers in progress end with a ``server_shutdown`` error."""
    app = create_app(ensemble, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    _CancellingServer(config, app.state.worker).run()


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
