"""A tampered snapshot stops the feedback worker (a real process) in one line; lag and metrics say why."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from schemas import FeedbackEvent
from streams.app import EXIT_LOOP_FAILED
from tests.conftest import worker_env
from tests.integration.test_feedback_worker import _at, produce
from tests.integration.util import cli_json, start_worker, stop_worker, wait_for
from tests.reference import SEA_LEARNERS as LEARNERS
from tests.reference import sea_with_switch
from workers.feedback.redis_store import RedisStore
from workers.lag.cli import known_groups
from workers.lag.config import LagConfig
from workers.lag.exporter import LagExporter
from workers.lag.monitor import LagMonitor
from workers.lag.offsets import BrokerReader
from workers.settings import Settings

pytestmark = pytest.mark.integration


async def test_a_tampered_snapshot_stops_the_worker_and_lag_and_metrics_say_why(
    settings: Settings, store: RedisStore, tmp_path: Path
) -> None:
    settings.learners_file.write_text(LEARNERS)
    events = [FeedbackEvent(learner="sea", features=x, label=y, source="test") for x, y in sea_with_switch(900, 0)]
    env = {**worker_env(settings), "LEARNLOOP_METRICS__PORT": "0"}  # no port another test's worker may hold
    await produce(settings, events[:600])
    first = start_worker(env, tmp_path / "worker-1.log")
    try:
        await wait_for(lambda: _at(store, 600), timeout=120, what="600 events learned and snapshotted")
    finally:
        assert stop_worker(first) == 0, (tmp_path / "worker-1.log").read_text()[-3000:]

    [status] = await store.learner_statuses()
    topic, partition = status["topic"], status["partition"]
    key = f"{settings.redis.key_prefix}state:{topic}:{partition}"
    stored = await store.r.get(key)
    assert isinstance(stored, bytes)
    blob = bytearray(stored)
    blob[len(blob) // 2] ^= 0x01  # one bit of the pickled learners
    await store.r.set(key, bytes(blob))
    await produce(settings, events[600:])  # work waiting for that partition

    log = tmp_path / "worker-2.log"
    second = start_worker(env, log)
    try:
        code = await asyncio.to_thread(second.wait, 90)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker is still up with an unprocessed partition:\n{log.read_text()[-3000:]}") \
            from None
    finally:
        stop_worker(second)
    text = log.read_text()
    assert code == EXIT_LOOP_FAILED, text[-3000:]
    [line] = [ln for ln in text.splitlines() if "worker stopping" in ln]
    assert f"cannot restore {topic} partition {partition} (learner sea): snapshot signature does not verify" in line
    assert "LEARNLOOP_SNAPSHOT__KEY" in line
    assert "Traceback" not in text and "User provided listener" not in text, text[-3000:]

    # `learnloop lag`: the partition is stopped, 300 records behind, and the row says why.
    view = cli_json(env, "lag", "--json", "--group", settings.feedback.group_id)
    [row] = [r for r in view["partitions"] if (r["topic"], r["partition"]) == (topic, partition)]
    assert (row["status"], row["lag"], row["failure_reason"]) == ("STOP", 300, "snapshot_signature"), row
    assert "LEARNLOOP_SNAPSHOT__KEY" in row["failure"]
    # The lag exporter's metrics, which outlive the worker.
    cfg = LagConfig()
    async with BrokerReader(settings.kafka) as reader:
        exporter = LagExporter(LagMonitor(reader, cfg, known=known_groups(settings), progress=store.progress), cfg)
        assert await exporter.sample_once() is not None
    labels = {"group": settings.feedback.group_id, "topic": topic, "partition": str(partition),
              "reason": "snapshot_signature"}
    assert exporter.metrics.registry.get_sample_value("learnloop_partition_failure", labels) == 1.0

    # The right key again (here: the snapshot as it was written) and the worker resumes; the failure is cleared.
    blob[len(blob) // 2] ^= 0x01
    await store.r.set(key, bytes(blob))
    third = start_worker(env, tmp_path / "worker-3.log")
    try:
        await wait_for(lambda: _at(store, 900), timeout=120, what="the 300 waiting events learned")
        await wait_for(lambda: _no_failure(store), timeout=30, what="the failure cleared")
    finally:
        assert stop_worker(third) == 0, (tmp_path / "worker-3.log").read_text()[-3000:]


async def _no_failure(store: RedisStore) -> bool:
    return not any(row["failure"] for row in await store.progress())
