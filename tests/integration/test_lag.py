"""Lag, time lag, Burrow statuses and freshness against the real broker and Redis.

The "worker" is a plain aiokafka consumer of the test's own, so every commit is
exactly what the test says. Statuses are evaluated at explicit sample times
(``now=``): the broker state is real, only the clock of the evaluation is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.group import LeaveGroupRequest
from prometheus_client.parser import text_string_to_metric_families

from schemas import FeedbackEvent
from streams.admin import ensure_topics
from streams.producer import EventProducer
from streams.topics import Topics
from tests.conftest import worker_env
from tests.integration.util import ROOT, start_worker, stop_worker, wait_for
from workers.feedback.redis_store import RedisStore
from workers.lag.cli import known_groups, lag_command
from workers.lag.config import LagConfig
from workers.lag.exporter import LagExporter
from workers.lag.monitor import LagMonitor, LagView, PartitionRow, TimeLagMethod
from workers.lag.offsets import BrokerReader
from workers.lag.status import Status
from workers.settings import Settings
from workers.stack.embedded import free_port

pytestmark = pytest.mark.integration


def topic_of(settings: Settings) -> str:
    return f"{settings.kafka.topic_prefix}lagtest"


async def produce(settings: Settings, topic: str, partition: int, n: int, *, body: bytes = b"{}") -> None:
    """``n`` records sent without waiting in between: lingering packs them into multi-record batches."""
    await ensure_topics(settings.kafka, [topic])
    p = AIOKafkaProducer(linger_ms=50, **settings.kafka.client_kwargs())
    await p.start()
    try:
        futures = [await p.send(topic, value=body, partition=partition) for _ in range(n)]
        await asyncio.gather(*futures)
    finally:
        await p.stop()


async def commit_without_joining(settings: Settings, group: str, offsets: dict[TopicPartition, int]) -> None:
    c = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **settings.kafka.client_kwargs())
    await c.start()
    try:
        c.assign(list(offsets))
        await c.commit(offsets)
    finally:
        await c.stop()


@contextlib.asynccontextmanager
async def member(settings: Settings, group: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A live member of ``group``: joined, heartbeating, committing only when the test says so.

    aiokafka sends LeaveGroup on close only from generation 1 on; Tansu starts at 0 and never
    expires a session. So the member leaves itself, as a Kafka consumer does on close.
    """
    c = AIOKafkaConsumer(
        topic, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=settings.kafka.heartbeat_interval_ms,
        **settings.kafka.client_kwargs(),
    )
    await c.start()
    try:
        async def joined() -> bool:
            return bool(c.assignment())

        await wait_for(joined, timeout=30, what=f"{group} to join")
        yield c
    finally:
        member_id = c._coordinator.member_id if c._coordinator is not None else None
        await c.stop()
        if member_id:
            await leave_group(settings, group, member_id)


async def leave_group(settings: Settings, group: str, member_id: str) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs())
    await admin.start()
    try:
        await admin._send_request_to_node(await admin.find_coordinator(group), LeaveGroupRequest(group, member_id))
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def lag_monitor(settings: Settings, method: TimeLagMethod = "interpolated", **cfg: object
                      ) -> AsyncIterator[LagMonitor]:
    async with BrokerReader(settings.kafka) as reader:
        yield LagMonitor(reader, LagConfig(**cfg), time_lag=method)  # type: ignore[arg-type]


def part(view: LagView, partition: int) -> PartitionRow:
    (row,) = [r for r in view.partitions if r.partition == partition]
    return row


async def test_lag_is_produced_minus_committed_after_multi_record_batches(settings: Settings, unique: str) -> None:
    topic, group = topic_of(settings), f"w-{unique}"
    await produce(settings, topic, 0, 137)
    await produce(settings, topic, 1, 20)
    await commit_without_joining(settings, group, {TopicPartition(topic, 0): 42})
    async with lag_monitor(settings) as m:
        view = await m.sample([group])
    p0, p1 = part(view, 0), part(view, 1)
    assert (p0.current_offset, p0.log_end_offset, p0.lag) == (42, 137, 95)
    assert (p1.current_offset, p1.log_end_offset, p1.lag) == (None, 20, None)
    assert view.groups[0].total_lag == 95


