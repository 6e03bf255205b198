"""Live model versions end to end: a real feedback worker publishes, an OnlinePredictor serves and logs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from learners.labels import Target
from learners.snapshot import dump_snapshot, load_snapshot
from schemas import DeadLetter, FeedbackEvent, ModelUpdate, PredictionEvent, parse_event
from streams.admin import ensure_topics
from streams.config import ServingConfig
from streams.metrics import PredictorMetrics
from streams.predictor import LearnerNotFollowed, ModelNotReady, OnlinePredictor, SyncOnlinePredictor
from streams.producer import EventProducer
from streams.topics import Topics
from tests.conftest import worker_env
from tests.integration.util import read_topic, start_worker, stop_worker, wait_for
from workers.feedback.redis_store import RedisStore
from workers.serving import sync_online_predictor
from workers.serving.model_store import RedisModelStore
from workers.settings import Settings

pytestmark = pytest.mark.integration

LEARNERS = """
[learners.sea]
task = "binary"
model = "logistic_regression"
"""


def labelled(n: int, *, flip: bool = False, start: int = 0) -> list[FeedbackEvent]:
    """``x >= 5`` is True (or, flipped, False): a concept a logistic regression learns in a few hundred events."""
    events = []
    for i in range(start, start + n):
        x = float(i % 10)
        events.append(FeedbackEvent(learner="sea", features={"x": x}, label=(x >= 5) != flip, source="test"))
    return events


async def produce(settings: Settings, events: list[FeedbackEvent]) -> None:
    async with EventProducer(settings.kafka) as p:
        await p.send_many(events)


async def n_learned(store: RedisStore, name: str = "sea") -> int:
    for s in await store.learner_statuses():
        if s["name"] == name:
            return int(s["n_learned"])
    return 0


@pytest.fixture
async def models(settings: Settings) -> AsyncIterator[RedisModelStore]:
    s = RedisModelStore.from_config(settings.redis, settings.serving)
    yield s
    await s.close()


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, log: Path, **env: str) -> AsyncIterator[None]:
    """A feedback worker process that publishes every 0.2 s, with extra ``LEARNLOOP_*`` settings.

    No metrics endpoint: a worker of a concurrent test run may hold the default port.
    """
    settings.learners_file.write_text(LEARNERS)
    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())
    extra = {f"LEARNLOOP_{k.upper()}": v for k, v in env.items()}
    env = {**worker_env(settings), "LEARNLOOP_SERVING__PUBLISH_EVERY_S": "0.2", "LEARNLOOP_METRICS__PORT": "0"}
    proc = start_worker({**env, **extra}, log)
    try:
        yield
    finally:
        assert stop_worker(proc) == 0, log.read_text()[-3000:]


@pytest.fixture
async def worker(settings: Settings, tmp_path: Path) -> AsyncIterator[Path]:
    log = tmp_path / "worker.log"
    async with running_worker(settings, log):
        yield log


def predictor(settings: Settings, models: RedisModelStore, *, log: bool = True) -> OnlinePredictor:
    return OnlinePredictor(
        settings.kafka, ["sea"], store=models, snapshot_key=settings.snapshot.key.get_secret_value().encode(),
        log=log, source="test-app", metrics=PredictorMetrics(CollectorRegistry()),
        config=ServingConfig(resync_every_s=0.5),
    )  # fmt: skip


async def test_after_feedback_the_predictor_serves_a_newer_version_whose_prediction_changed(
    settings: Settings, store: RedisStore, models: RedisModelStore, worker: Path
) -> None:
    await produce(settings, labelled(1000))
    await wait_for(lambda: _at(store, 1000), timeout=120, what="the first concept learned")
    async with predictor(settings, models, log=False) as p:
        first = await p.wait_ready("sea", timeout=60)
        await wait_for(lambda: _serves(p, 1000), timeout=60, what="version 1000 served")
        before = p.predict("sea", {"x": 9.0})
        assert before.label is True and before.model_version == "1000"
        await produce(settings, labelled(3000, flip=True))
        await wait_for(lambda: _serves(p, 4000), timeout=120, what="the flipped concept served")
        after = p.predict("sea", {"x": 9.0})
    assert int(first.version) <= 1000
    assert after.label is False and after.model_version == "4000"
    assert after.probabilities is not None and after.probabilities[False] > 0.5
    # each served version was announced as an online snapshot, keyed by the learner
    records = await read_topic(settings.kafka, Topics(settings.kafka.topic_prefix).model_updates, expect=2)
    updates = [parse_event(r.value, ModelUpdate) for r in records]
    assert {r.key for r in records} == {b"sea"}
    assert all(isinstance(u, ModelUpdate) and u.kind == "online-snapshot" for u in updates)
    versions = [int(u.version) for u in updates if isinstance(u, ModelUpdate)]
    assert versions == sorted(versions) and versions[-1] == 4000
    assert "accuracy" in updates[-1].metrics  # type: ignore[union-attr]


async def test_a_learner_with_no_model_yet_is_a_clear_error(
    settings: Settings, models: RedisModelStore
) -> None:
    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())
    async with predictor(settings, models, log=False) as p:
        with pytest.raises(ModelNotReady, match="no version of learner 'sea'"):
            p.predict("sea", {"x": 1.0})
        with pytest.raises(ModelNotReady, match="within 1s"):
            await p.wait_ready("sea", timeout=1)
        with pytest.raises(LearnerNotFollowed):
            await p.wait_ready("ctr", timeout=1)


async def _at(store: RedisStore, n: int) -> bool:
    return await n_learned(store) >= n


async def _serves(p: OnlinePredictor | SyncOnlinePredictor, version: int) -> bool:
    await asyncio.sleep(0)
    try:
        return int(p.get("sea").version) >= version
    except ModelNotReady:
        return False


async def test_predict_then_feedback_by_prediction_id_learns_exactly_the_served_features(
    settings: Settings, store: RedisStore, worker: Path
) -> None:
    """The two-call loop through the blocking SDK: the next version equals the served one plus that one event."""
    await produce(settings, labelled(1000))
    await wait_for(lambda: _at(store, 1000), timeout=120, what="the concept learned")
    with sync_online_predictor(settings, ["sea"]) as p:
        await wait_for(lambda: _serves(p, 1000), timeout=60, what="version 1000 served")
        served = p.get("sea")
        prediction = p.predict("sea", {"x": 9.0}, subject_id="user-7")
        p.flush()
        assert prediction.label is True
        await wait_for(lambda: _joinable(store, prediction.prediction_id), timeout=60, what="the prediction stored")
        [stored] = await store.get_predictions([prediction.prediction_id])
        logged = parse_event(stored or b"", PredictionEvent)
        assert isinstance(logged, PredictionEvent)
        assert (logged.features, logged.prediction, logged.model_version, logged.subject_id) == (
            {"x": 9.0}, True, "1000", "user-7")
        await produce(settings, [FeedbackEvent(learner="sea", prediction_id=prediction.prediction_id, label=False,
                                               source="test")])  # fmt: skip
        await wait_for(lambda: _serves(p, 1001), timeout=60, what="version 1001 served")
        after = p.get("sea")
    assert after.n_learned == 1001 == await n_learned(store)
    reference = served.learner_obj  # version 1000, no longer served: learn the served event by hand
    reference.learn_one({"x": 9.0}, Target(y=False, weight=1.0))
    for x in range(10):
        probe = {"x": float(x)}
        assert after.learner_obj.predict_proba_one(probe) == pytest.approx(reference.predict_proba_one(probe))


async def test_a_prediction_never_labelled_expires_under_the_join_ttl(
    settings: Settings, store: RedisStore, models: RedisModelStore, tmp_path: Path
) -> None:
    async with running_worker(settings, tmp_path / "worker.log", feedback__join_ttl_s="2",
                              feedback__orphan_wait_s="1"):  # fmt: skip
        await produce(settings, labelled(200))
        async with predictor(settings, models) as p:
            await p.wait_ready("sea", timeout=60)
            prediction = p.predict("sea", {"x": 9.0})
            await p.flush()
        key = f"{settings.redis.key_prefix}pred:{prediction.prediction_id}"
        await wait_for(lambda: _exists(store, key), timeout=60, what="the prediction stored for the join")
        await wait_for(lambda: _gone(store, key), timeout=30, what="the prediction expired")
        learned = await n_learned(store)
        await produce(settings, [FeedbackEvent(learner="sea", prediction_id=prediction.prediction_id, label=False,
                                               source="test")])  # fmt: skip
        topic = Topics(settings.kafka.topic_prefix).deadletter
        [record] = await read_topic(settings.kafka, topic, expect=1, timeout=60)
    dead = parse_event(record.value, DeadLetter)
    assert isinstance(dead, DeadLetter) and dead.reason == "orphaned"
    assert await n_learned(store) == learned


async def test_a_tampered_publication_is_refused_and_the_old_version_keeps_serving(
    settings: Settings, store: RedisStore, models: RedisModelStore, worker: Path
) -> None:
    key = settings.snapshot.key.get_secret_value().encode()
    await produce(settings, labelled(1000))
    await wait_for(lambda: _at(store, 1000), timeout=120, what="the concept learned")
    async with predictor(settings, models, log=False) as p:
        await wait_for(lambda: _serves(p, 1000), timeout=60, what="version 1000 served")
        found = await models.fetch_latest("sea")
        assert found is not None and found[0] == 1000
        state, meta = load_snapshot(found[1], key=key)
        forged = dump_snapshot(state, key=key, n_seen=1001, offsets={}, extra={**meta.extra, "version": 1001})
        forged = forged[:-40] + bytes([forged[-40] ^ 0x01]) + forged[-39:]  # a changed model: the HMAC no longer fits
        assert await models.publish("sea", 1001, forged) == (True, 1001)
        async with EventProducer(settings.kafka) as producer:
            await producer.send(ModelUpdate(source="attacker", model="sea", version="1001", kind="online-snapshot",
                                            uri=models.uri("sea", 1001), alias="online"))  # fmt: skip
        await wait_for(lambda: _refused(p, "1001"), timeout=30, what="the forged version refused")
        assert p.get("sea").version == "1000" and p.predict("sea", {"x": 9.0}).label is True
        refused = p.metrics.registry.get_sample_value(
            "learnloop_model_loads_total", {"learner": "sea", "outcome": "refused_signature"}
        )
        assert refused == 1.0
        await produce(settings, labelled(5, start=1000))  # the worker's next version is above the forged one
        await wait_for(lambda: _serves(p, 1005), timeout=60, what="the next genuine version served")


async def _exists(store: RedisStore, key: str) -> bool:
    return bool(await store.r.exists(key))


async def _gone(store: RedisStore, key: str) -> bool:
    return not await store.r.exists(key)


async def _refused(p: OnlinePredictor, version: str) -> bool:
    await asyncio.sleep(0)
    return p.refused.get("sea") == version


async def test_versions_stay_monotonic_when_a_killed_worker_replays_what_it_had_published(
    settings: Settings, store: RedisStore, models: RedisModelStore, tmp_path: Path
) -> None:
    """Published before any snapshot, then SIGKILL: the replay re-learns those numbers and rewrites none."""
    settings.learners_file.write_text(LEARNERS)
    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())
    base = {**worker_env(settings), "LEARNLOOP_SERVING__PUBLISH_EVERY_S": "0.2", "LEARNLOOP_METRICS__PORT": "0"}
    no_snapshots = {"LEARNLOOP_FEEDBACK__SNAPSHOT_EVERY_S": "600", "LEARNLOOP_FEEDBACK__SNAPSHOT_IDLE_S": "600",
                    "LEARNLOOP_FEEDBACK__SNAPSHOT_EVERY_EVENTS": "1000000"}  # fmt: skip
    first = start_worker({**base, **no_snapshots}, tmp_path / "worker-1.log")
    try:
        await produce(settings, labelled(500))
        await wait_for(lambda: _published(models, 500), timeout=120, what="version 500 published")
        assert await n_learned(store) == 0, "no snapshot yet: the replay starts from nothing"
        published = await models.fetch("sea", 500)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    second = start_worker(base, tmp_path / "worker-2.log")
    try:
        await wait_for(lambda: _at(store, 500), timeout=120, what="the replay snapshotted")
        assert await models.fetch_latest("sea") == (500, published)  # the first model of that number stays
        await produce(settings, labelled(10, start=500))
        await wait_for(lambda: _published(models, 510), timeout=60, what="version 510 published")
    finally:
        assert stop_worker(second) == 0, (tmp_path / "worker-2.log").read_text()[-3000:]
    records = await read_topic(settings.kafka, Topics(settings.kafka.topic_prefix).model_updates, expect=2)
    versions = [int(u.version) for r in records if isinstance(u := parse_event(r.value, ModelUpdate), ModelUpdate)]
    assert versions == sorted(set(versions)) and versions[-1] == 510  # announced in order, none twice


async def _published(models: RedisModelStore, version: int) -> bool:
    return (await models.latest_versions(["sea"])).get("sea", -1) >= version


async def _joinable(store: RedisStore, prediction_id: str) -> bool:
    return (await store.get_predictions([prediction_id])) != [None]
