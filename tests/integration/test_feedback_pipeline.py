"""The feedback consumer in-process, against the real broker and a real Redis server."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from learners.config import load_learners_file
from schemas import DeadLetter, DriftEvent, FeedbackEvent, PredictionEvent, RetrainRequest, fill_envelope, parse_event
from streams.admin import ensure_topics
from streams.consumer import FeedbackConsumer
from streams.dedup import DedupCache
from streams.feedback import BatchResult, FeedbackProcessor, PartitionState
from streams.ports import RecordLike, SampleSink
from streams.producer import EventProducer
from streams.topics import Topics
from tests.integration.util import read_topic, wait_for
from workers.feedback.redis_store import RedisStore
from workers.feedback.sample_sink import SqlSampleSink
from workers.settings import Settings
from workers.store.engine import make_engine
from workers.store.feedback import FeedbackStore
from workers.store.migrate import upgrade

pytestmark = pytest.mark.integration

LEARNERS = """
strict = true
[learners.sea]
task = "binary"
model = "logistic_regression"
retrain_model = "sea-text"
[learners.sea.drift]
delta = 0.002
cooldown = 1000
[learners.rated]
task = "binary"
[learners.rated.labels]
rating_threshold = 3.5
"""


class Running:
    def __init__(self, consumer: FeedbackConsumer, task: asyncio.Task[None], store: RedisStore) -> None:
        self.consumer, self.task, self.store = consumer, task, store

    async def statuses(self) -> dict[str, dict[str, object]]:
        return {s["name"]: s for s in await self.store.learner_statuses()}


async def start_consumer(
    settings: Settings,
    processor_class: type[FeedbackProcessor] = FeedbackProcessor,
    samples: SampleSink | None = None,
    **overrides: object,
) -> Running:
    settings.learners_file.write_text(LEARNERS)
    fb = settings.feedback.model_copy(update=overrides)
    store = RedisStore.from_config(settings.redis, dedup_window=fb.dedup_window)
    window = DedupCache(store, window=fb.dedup_window)
    processor = processor_class(
        learners=load_learners_file(settings.learners_file, required=True),
        store=window, joins=store, source="test", join_ttl_s=fb.join_ttl_s,
        orphan_wait_s=fb.orphan_wait_s, orphan_max=fb.orphan_max, collect_samples=samples is not None,
    )
    consumer = FeedbackConsumer(
        kafka=settings.kafka, config=fb, processor=processor, store=window,
        snapshot_key=settings.snapshot.key.get_secret_value().encode(), samples=samples,
    )
    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())
    await consumer.start()
    return Running(consumer, asyncio.create_task(consumer.run()), store)


async def stop_consumer(r: Running) -> None:
    r.consumer.request_stop()
    await r.task
    await r.consumer.stop()
    await r.store.close()


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    r = await start_consumer(settings, orphan_wait_s=1.0)
    yield r
    await stop_consumer(r)


async def test_invalid_events_are_dead_lettered_with_reason_and_offset(
    settings: Settings, running: Running
) -> None:
    topics = Topics(settings.kafka.topic_prefix)
    good = [FeedbackEvent(learner="sea", features={"a": float(i), "b": 1.0}, label=i % 2 == 0, source="t")
            for i in range(50)]
    bad = {
        b"{not json": "invalid_json",
        b'{"schema": "feedback/1", "learner": "sea", "label": true, "source": "t"}': "validation",
        json.dumps(fill_envelope({"schema": "feedback/1", "learner": "nobody", "features": {"a": 1}, "label": True,
                                  "source": "t"})).encode(): "unknown_learner",
        json.dumps(fill_envelope({"schema": "feedback/1", "learner": "sea", "features": {"a": 1}, "signal": "wiggle",
                                  "source": "t"})).encode(): "unmappable_label",
        b'{"schema": "feedback/9", "learner": "sea"}': "unknown_schema",
    }
    async with EventProducer(settings.kafka) as p:
        for e in good[:25]:
            await p.send(e)
        for raw in bad:
            await p.send_raw(topics.feedback, raw, key=b"sea")
        for e in good[25:]:
            await p.send(e)

    dead = await read_topic(settings.kafka, topics.deadletter, expect=len(bad))
    letters = [parse_event(r.value, DeadLetter) for r in dead]
    assert len(letters) == len(bad)
    by_payload = {base64.b64decode(dl.payload): dl for dl in letters}  # type: ignore[attr-defined]
    assert set(by_payload) == set(bad)  # the original bytes, exactly
    for raw, reason in bad.items():
        dl = by_payload[raw]
        assert dl.reason == reason, (raw, dl.error)  # type: ignore[attr-defined]
        assert dl.source_topic == topics.feedback  # type: ignore[attr-defined]
        assert dl.offset >= 25 and dl.error.message  # type: ignore[attr-defined]
    for record, dl in zip(dead, letters, strict=True):  # the same, as headers that tools filter on
        assert dict(record.headers) == {
            "reason": dl.reason.encode(), "source_topic": topics.feedback.encode(),  # type: ignore[attr-defined]
            "source_partition": str(dl.partition).encode(),  # type: ignore[attr-defined]
            "source_offset": str(dl.offset).encode(),  # type: ignore[attr-defined]
            "error_type": dl.error.type.encode(),  # type: ignore[attr-defined]
        }

    async def learned_all() -> bool:
        st = await running.statuses()
        return st.get("sea", {}).get("n_learned") == len(good)

    await wait_for(learned_all, what="the 50 valid events to be learned")


async def test_duplicates_by_event_id_are_learned_once(settings: Settings, running: Running) -> None:
    events = [FeedbackEvent(learner="sea", features={"a": float(i)}, label=i % 3 == 0, source="t")
              for i in range(40)]
    async with EventProducer(settings.kafka) as p:
        await p.send_many(events)
        await p.send_many(events[:15])  # a producer retrying

    async def done() -> bool:
        st = await running.statuses()
        return st.get("sea", {}).get("n_learned") == 40 and running.consumer.stats.duplicates == 15

    await wait_for(done, what="40 learned and 15 duplicates dropped")
    await asyncio.sleep(0.5)
    assert (await running.statuses())["sea"]["n_learned"] == 40


async def test_label_joins_the_features_of_its_prediction(settings: Settings, running: Running) -> None:
    pid = f"p-{uuid.uuid4()}"
    async with EventProducer(settings.kafka) as p:
        # The label arrives first; it waits for its prediction.
        await p.send(FeedbackEvent(learner="rated", prediction_id=pid, rating=4.5, source="t"))
        await p.flush()
        await asyncio.sleep(0.3)
        await p.send(PredictionEvent(prediction_id=pid, learner="rated", features={"x": 2.0},
                                     prediction=True, model_version="v1", source="t"))
        # A label for a prediction that never comes is dead-lettered as orphaned.
        await p.send(FeedbackEvent(learner="rated", prediction_id="never", label=True, source="t"))

    async def joined() -> bool:
        st = await running.statuses()
        return st.get("rated", {}).get("n_learned") == 1

    await wait_for(joined, what="the joined feedback to be learned")
    dead = await read_topic(settings.kafka, Topics(settings.kafka.topic_prefix).deadletter, expect=1, timeout=60)
    reasons = [parse_event(r.value, DeadLetter).reason for r in dead]  # type: ignore[attr-defined]
    assert reasons == ["orphaned"]


async def test_one_drift_event_and_one_retrain_request_per_drift(settings: Settings, running: Running) -> None:
    from tests.reference import sea_with_switch

    # "rated" sees the same drifting stream but names no retrain_model: drift events, no retrain request.
    stream = sea_with_switch(4000, 4000)
    events = [FeedbackEvent(learner=name, features=x, label=y, source="t")
              for name in ("sea", "rated") for x, y in stream]
    async with EventProducer(settings.kafka) as p:
        await p.send_many(events)

    async def learned() -> bool:
        st = await running.statuses()
        return all(st.get(name, {}).get("n_learned") == len(stream) for name in ("sea", "rated"))

    await wait_for(learned, what="8,000 events learned by each learner")
    statuses = await running.statuses()
    status = statuses["sea"]
    assert status["drifts"] >= 1
    assert statuses["rated"]["drifts"] >= 1
    n_drifts = int(status["drifts"]) + int(statuses["rated"]["drifts"])  # type: ignore[call-overload]
    topics = Topics(settings.kafka.topic_prefix)
    drifts = [parse_event(r.value, DriftEvent) for r in
              await read_topic(settings.kafka, topics.drift, expect=n_drifts + 1, timeout=3)]
    retrains = [parse_event(r.value, RetrainRequest) for r in
                await read_topic(settings.kafka, topics.retrain, expect=n_drifts + 1, timeout=3)]
    assert len(drifts) == n_drifts
    assert {d.learner for d in drifts} == {"sea", "rated"}  # type: ignore[attr-defined]
    sea_drifts = [d for d in drifts if d.learner == "sea"]  # type: ignore[attr-defined]
    assert len(retrains) == len(sea_drifts) == status["drifts"]
    last = sea_drifts[-1]
    assert isinstance(last, DriftEvent)
    assert last.n_seen == status["last_drift"]["n_seen"]  # type: ignore[index]
    first = sea_drifts[0]
    assert isinstance(first, DriftEvent)
    assert 4000 < first.n_seen < 4500  # soon after the concept switch
    assert first.after.mean > first.before.mean  # the error went up
    assert {r.model for r in retrains} == {"sea-text"}  # type: ignore[attr-defined]
    assert {r.learner for r in retrains} == {"sea"}  # type: ignore[attr-defined]
    assert {r.drift_event_id for r in retrains} == {d.event_id for d in sea_drifts}  # type: ignore[attr-defined]


async def test_a_restarted_consumer_resumes_from_its_snapshot(settings: Settings) -> None:
    events = [FeedbackEvent(learner="sea", features={"a": float(i % 7)}, label=i % 2 == 0, source="t")
              for i in range(300)]
    r = await start_consumer(settings)
    async with EventProducer(settings.kafka) as p:
        await p.send_many(events[:200])

    async def n(k: int) -> bool:
        return (await r.statuses()).get("sea", {}).get("n_learned") == k

    await wait_for(lambda: n(200), what="200 learned")
    await stop_consumer(r)

    r = await start_consumer(settings)
    async with EventProducer(settings.kafka) as p:
        await p.send_many(events[200:])
    await wait_for(lambda: n(300), what="300 learned after the restart")
    await asyncio.sleep(0.5)
    assert (await r.statuses())["sea"]["n_learned"] == 300
    await stop_consumer(r)


async def test_a_burst_is_snapshotted_once_the_input_runs_dry(settings: Settings) -> None:
    # Timer and count far away: only the idle rule can make the burst durable.
    r = await start_consumer(settings, snapshot_every_s=3600.0, snapshot_every_events=1_000_000)
    try:
        events = [FeedbackEvent(learner="sea", features={"a": float(i)}, label=i % 2 == 0, source="t")
                  for i in range(300)]
        async with EventProducer(settings.kafka) as p:
            await p.send_many(events)

        async def durable() -> bool:
            return (await r.statuses()).get("sea", {}).get("n_learned") == len(events)

        await wait_for(durable, timeout=20, what="a snapshot covering the burst")
        snapshots = r.consumer.stats.snapshots
        await asyncio.sleep(0.5)  # idle polls with nothing new write nothing more
        assert r.consumer.stats.snapshots == snapshots
    finally:
        await stop_consumer(r)


class GatedProcessor(FeedbackProcessor):
    """Holds the first batch until released, so a stop can arrive in the middle of one."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    async def process(
        self, state: PartitionState, records: Sequence[RecordLike], *, partitions: int | None = None
    ) -> BatchResult:
        self.entered.set()
        await self.release.wait()
        return await super().process(state, records, partitions=partitions)


