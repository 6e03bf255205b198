"""`learnloop worker feedback` as a real process: end-to-end equality with River, SIGKILL, a Redis crash."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from schemas import FeedbackEvent
from streams.admin import ensure_topics
from streams.producer import EventProducer
from streams.topics import Topics
from tests.conftest import worker_env
from tests.integration.util import cli_json, start_worker, stop_worker, wait_for
from tests.reference import SEA_LEARNERS as LEARNERS
from tests.reference import river_reference, sea_with_switch
from workers.feedback.redis_store import RedisStore
from workers.settings import Settings
from workers.stack.embedded import _redis_binary, free_port

pytestmark = pytest.mark.integration


async def produce(settings: Settings, events: list[FeedbackEvent]) -> None:
    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())
    async with EventProducer(settings.kafka) as p:
        await p.send_many(events)


async def learned(store: RedisStore, name: str = "sea") -> int:
    for s in await store.learner_statuses():
        if s["name"] == name:
            return int(s["n_learned"])
    return 0


def assert_matches_reference(status: dict[str, object], stream: list[tuple[dict[str, float], bool]]) -> None:
    ref = river_reference(stream, delta=0.002, cooldown=1000, grace=30)
    metrics = status["metrics"]
    assert isinstance(metrics, dict)
    assert status["n_learned"] == ref.n
    assert metrics["accuracy"] == pytest.approx(ref.accuracy, abs=1e-12)
    assert metrics["f1"] == pytest.approx(ref.f1, abs=1e-12)
    assert metrics["log_loss"] == pytest.approx(ref.log_loss, abs=1e-9)
    assert status["drifts"] == len(ref.drifts)
    assert ref.drifts, "the stream should drift"
    assert status["last_drift_n"] == ref.drifts[-1]


async def test_system_equals_river_in_process(settings: Settings, store: RedisStore, tmp_path: Path) -> None:
    settings.learners_file.write_text(LEARNERS)
    stream = sea_with_switch(4000, 4000)
    events = [FeedbackEvent(learner="sea", features=x, label=y, source="test") for x, y in stream]
    env = worker_env(settings)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        await produce(settings, events)
        await wait_for(lambda: _at(store, len(events)), timeout=120, what="all events learned")
        await wait_for(lambda: _snapshotted(store, len(events)), timeout=60, what="final snapshot")
        [status] = cli_json(env, "learners", "--json")
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert_matches_reference(status, stream)


async def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    settings: Settings, store: RedisStore, tmp_path: Path
) -> None:
    settings.learners_file.write_text(LEARNERS)
    stream = sea_with_switch(6000, 6000)
    events = [FeedbackEvent(learner="sea", features=x, label=y, source="test") for x, y in stream]
    env = {**worker_env(settings), "LEARNLOOP_FEEDBACK__BATCH_MAX_RECORDS": "250",
           "LEARNLOOP_FEEDBACK__SNAPSHOT_EVERY_EVENTS": "1000"}
    await produce(settings, events[:8000])
    worker = start_worker(env, tmp_path / "worker-1.log")
    kills = 0
    try:
        # Kill it twice, each time somewhere in the middle, between snapshots.
        for threshold in (2500, 6000):
            await wait_for(lambda t=threshold: _above(store, t), timeout=120, every=0.01, what=f">{threshold}")
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)
            kills += 1
            if threshold == 2500:
                await produce(settings, events[8000:])  # more arrives while it is down
            worker = start_worker(env, tmp_path / f"worker-{kills + 1}.log")
        await wait_for(lambda: _at(store, len(events)), timeout=120, what="all events learned")
        await wait_for(lambda: _snapshotted(store, len(events)), timeout=60, what="final snapshot")
        [status] = cli_json(env, "learners", "--json")
    finally:
        stop_worker(worker)
    assert kills == 2
    assert_matches_reference(status, stream)


def redis_with_aof(port: int, data: Path) -> subprocess.Popen[bytes]:
    """A Redis server that fsyncs every write to its append-only file, so a crash loses no commit."""
    return subprocess.Popen(
        [_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--appendfsync", "always", "--dir", str(data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def _pong(store: RedisStore) -> bool:
    try:
        return await store.ping()
    except Exception:
        return False


async def test_a_redis_crash_pauses_the_worker_and_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    settings.learners_file.write_text(LEARNERS)
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    redis_proc = redis_with_aof(port, data)
    url = f"redis://127.0.0.1:{port}/0"
    store = RedisStore(aioredis.Redis.from_url(url), prefix=settings.redis.key_prefix)
    stream = sea_with_switch(3000, 3000)
    events = [FeedbackEvent(learner="sea", features=x, label=y, source="test") for x, y in stream]
    env = {**worker_env(settings), "LEARNLOOP_REDIS__URL": url, "LEARNLOOP_FEEDBACK__BATCH_MAX_RECORDS": "250",
           "LEARNLOOP_FEEDBACK__SNAPSHOT_EVERY_EVENTS": "1000"}
    log = tmp_path / "worker.log"
    try:
        await wait_for(lambda: _pong(store), timeout=60, what="Redis up")
        await produce(settings, events[:3000])
        worker = start_worker(env, log)
        try:
            await wait_for(lambda: _above(store, 1000), timeout=120, every=0.01, what="learning under way")
            redis_proc.kill()  # Redis crashes mid-stream
            redis_proc.wait(10)
            await produce(settings, events[3000:])  # and more arrives while it is down
            await asyncio.sleep(3)
            assert worker.poll() is None, log.read_text()[-3000:]  # paused, not dead
            redis_proc = redis_with_aof(port, data)  # back, with every commit it acknowledged
            await wait_for(lambda: _pong(store), timeout=60, what="Redis back")
            await wait_for(lambda: _at(store, len(events)), timeout=120, what="all events learned")
            [status] = cli_json(env, "learners", "--json")
        finally:
            assert stop_worker(worker) == 0, log.read_text()[-3000:]
    finally:
        await store.close()
        redis_proc.kill()
        redis_proc.wait(10)
    assert "resuming from the last snapshot (nothing is lost)" in log.read_text()
    assert_matches_reference(status, stream)  # learned once each, in order: as if Redis had never failed


async def _above(store: RedisStore, n: int) -> bool:
    return await learned(store) > n


async def _at(store: RedisStore, n: int) -> bool:
    got = await learned(store)
    assert got <= n, f"learned {got} of {n} events: something was learned twice"
    return got == n


async def _snapshotted(store: RedisStore, n: int) -> bool:
    return await learned(store) == n
