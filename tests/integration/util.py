"""Helpers for integration tests: read topics, run workers as real processes, wait for state."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.config import KafkaConfig
from workers.settings import Settings
from workers.stack.processes import spawn, terminate

ROOT = Path(__file__).resolve().parents[2]


async def read_topic(kafka: KafkaConfig, topic: str, *, expect: int, timeout: float = 60.0) -> list[Any]:
    """Every record of ``topic`` from the beginning, until ``expect`` arrived or ``timeout``."""
    c = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await c.start()
    try:
        deadline = time.monotonic() + timeout
        parts = None
        while parts is None and time.monotonic() < deadline:
            parts = c.partitions_for_topic(topic)
            if parts is None:
                await c._client.force_metadata_update()  # the topic may not exist yet
                await asyncio.sleep(0.1)
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        out: list[Any] = []
        while len(out) < expect and time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=200)
            for recs in batch.values():
                out.extend(recs)
        return out
    finally:
        await c.stop()


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 60.0, every: float = 0.1, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_worker(env: dict[str, str], log: Path, kind: str = "feedback") -> subprocess.Popen[bytes]:
    """A `learnloop worker` in a session of its own, output to ``log``; it dies if the test process does."""
    return spawn([sys.executable, "-m", "workers.cli", "worker", kind], log_path=log, env=env, cwd=ROOT)


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL whatever is left of its process group."""
    terminate([proc], timeout)
    return proc.returncode


def cli_json(env: dict[str, str], *args: str) -> Any:
    res = subprocess.run(
        [sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def write_learners(settings: Settings, text: str) -> None:
    settings.learners_file.write_text(text)


def learnloop_families(port: int) -> set[str]:
    """The learnloop metric families a worker's ``/metrics`` declares (with or without series)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    # The text format's parser reads a counter's `_created` series as a family of its own.
    return {f.name.removesuffix("_created") for f in text_string_to_metric_families(text)
            if f.name.startswith("learnloop_")}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
