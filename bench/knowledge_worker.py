"""The knowledge benchmark's worker-process row: `learnloop worker conversations` as users run it.

The turns are pre-produced; the worker starts as a subprocess with the same settings through
``LEARNLOOP_*`` variables, and this process follows ``learnloop.knowledge``, where the worker publishes
one ``KnowledgeUpdate`` per turn once the turn's batch is in the graph and before its offsets commit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from learners.knowledge.config import GazetteerEntry
from streams.config import KafkaConfig
from streams.topics import Topics

ROOT = Path(__file__).resolve().parent.parent


def worker_env(
    kafka: KafkaConfig, *, data_dir: Path, batch: int, gazetteer: Sequence[GazetteerEntry]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env.update({f"LEARNLOOP_{name}": str(v) for name, v in {
        "KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "KAFKA__PARTITIONS": kafka.partitions, "KAFKA__SESSION_TIMEOUT_MS": kafka.session_timeout_ms,
        "KAFKA__HEARTBEAT_INTERVAL_MS": kafka.heartbeat_interval_ms, "DATA_DIR": data_dir,
        "CONVERSATIONS__GROUP_ID": f"{kafka.topic_prefix}worker", "CONVERSATIONS__BATCH_MAX_RECORDS": batch,
        "CONVERSATIONS__BATCH_TIMEOUT_MS": 100, "METRICS__PORT": 0,
        "NLP__GAZETTEER": json.dumps([g.model_dump(exclude_none=True) for g in gazetteer]),
    }.items()})  # fmt: skip
    return {**env, "PYTHONUNBUFFERED": "1"}


async def run_worker(
    kafka: KafkaConfig, n: int, *, data_dir: Path, batch: int, gazetteer: Sequence[GazetteerEntry], log: Path
) -> dict[str, Any]:
    """Start the worker on ``n`` pre-produced turns; time the ``KnowledgeUpdate``s until there are ``n``.

    ``turns_per_s`` counts the turns after the first published batch over the time from that batch to
    the last one (steady state: spaCy's load, Faust's start-up and the group join are behind it);
    ``with_start_turns_per_s`` is all ``n`` over the time from the process start.
    """
    updates = AIOKafkaConsumer(
        Topics(kafka.topic_prefix).knowledge, auto_offset_reset="earliest", enable_auto_commit=False,
        **kafka.client_kwargs(),
    )  # fmt: skip
    await updates.start()
    env = worker_env(kafka, data_dir=data_dir, batch=batch, gazetteer=gazetteer)
    t0 = time.time()
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "conversations"], cwd=ROOT,
                                env=env, stdout=out, stderr=out)
    seen, first = 0, None
    try:
        while seen < n:
            got = sum(len(v) for v in (await updates.getmany(timeout_ms=200)).values())
            now = time.time()
            seen += got
            if got and first is None:
                first = (now, seen)
            if proc.poll() is not None or now - t0 > 900:
                raise RuntimeError(f"the worker exited or stalled at {seen}/{n}:\n{log.read_text()[-2000:]}")
        t_last = time.time()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        await updates.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"the worker exited with {proc.returncode} on SIGTERM:\n{log.read_text()[-2000:]}")
    assert first is not None
    t_first, n_first = first
    return {
        "turns_per_s": (n - n_first) / (t_last - t_first) if t_last > t_first else float("nan"),
        "with_start_turns_per_s": n / (t_last - t0), "first_update_s": t_first - t0, "first_batch": n_first,
    }