async def test_log_end_is_exact_for_every_batch_shape(settings: Settings) -> None:
    topic = topic_of(settings)
    await produce(settings, topic, 0, 1)
    await produce(settings, topic, 0, 500)
    await produce(settings, topic, 0, 3)
    async with BrokerReader(settings.kafka) as reader:
        probes = await reader.probe({TopicPartition(topic, 0): 0, TopicPartition(topic, 1): 0})
    assert probes[TopicPartition(topic, 0)].log_end == 504
    assert probes[TopicPartition(topic, 0)].offset == 0
    assert probes[TopicPartition(topic, 1)].log_end == 0


def test_lag_command_table_and_json(settings: Settings, unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    topic, group = topic_of(settings), f"w-{unique}"

    async def setup() -> None:
        await produce(settings, topic, 0, 30)
        await produce(settings, topic, 1, 4)
        await commit_without_joining(settings, group, {TopicPartition(topic, 0): 10, TopicPartition(topic, 1): 4})

    asyncio.run(setup())
    cfg = LagConfig(cli_samples=2, cli_interval_s=0.2)
    assert lag_command(settings, group, False, config=cfg) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                                "CONSUMER-ID", "HOST", "CLIENT-ID", "TIME-LAG", "STATUS"]
    cells = [ln.split() for ln in lines[1:3]]
    assert cells[0][:9] == [group, topic, "0", "10", "30", "20", "-", "-", "-"]
    assert cells[1][:9] == [group, topic, "1", "4", "4", "0", "-", "-", "-"]
    assert cells[1][9:] == ["0.0s", "OK"]
    assert cells[0][10] == "STOP"  # no members, no new commits, lag: stopped (Burrow)

    assert lag_command(settings, group, True, config=cfg) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["partition"]: r for r in doc["partitions"]}
    keys = ("group", "topic", "partition", "current_offset", "log_end_offset", "lag")
    assert {k: rows[0][k] for k in keys} == {"group": group, "topic": topic, "partition": 0, "current_offset": 10,
                                             "log_end_offset": 30, "lag": 20}
    assert rows[0]["time_lag_s"] > 0 and rows[1]["time_lag_s"] == 0
    assert doc["groups"][0]["status"] == "ERR"

    assert lag_command(settings, f"nobody-{unique}", False, config=cfg) == 1
    assert "no committed offsets" in capsys.readouterr().err


async def test_running_worker_is_ok(settings: Settings, unique: str) -> None:
    topic, group = topic_of(settings), f"w-{unique}"
    tp = TopicPartition(topic, 0)
    await produce(settings, topic, 0, 100)
    async with member(settings, group, topic) as worker, lag_monitor(settings, window=4) as m:
        for i, t in enumerate((0.0, 5.0, 10.0, 15.0, 20.0)):
            await worker.commit({tp: 20 * (i + 1)})
            view = await m.sample([group], now=t)
            assert part(view, 0).lag == 100 - 20 * (i + 1)
            assert part(view, 0).status is Status.OK, (t, part(view, 0))
    assert view.groups[0].status is Status.OK
    assert part(view, 0).time_lag_s == 0.0


async def test_stopped_worker_is_stop_and_the_group_err(settings: Settings, unique: str) -> None:
    topic, group = topic_of(settings), f"w-{unique}"
    tp = TopicPartition(topic, 0)
    await produce(settings, topic, 0, 100)
    async with lag_monitor(settings, window=4) as m:
        async with member(settings, group, topic) as worker:
            await worker.commit({tp: 10})
            await m.sample([group], now=0.0)
            await worker.commit({tp: 30})
            view = await m.sample([group], now=5.0)
            assert part(view, 0).status is Status.OK
        # the worker left: no members, no commits, 70 records waiting

        async def left() -> bool:
            return not (await m.reader.describe([group]))[group].members

        await wait_for(left, timeout=20, what=f"{group} to have no members")
        view = await m.sample([group], now=10.0)
        assert view.groups[0].members == 0
        assert part(view, 0).status is Status.OK  # 5 s since the last commit: not longer than the window's span
        view = await m.sample([group], now=15.0)
    assert (part(view, 0).lag, part(view, 0).status) == (70, Status.STOP)
    assert view.groups[0].status is Status.ERR


