"""The feedback worker as a real process while Redis fails on cue (a fault proxy in front of it).

Either the worker rewinds to its snapshots and retries until Redis answers again, ending
in the state of a run that never failed, or, after ``max_outage_s``, it exits non-zero
saying so in one line. It never stays up idle with work pending.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import FeedbackEvent
from streams.app import EXIT_LOOP_FAILED
from tests.conftest import worker_env
from tests.integration.faults import RedisFaultProxy, any_of, command_is, nothing
from tests.integration.test_feedback_worker import _above, _at, _snapshotted, assert_matches_reference, produce
from tests.integration.util import cli_json, start_worker, stop_worker, wait_for
from tests.reference import SEA_LEARNERS as LEARNERS
from tests.reference import sea_with_switch
from workers.feedback.redis_store import RedisStore
from workers.settings import Settings

pytestmark = pytest.mark.integration

# The worker's progress heartbeat: sparing it during a cut makes a loop that never retries its rewind
# look alive (its writes succeed) while it learns nothing, as in the field.
HEARTBEAT = any_of(command_is("HSET", ":progress:"), command_is("HDEL", ":progress:"))


@pytest.fixture
def proxy(redis_url: str) -> Iterator[RedisFaultProxy]:
    with RedisFaultProxy.in_front_of(redis_url) as p:
        yield p


def env_through(settings: Settings, proxy: RedisFaultProxy, **extra: str) -> dict[str, str]:
    return {**worker_env(settings), "LEARNLOOP_REDIS__URL": proxy.url, "LEARNLOOP_FEEDBACK__BATCH_MAX_RECORDS": "250",
            "LEARNLOOP_FEEDBACK__SNAPSHOT_EVERY_EVENTS": "1000", "LEARNLOOP_METRICS__PORT": "0", **extra}


def sea_events(before: int, after: int) -> tuple[list[tuple[dict[str, float], bool]], list[FeedbackEvent]]:
    stream = sea_with_switch(before, after)
    return stream, [FeedbackEvent(learner="sea", features=x, label=y, source="test") for x, y in stream]


async def _set(event: object) -> bool:
    return bool(event.is_set())  # type: ignore[attr-defined]


async def learns_everything_through(settings: Settings, store: RedisStore, proxy: RedisFaultProxy, log: Path) -> None:
    """Run the worker through the proxy until every event of the SEA stream is learned, as River learns it."""
    stream, events = sea_events(3000, 3000)
    env = env_through(settings, proxy)
    await produce(settings, events)
    worker = start_worker(env, log)
    try:
        await wait_for(lambda: _set(proxy.triggered), timeout=120, what="the fault's trigger")
        await wait_for(lambda: _at(store, len(events)), timeout=120, what="all events learned")
        await wait_for(lambda: _snapshotted(store, len(events)), timeout=10, what="final snapshot")
        [status] = cli_json(env, "learners", "--json")
    finally:
        assert stop_worker(worker) == 0, log.read_text()[-3000:]
    assert_matches_reference(status, stream)  # learned once each, in order: as if Redis had never failed


async def test_a_rewind_that_fails_is_retried_until_redis_is_back(
    settings: Settings, store: RedisStore, proxy: RedisFaultProxy, tmp_path: Path
) -> None:
    settings.learners_file.write_text(LEARNERS)
    # A snapshot commit is cut off before EXEC; for 5 s after it, every command but the heartbeat fails,
    # the rewind's reads among them.
    proxy.cut_when(command_is("SET", ":state:"), 5.0, spare=HEARTBEAT)
    log = tmp_path / "worker.log"
    await learns_everything_through(settings, store, proxy, log)
    assert proxy.refused["ZRANGE"] + proxy.refused["GET"] > 0, proxy.refused  # the rewind did fail
    text = log.read_text()
    assert "redis unavailable during snapshot commit" in text
    assert "resuming from the last snapshot (nothing is lost)" in text
    assert "rewound" in text


async def test_a_partition_assigned_while_redis_is_away_is_restored_once_it_is_back(
    settings: Settings, store: RedisStore, proxy: RedisFaultProxy, tmp_path: Path
) -> None:
    settings.learners_file.write_text(LEARNERS)
    proxy.cut_when(command_is("ZRANGE", ":dedup:"), 3.0)  # the restore at assignment fails, then all for 3 s
    log = tmp_path / "worker.log"
    await learns_everything_through(settings, store, proxy, log)
    assert "cannot restore" in log.read_text()


READS = any_of(command_is("GET"), command_is("ZRANGE"), HEARTBEAT)


@pytest.mark.parametrize("fault", ["redis-away", "writes-fail", "redis-frozen"])
async def test_an_outage_longer_than_max_outage_s_stops_the_worker_in_one_line(
    settings: Settings, store: RedisStore, proxy: RedisFaultProxy, tmp_path: Path, fault: str
) -> None:
    settings.learners_file.write_text(LEARNERS)
    _, events = sea_events(3000, 1000)
    env = env_through(settings, proxy, LEARNLOOP_FEEDBACK__MAX_OUTAGE_S="3")
    log = tmp_path / "worker.log"
    await produce(settings, events[:3000])
    worker = start_worker(env, log)
    try:
        await wait_for(lambda: _above(store, 500), timeout=120, every=0.01, what="learning under way")
        if fault == "redis-frozen":  # answers nothing, closes nothing: redis-py's socket timeout (5 s) ends each call
            proxy.freeze(600.0)
        else:  # writes-fail: rewinds succeed and batches are learned again, but no snapshot can be written
            proxy.cut(600.0, spare=READS if fault == "writes-fail" else nothing)
        await produce(settings, events[3000:])
        try:
            code = await asyncio.to_thread(worker.wait, 90)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker is still up:\n{log.read_text()[-3000:]}") from None
    finally:
        stop_worker(worker)
    text = log.read_text()
    assert code == EXIT_LOOP_FAILED, text[-3000:]
    [line] = [ln for ln in text.splitlines() if "worker stopping" in ln]
    assert "redis unavailable during" in line and "LEARNLOOP_FEEDBACK__MAX_OUTAGE_S=3" in line, line
    assert "Traceback" not in text, text[-3000:]