async def test_sparse_traffic_does_not_write_a_snapshot_per_record(settings: Settings) -> None:
    r = await start_consumer(settings, snapshot_every_s=3600.0, snapshot_every_events=1_000_000, snapshot_idle_s=1.0)
    try:
        await wait_for(lambda: asyncio.sleep(0, bool(r.consumer.states)), what="partitions assigned")
        before = r.consumer.stats.snapshots
        async with EventProducer(settings.kafka) as p:
            for i in range(20):  # one record, then empty polls, twenty times over about 2 s
                await p.send(FeedbackEvent(learner="sea", features={"a": float(i)}, label=i % 2 == 0, source="t"))
                await p.flush()
                await asyncio.sleep(0.1)

        async def durable() -> bool:
            return (await r.statuses()).get("sea", {}).get("n_learned") == 20

        await wait_for(durable, timeout=20, what="the last record snapshotted")
        # Every empty poll found something unsnapshotted, but snapshots stay at most one a second.
        assert 1 <= r.consumer.stats.snapshots - before <= 4
    finally:
        await stop_consumer(r)


async def test_stop_in_the_middle_of_a_batch_lets_the_loop_finish_and_snapshots(settings: Settings) -> None:
    r = await start_consumer(settings, processor_class=GatedProcessor, snapshot_every_s=3600.0,
                             snapshot_every_events=1_000_000)
    gated = r.consumer.processor
    assert isinstance(gated, GatedProcessor)
    async with EventProducer(settings.kafka) as p:
        await p.send_many(FeedbackEvent(learner="sea", features={"a": float(i)}, label=i % 3 == 0, source="t")
                          for i in range(500))
    await asyncio.wait_for(gated.entered.wait(), 30)
    stopping = asyncio.create_task(r.consumer.stop())  # no request_stop() first: run() must wind down
    await asyncio.sleep(0.2)
    assert not stopping.done()  # it waits for the batch in hand
    gated.release.set()
    await asyncio.wait_for(stopping, 10)
    await asyncio.wait_for(r.task, 5)  # run() returned, without an exception
    statuses = await r.statuses()
    assert statuses["sea"]["n_learned"] == r.consumer.stats.learned > 0  # all it learned is in the snapshot
    await r.store.close()


