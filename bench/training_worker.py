"""The trainer worker the end-to-end run of the training benchmark starts: its settings, process, log and readiness.

Part of ``bench.training`` (``.venv/bin/python -m bench.training``); bench/README.md says what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType

from learners.finetune import FineTuneConfig
from streams.config import KafkaConfig

ROOT = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]?\s+(.*)$")


def log_times(log: Path) -> list[tuple[float, str]]:
    """(epoch seconds, message) of every timestamped line of a worker log (local time, ms resolution)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if m := LOG_LINE.match(line):
            out.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), m.group(2)))
    return out


def first_at(lines: list[tuple[float, str]], needle: str, after: float = 0.0) -> float | None:
    return next((t for t, msg in lines if needle in msg and t >= after), None)


def worker_env(kafka: KafkaConfig, tmp: Path, args: argparse.Namespace) -> dict[str, str]:
    """Default settings except the broker, the topic prefix, the files in ``tmp`` and ``settle_s=0``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env.update(
        {
            f"LEARNLOOP_{k}": str(v)
            for k, v in {
                "KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
                "LEARNERS_FILE": tmp / "learners.toml",
                "DATA_DIR": tmp / "data",
                "DATABASE__URL": f"sqlite:///{tmp / 'store.db'}",
                "MLFLOW__TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
                "MLFLOW__ARTIFACT_LOCATION": (tmp / "mlartifacts").as_uri(),
                "TRAINER__SETTLE_S": 0,
            }.items()
        }
    )
    defaults = FineTuneConfig()
    for key, value, default in (
        ("EPOCHS", args.e2e_epochs, None),
        ("MAX_LENGTH", args.max_length, defaults.max_length),
        ("BATCH_SIZE", args.batch_size, defaults.batch_size),
        ("DEVICE", args.device, "auto"),
        ("NUM_THREADS", args.threads if args.threads_given else None, None),
    ):
        if value is not None and value != default:
            env[f"LEARNLOOP_TRAINING__{key}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONUNBUFFERED": "1"}


class TrainerProcess:
    """`python -m workers.cli worker trainer` in ``tmp`` (no ./mlruns, no .learnloop/dev.env), stopped on exit."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.log = tmp / "trainer.log"
        self.started = time.time()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", "worker", "trainer"],
                cwd=tmp,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.exit_code: int | None = None
        self.stop_s = math.nan

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system, every thread) the trainer process has used so far; None where unknown."""
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return None

    def peak_rss_mb(self) -> float | None:
        """The trainer process's peak resident memory so far (VmHWM); None where unknown."""
        with contextlib.suppress(OSError, StopIteration, ValueError):
            status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
            return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024
        return None

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def __enter__(self) -> TrainerProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        t0 = time.time()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.exit_code, self.stop_s = self.proc.returncode, time.time() - t0


async def wait_ready(trainer: TrainerProcess, timeout: float = 300.0) -> float:
    """Until the worker logs ``[^Worker]: Ready`` (its intake consumer has joined and owns the partitions)."""
    deadline = time.monotonic() + timeout
    while "[^Worker]: Ready" not in trainer.log.read_text(errors="replace"):
        if not trainer.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the trainer did not become ready:\n{trainer.tail()}")
        await asyncio.sleep(0.02)
    return time.time()
