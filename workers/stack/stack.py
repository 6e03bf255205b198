"""The whole embedded stack in one object: broker, Redis and worker processes, on loopback.

``learnloop dev`` and ``learnloop demo`` use it; leaving the ``with`` block stops the workers
first — so they snapshot — then Redis and the broker. Every child writes to a log file under
``.learnloop/logs`` (the terminal belongs to the command) and dies with its parent
(:mod:`workers.stack.processes`); dev.env goes with the stack, even when the parent is SIGKILLed
(:class:`EnvFileWatchdog`). Each worker serves ``/metrics`` on a free port of its own, so two
stacks on one host do not collide; the ports are printed and written to ``dev.env``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from workers.settings import DEV_ENV_FILE, Settings
from workers.stack.embedded import EmbeddedBroker, EmbeddedError, EmbeddedRedis, free_port
from workers.stack.processes import spawn, terminate

# Lines of dev.env that only describe the stack: no setting has these names, so no command reads them.
DEV_PID_VAR = "LEARNLOOP_DEV_PID"
DEV_METRICS_VAR = "LEARNLOOP_DEV_METRICS_"


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
    ) -> None:
        self.settings = settings
        self.workers = workers if workers is not None else default_workers()
        self.learners_file = learners_file
        self.log_dir = log_dir or settings.data_dir / "logs"
        self.broker: EmbeddedBroker | None = None
        self.redis: EmbeddedRedis | None = None
        self.redis_url = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env_file = Path(DEV_ENV_FILE)
        self.metrics_ports: dict[str, int] = {}
        self._wrote_env_file = False
        self._watchdog: EnvFileWatchdog | None = None

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

    def metrics_urls(self) -> dict[str, str]:
        host = self.settings.metrics.host
        return {name: f"http://{host}:{port}/metrics" for name, port in self.metrics_ports.items()}

    def start(self) -> EmbeddedStack:
        self._refuse_a_second_stack()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(log_path=self.log_dir / "broker.log").start()
        if "LEARNLOOP_REDIS__URL" in os.environ:
            self.redis_url = self.settings.redis.url  # an explicit Redis wins over the embedded one
        else:
            self.redis = EmbeddedRedis(log_path=self.log_dir / "redis.log").start()
            self.redis_url = self.redis.url
        # LEARNLOOP_METRICS__PORT=0 turns metrics off; any other value cannot serve several workers.
        if self.settings.metrics.port != 0:
            self.metrics_ports = _free_ports(self.workers)
        lines = {**self.env(), DEV_PID_VAR: str(os.getpid())}
        lines.update({DEV_METRICS_VAR + n.upper(): url for n, url in self.metrics_urls().items()})
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        self._wrote_env_file = True
        self._watchdog = EnvFileWatchdog(self.env_file, f"{DEV_PID_VAR}={os.getpid()}")
        for name in self.workers:
            self.start_worker(name)
        return self

    def _refuse_a_second_stack(self) -> None:
        """Two stacks in one folder would share its database, graph and dev.env: refuse the second."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            for line in self.env_file.read_text().splitlines():
                if line.startswith(DEV_PID_VAR + "="):
                    pid = int(line.split("=", 1)[1])
                    if pid != os.getpid() and _alive(pid):
                        raise EmbeddedError(
                            f"learnloop dev already runs in this folder (pid {pid}, see {self.env_file}); "
                            "stop it first or start this one in another folder"
                        )

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env(), "LEARNLOOP_METRICS__PORT": str(self.metrics_ports.get(name, 0))}
        proc = spawn([sys.executable, "-m", "workers.cli", "worker", name], log_path=self.worker_log(name), env=env)
        self.procs[name] = proc
        return proc

    def worker_log(self, name: str) -> Path:
        return self.log_dir / f"worker-{name}.log"

    def log_tail(self, name: str, lines: int = 5) -> list[str]:
        """The last lines a worker wrote: why it stopped, usually."""
        try:
            text = self.worker_log(name).read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def failed_workers(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def stop(self) -> None:
        terminate(list(self.procs.values()), 30.0)
        if self.redis:
            self.redis.stop()
        if self.broker:
            self.broker.stop()
        if self._wrote_env_file:
            with contextlib.suppress(FileNotFoundError):
                self.env_file.unlink()
            self._wrote_env_file = False
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None

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


# Blocks on its stdin, the read end of a pipe only this process writes to: the read returns when we
# exit, however we exit (SIGKILL included), and then dev.env goes unless a newer stack owns it.
_WATCHDOG = """
import os, sys
sys.stdin.buffer.read()
path, owner = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        ours = owner in f.read().splitlines()
    if ours:
        os.remove(path)
except OSError:
    pass
"""


class EnvFileWatchdog:
    """A small process that removes dev.env once this one exits, even by SIGKILL, when no handler runs."""

    def __init__(self, path: Path, owner_line: str) -> None:
        read_end, self._pipe = os.pipe()  # the write end is close-on-exec: no other child holds it
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(path.resolve()), owner_line],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            os.close(read_end)

    def close(self) -> None:
        """On a normal stop: let it go now (dev.env is already removed by then)."""
        os.close(self._pipe)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            terminate([self.proc], 1.0)


def _free_ports(names: tuple[str, ...]) -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(ports) < len(names):
        port = free_port()
        if port not in ports.values():
            ports[names[len(ports)]] = port
    return ports


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