@pytest.mark.parametrize(
    ("commits", "produced_between", "expected"),
    [
        ([7, 7, 7], 0, (43, Status.STALL, Status.ERR)),  # commits keep coming, the offset does not move
        ([40, 20, 25], 0, (25, Status.REWIND, Status.ERR)),  # the offset went back
        ([10, 20, 30], 20, (60, Status.WARN, Status.WARN)),  # moving, but the producers are faster
    ],
    ids=["stalled", "rewound", "falling-behind"],
)
async def test_live_worker_statuses(
    settings: Settings, unique: str, commits: list[int], produced_between: int, expected: tuple[int, Status, Status]
) -> None:
    topic, group = topic_of(settings), f"w-{unique}"
    tp = TopicPartition(topic, 0)
    await produce(settings, topic, 0, 50)
    async with member(settings, group, topic) as worker, lag_monitor(settings, window=3) as m:
        for i, offset in enumerate(commits):
            await worker.commit({tp: offset})
            view = await m.sample([group], now=5.0 * i)
            if produced_between:
                await produce(settings, topic, 0, produced_between)
    assert (part(view, 0).lag, part(view, 0).status, view.groups[0].status) == expected


async def test_the_feedback_worker_running_then_stopped(settings: Settings, store: RedisStore, tmp_path: Path) -> None:
    settings.learners_file.write_text('[learners.sea]\ntask = "binary"\nmodel = "logistic_regression"\n')
    group, feedback = settings.feedback.group_id, Topics(settings.kafka.topic_prefix).feedback
    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())

    async def send(n: int) -> None:
        async with EventProducer(settings.kafka) as p:
            await p.send_many(FeedbackEvent(learner="sea", features={"x": i / n}, label=i % 2 == 0, source="t")
                              for i in range(n))

    worker = start_worker(worker_env(settings), tmp_path / "worker.log")
    async with BrokerReader(settings.kafka) as reader:
        m = LagMonitor(reader, LagConfig(heartbeat_timeout_s=2), known=known_groups(settings),
                       learners=store.learner_statuses, progress=store.progress)
        rows: list[PartitionRow] = []

        async def sampled(check: Callable[[LagView], bool]) -> bool:
            view = await m.sample([group])
            rows[:] = [r for r in view.partitions if r.topic == feedback]
            return check(view)

        try:
            await send(300)
            # Caught up, fresh, and (once the commit window shows progress) OK on every partition.
            await wait_for(lambda: sampled(lambda v: sum(r.current_offset or 0 for r in rows) == 300
                                           and [f.freshness_s for f in v.learners] == [0.0]
                                           and {(r.lag, r.status) for r in rows} <= {(0, Status.OK), (None, Status.OK)}),  # noqa: E501
                           timeout=120)
        finally:
            assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        await send(40)
        # Its consumer stays a member (Tansu); its heartbeat goes stale: STOP, with exactly the 40 new records.
        await wait_for(lambda: sampled(lambda v: any(r.status is Status.STOP for r in rows)), timeout=30)
        assert sorted((r.lag or 0, r.status) for r in rows) == [(0, Status.OK), (40, Status.STOP)]
        assert (await m.sample([group])).groups[0].status is Status.ERR


