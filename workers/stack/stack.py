"""The whole embedded stack in one object: broker, Redis and worker processes, on loopback.

``learnloop dev`` and ``learnloop demo`` use it; Ctrl-C (or leaving the
``with`` block) stops the workers first — so they snapshot — then Redis and the broker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from workers.settings import DEV_ENV_FILE, Settings
from workers.stack.embedded import EmbeddedBroker, EmbeddedRedis


def default_workers() -> tuple[str, ...]:
    """Every worker whose dependencies are installed (the trainer needs the ``train`` extra)."""
    trainer = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "peft", "mlflow"))
    return ("feedback", "conversations", "trainer") if trainer else ("feedback", "conversations")


class EmbeddedStack:
    def __init__(
        self,
        settings: Settings,
        *,
        workers: tuple[str, ...] | None = None,
        learners_file: Path | None = None,
        log_dir: Path | None = None,
        quiet_workers: bool = False,
    ) -> None:
        self.settings = settings
        self.workers = workers if workers is not None else default_workers()
        self.learners_file = learners_file
        self.log_dir = log_dir or settings.data_dir / "logs"
        self.quiet_workers = quiet_workers
        self.broker: EmbeddedBroker | None = None
        self.redis: EmbeddedRedis | None = None
        self.redis_url = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env_file = Path(DEV_ENV_FILE)

    @property
    def bootstrap_servers(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap_servers

    def env(self) -> dict[str, str]:
        """Environment for processes that should talk to this stack."""
        env = {
            "LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "LEARNLOOP_REDIS__URL": self.redis_url,
            # Short group timeouts: Tansu holds a JoinGroup for about half the session timeout.
            "LEARNLOOP_KAFKA__SESSION_TIMEOUT_MS": "2000",
            "LEARNLOOP_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
        }
        if self.learners_file:
            env["LEARNLOOP_LEARNERS_FILE"] = str(self.learners_file)
        return env

    def start(self) -> EmbeddedStack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(log_path=self.log_dir / "broker.log").start()
        if "LEARNLOOP_REDIS__URL" in os.environ:
            self.redis_url = self.settings.redis.url  # an explicit Redis wins over the embedded one
        else:
            self.redis = EmbeddedRedis(log_path=self.log_dir / "redis.log").start()
            self.redis_url = self.redis.url
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.env().items()))
        for name in self.workers:
            self.start_worker(name)
        return self

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env()}
        log = open(self.log_dir / f"worker-{name}.log", "ab")  # noqa: SIM115
        out = log if self.quiet_workers else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker", name],
            env=env, stdout=out, stderr=out, start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def failed_workers(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.redis:
            self.redis.stop()
        if self.broker:
            self.broker.stop()
        with contextlib.suppress(FileNotFoundError):
            self.env_file.unlink()

    def __enter__(self) -> EmbeddedStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
