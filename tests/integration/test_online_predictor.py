"""Live model versions end to end: a real feedback worker publishes, an OnlinePredictor serves and logs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas import FeedbackEvent, ModelUpdate, parse_event
from streams.admin import ensure_topics
from streams.metrics import PredictorMetrics
from streams.predictor import LearnerNotFollowed, ModelNotReady, OnlinePredictor, SyncOnlinePredictor
from streams.producer import EventProducer
from streams.topics import Topics
from tests.conftest import worker_env
from tests.integration.util import read_topic, start_worker, stop_worker, wait_for
from workers.feedback.redis_store import RedisStore
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


@pytest.fixture
async def worker(settings: Settings, tmp_path: Path) -> AsyncIterator[Path]:
    settings.learners_file.write_text(LEARNERS)
    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())
    log = tmp_path / "worker.log"
    proc = start_worker({**worker_env(settings), "LEARNLOOP_SERVING__PUBLISH_EVERY_S": "0.2"}, log)
    try:
        yield log
    finally:
        assert stop_worker(proc) == 0, log.read_text()[-3000:]


def predictor(settings: Settings, models: RedisModelStore, *, log: bool = True) -> OnlinePredictor:
    return OnlinePredictor(
        settings.kafka, ["sea"], store=models, snapshot_key=settings.snapshot.key.get_secret_value().encode(),
        log=log, source="test-app", metrics=PredictorMetrics(CollectorRegistry()),
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
