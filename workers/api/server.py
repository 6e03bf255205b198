"""Serving the gateway: ``run_api`` (``learnloop worker api``) and ``BackgroundServer`` (tests, embedding)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from schemas.errors import StoreUnavailable
from workers.api.app import create_app
from workers.api.config import ApiConfig
from workers.settings import Settings


def _uvicorn_config(app: FastAPI, log_level: str, host: str = "127.0.0.1", port: int = 0) -> uvicorn.Config:
    # ws="none": the gateway has no websockets, and uvicorn's websockets import warns on newer releases.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        ws="none",
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=10,
    )


def run_api(settings: Settings, *, api: ApiConfig | None = None) -> None:
    """Serve the gateway on ``settings.api.host:port`` (or ``api``'s) until SIGINT/SIGTERM.

    On a signal uvicorn stops taking requests, lets those in flight finish, then the
    lifespan flushes and stops the producer.
    """
    config = api if api is not None else settings.api
    server = uvicorn.Server(_uvicorn_config(create_app(settings, api=config), settings.log_level,
                                            config.host, config.port))
    main = threading.current_thread() is threading.main_thread()
    # After a graceful shutdown uvicorn raises the signal again under the handler it found. Finding
    # one that ignores SIGTERM, the process then exits 0, like the other workers; SIGINT still
    # raises KeyboardInterrupt (the CLI's exit 130).
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
    try:
        server.run()
    except SystemExit:
        if server.started:
            raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if not server.started:  # uvicorn logged why (and exits 3 on a failed startup); say it in one line
        raise StoreUnavailable(
            f"the gateway did not start (is the broker at {settings.kafka.bootstrap_servers} reachable, "
            f"{config.host}:{config.port} free?)"
        )


class BackgroundServer:
    """The app served by uvicorn in a daemon thread, on a loopback port bound before it starts.

    ``with BackgroundServer(app) as server: httpx.get(server.url + "/healthz")``
    """

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.app = app
        self._server = uvicorn.Server(_uvicorn_config(app, log_level))
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host = host
        self.port = int(self._socket.getsockname()[1])
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="learnloop-api", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the gateway did not start on {self.url} (see the log for its lifespan error)")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