@pytest.mark.parametrize("method", ["record", "interpolated"])
async def test_time_lag_is_positive_when_behind_and_zero_when_caught_up(
    settings: Settings, unique: str, method: TimeLagMethod
) -> None:
    topic, group = topic_of(settings), f"w-{unique}"
    tp = TopicPartition(topic, 0)
    before = time.time()
    await produce(settings, topic, 0, 10)
    await commit_without_joining(settings, group, {tp: 0})
    async with lag_monitor(settings, method) as m:
        await asyncio.sleep(0.3)
        v1 = await m.sample([group])
        await produce(settings, topic, 0, 10)
        v2 = await m.sample([group])
        lag_s = part(v2, 0).time_lag_s
        assert lag_s is not None and 0.3 <= lag_s <= v2.time - before + 0.05  # the first record's age
        await commit_without_joining(settings, group, {tp: 10})
        v3 = await m.sample([group])
        lag_s = part(v3, 0).time_lag_s
        if method == "interpolated":
            assert lag_s == pytest.approx(v3.time - v1.time)  # the log end was 10 at the first sample
        else:
            assert lag_s is not None and 0 < lag_s < v3.time - v1.time  # record 10 came after it
        await commit_without_joining(settings, group, {tp: 20})
        v4 = await m.sample([group])
    assert (part(v4, 0).lag, part(v4, 0).time_lag_s) == (0, 0.0)


async def test_freshness_against_the_newest_event_produced(settings: Settings, store: RedisStore) -> None:
    topic = f"{settings.kafka.topic_prefix}feedback"
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(5):
        body = json.dumps({"occurred_at": (t0 + timedelta(seconds=10 * i)).isoformat()}).encode()
        await produce(settings, topic, 0, 1, body=body)

    async def learned_up_to(offset: int) -> None:
        st = {"name": "sea", "topic": topic, "partition": 0, "offset": offset,
              "last_event_at": (t0 + timedelta(seconds=10 * offset)).isoformat()}
        await store.commit(topic, 0, snapshot=b"x", offset=offset + 1, event_ids=[], statuses={"sea": st})

    async with BrokerReader(settings.kafka) as reader:
        m = LagMonitor(reader, LagConfig(freshness_bound_s=25), learners=store.learner_statuses)
        await learned_up_to(1)
        (f,) = (await m.sample(["nobody"])).learners
        assert (f.behind, f.freshness_s, f.stale) == (3, 30.0, True)
        await learned_up_to(4)
        (f,) = (await m.sample(["nobody"])).learners
    assert (f.behind, f.freshness_s, f.stale) == (0, 0.0, False)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