async def test_learned_events_of_a_retrain_learner_are_stored_as_samples(settings: Settings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    engine = make_engine(url)
    store = FeedbackStore(engine)
    r = await start_consumer(settings, samples=SqlSampleSink(store))
    try:
        sea = [FeedbackEvent(learner="sea", features={"a": float(i)}, label=i % 2 == 0, source="t") for i in range(40)]
        rated = [FeedbackEvent(learner="rated", text=f"answer {i}", rating=float(i % 5), source="t") for i in range(10)]
        pred = PredictionEvent(learner="sea", prediction_id="p-1", features={"a": 7.5}, text="from the prediction",
                               model_version="v1", source="t")
        joined = FeedbackEvent(learner="sea", prediction_id="p-1", label=True, source="t")
        async with EventProducer(settings.kafka) as p:
            await p.send_many([pred, *sea, *rated, joined])

        async def learned() -> bool:
            st = await r.statuses()
            return st.get("sea", {}).get("n_learned") == len(sea) + 1 and st.get("rated", {}).get("n_learned") == 10

        await wait_for(learned, what="every event learned and snapshotted")
        # Only "sea" names a retrain_model: "rated" keeps no samples. A snapshot never covers unstored samples.
        assert (store.count(["sea"]), store.count(["rated"])) == (len(sea) + 1, 0)
        by_id = {s.event_id: s for s in store.window(["sea"])}
        first = by_id[str(sea[0].event_id)]
        assert (first.features, first.label, first.channel, first.source) == ({"a": 0.0}, True, "explicit", "t")
        got = by_id[str(joined.event_id)]  # stored as learned: with the prediction's input
        assert (got.features, got.text, got.label) == ({"a": 7.5}, "from the prediction", True)
    finally:
        await stop_consumer(r)
        engine.dispose()