async def test_exporter_serves_lag_status_and_time_lag(settings: Settings, unique: str) -> None:
    topic, group = topic_of(settings), f"w-{unique}"
    await produce(settings, topic, 0, 12)
    await commit_without_joining(settings, group, {TopicPartition(topic, 0): 2})
    cfg = LagConfig(groups=[group], sample_every_s=0.1)
    async with BrokerReader(settings.kafka) as reader:
        exporter = LagExporter(LagMonitor(reader, cfg), cfg)
        port = exporter.serve("127.0.0.1", 0)
        stop = asyncio.Event()
        task = asyncio.create_task(exporter.run(stop))
        try:
            # STOP takes a window of samples that see the same committed offset: wait for it, however slow.
            judged = re.compile(
                rf'^learnloop_group_status{{(?=[^}}]*group="{group}")(?=[^}}]*status="ERR")[^}}]*}} 1\.0$', re.M
            )
            deadline, text = time.monotonic() + 60, ""
            while not judged.search(text):
                assert time.monotonic() < deadline, f"the group was not judged ERR within 60 s:\n{text}"
                await asyncio.sleep(0.1)
                text = await asyncio.to_thread(scrape, port)
        finally:
            stop.set()
            await task
            exporter.shutdown()
    samples = {
        (sm.name, tuple(sorted(sm.labels.items()))): sm.value
        for family in text_string_to_metric_families(text) for sm in family.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    part0 = {"group": group, "topic": topic, "partition": "0"}
    assert value("learnloop_consumer_lag", **part0) == 10
    assert value("learnloop_committed_offset", **part0) == 2
    assert value("learnloop_log_end_offset", topic=topic, partition="0") == 12
    assert value("learnloop_consumer_status", **part0, status="STOP") == 1
    assert value("learnloop_consumer_status", **part0, status="OK") == 0
    assert value("learnloop_group_status", group=group, status="ERR") == 1
    lag_s = value("learnloop_consumer_lag_seconds", **part0)
    assert lag_s is not None and lag_s > 0


def test_exporter_process_stops_on_sigterm(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    code = (
        "from workers.settings import load_settings; from workers.lag.cli import run_lag_exporter; "
        "from workers.lag.config import LagConfig; "
        f"run_lag_exporter(load_settings(), config=LagConfig(metrics_port={port}, sample_every_s=0.2))"
    )
    with open(tmp_path / "exporter.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=worker_env(settings), stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        sampled_at = 0.0
        while time.monotonic() < deadline and sampled_at == 0.0:
            with contextlib.suppress(OSError):
                found = re.search(r"^learnloop_lag_exporter_last_sample_timestamp_seconds (\S+)$", scrape(port), re.M)
                sampled_at = float(found.group(1)) if found else 0.0
            time.sleep(0.1)
        assert sampled_at > 0, (tmp_path / "exporter.log").read_text()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, (tmp_path / "exporter.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


AGE_S = 375.0
RECORDS = 2000  # per partition, ~0.8 MB each: enough backlog for the broker to answer some with no records


async def produce_aged(settings: Settings, topic: str, partitions: int, n: int, age_s: float) -> dict[int, int]:
    """``n`` records per partition stamped ``age_s`` ago (one ms apart); returns each record's timestamp by offset."""
    await ensure_topics(settings.kafka, [topic], partitions=partitions)
    base = int((time.time() - age_s) * 1000)
    p = AIOKafkaProducer(linger_ms=50, **settings.kafka.client_kwargs())
    await p.start()
    try:
        body = b'{"pad": "' + b"x" * 400 + b'"}'
        futures = [await p.send(topic, value=body, partition=q, timestamp_ms=base + i)
                   for q in range(partitions) for i in range(n)]
        await asyncio.gather(*futures)
    finally:
        await p.stop()
    return {i: base + i for i in range(n)}


def test_time_lag_of_an_old_record_is_the_same_on_every_run(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    """A fixed committed offset whose record is 375 s old: every run says 375 s (plus the time since).

    Many partitions with a backlog make the broker answer some partitions of a fetch with their high
    watermark only; the probe used to take that as the answer, and the time lag fell back to the few
    seconds the one-shot run had watched (2.1 s in the field) on some runs and not others.
    """
    topic, group, partitions, committed = topic_of(settings), f"w-{unique}", 12, 37
    tps = [TopicPartition(topic, q) for q in range(partitions)]

    async def setup() -> dict[int, int]:
        stamps = await produce_aged(settings, topic, partitions, RECORDS, AGE_S)
        await commit_without_joining(settings, group, dict.fromkeys(tps, committed))
        return stamps

    stamps = asyncio.run(setup())
    expected_ts = stamps[committed] / 1000

    def check(doc: dict[str, object], run: str) -> None:
        rows = [r for r in doc["partitions"] if r["topic"] == topic]  # type: ignore[attr-defined]
        assert len(rows) == partitions, run
        for r in rows:
            assert (r["current_offset"], r["lag"]) == (committed, RECORDS - committed), run
            # Exactly the age of the record at the committed offset when the sample was taken...
            sampled = datetime.fromisoformat(doc["sampled_at"]).timestamp()  # type: ignore[arg-type]
            assert r["time_lag_s"] == pytest.approx(sampled - expected_ts, abs=0.01), (run, r)
            # ...which is 375 s plus however long this test has taken so far (generous for a loaded machine).
            assert AGE_S <= r["time_lag_s"] <= AGE_S + 300, (run, r)

    async def in_process() -> LagView:
        async with BrokerReader(settings.kafka) as reader:
            return await LagMonitor(reader, LagConfig(), time_lag="record").sample([group])

    for i in range(10):
        check(asyncio.run(in_process()).as_json(), f"sample {i}")

    env = {**worker_env(settings), "LEARNLOOP_LAG__CLI_INTERVAL_S": "0.3"}
    for i in range(10):
        done = subprocess.run([sys.executable, "-m", "workers.cli", "lag", "--json", "--group", group], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        check(json.loads(done.stdout), f"learnloop lag run {i}")
