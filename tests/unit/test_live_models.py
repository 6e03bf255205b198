"""Live model versions without servers: the publisher's capture rules, the predictor's checks, its predictions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
from prometheus_client import CollectorRegistry

from learners.config import LearnerSpec
from learners.labels import Target
from learners.models import models_for
from learners.online import OnlineLearner
from learners.snapshot import dump_snapshot, load_snapshot
from schemas import Envelope, ModelUpdate, PredictionEvent
from schemas.errors import ConfigError, StoreUnavailable
from streams.config import KafkaConfig, ServingConfig
from streams.feedback import LearnerSlot, PartitionState
from streams.metrics import FeedbackMetrics, PredictorMetrics
from streams.prediction_log import PredictionLog, _prediction_event
from streams.predictor import LearnerNotFollowed, ModelNotReady, OnlinePredictor, Prediction
from streams.publisher import ModelPublisher
from streams.topics import Topics

KEY = b"unit-test-snapshot-key-0123"


class MemoryModelStore:
    """The ModelStore port in memory, with the Redis adapter's rule: versions only grow."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, int], bytes] = {}
        self.latest: dict[str, int] = {}
        self.down = False

    async def publish(self, learner: str, version: int, blob: bytes) -> tuple[bool, int]:
        if self.down:
            raise StoreUnavailable("down")
        if version <= self.latest.get(learner, -1):
            return False, self.latest[learner]
        self.blobs[(learner, version)] = blob
        self.latest[learner] = version
        return True, version

    async def fetch(self, learner: str, version: int) -> bytes | None:
        return self.blobs.get((learner, version))

    async def fetch_latest(self, learner: str) -> tuple[int, bytes] | None:
        v = self.latest.get(learner)
        return None if v is None else (v, self.blobs[(learner, v)])

    async def latest_versions(self, learners: Sequence[str] | None = None) -> dict[str, int]:
        return {k: v for k, v in self.latest.items() if learners is None or k in learners}

    def uri(self, learner: str, version: int) -> str:
        return f"memory:{learner}:{version}"

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def trained(name: str = "sea", n: int = 50, *, task: str = "binary", shift: float = 5.0) -> OnlineLearner:
    learner = OnlineLearner(name, LearnerSpec(task=task))  # type: ignore[arg-type]
    for i in range(n):
        x = float(i % 10)
        y: object = x >= shift if task != "regression" else 2.0 * x
        learner.learn_one({"x": x}, Target(y=y, weight=1.0))  # type: ignore[arg-type]
    return learner


def partition(*learners: OnlineLearner) -> PartitionState:
    state = PartitionState("learnloop.feedback", 0, offset=99)
    state.slots = {lr.name: LearnerSlot(lr) for lr in learners}
    return state


def publisher(store: MemoryModelStore, clock: Clock) -> tuple[ModelPublisher, list[Envelope]]:
    sent: list[Envelope] = []

    async def announce(events: list[Envelope]) -> None:
        sent.extend(events)

    config = ServingConfig(publish_every_s=1.0, capture_budget_ms=60_000)  # no budget: these tests are about timing
    p = ModelPublisher(store=store, snapshot_key=KEY, source="test", config=config,
                       metrics=FeedbackMetrics(CollectorRegistry()), clock=clock)  # fmt: skip
    p._announce = announce
    return p, sent


def test_capture_is_due_every_publish_every_s_or_after_a_snapshot_and_only_for_changed_learners() -> None:
    clock, store = Clock(), MemoryModelStore()
    p, _ = publisher(store, clock)
    sea = trained("sea", 20)
    state = partition(sea, trained("ctr", 10))
    assert p.capture([state]) == 2
    assert p.capture([state]) == 0  # not due
    sea.learn_one({"x": 1.0}, Target(y=False, weight=1.0))
    clock.now = 0.5
    assert p.capture([state]) == 0  # changed, not due yet
    assert p.capture([state], after_snapshot=True) == 1  # a snapshot makes it due: only sea changed
    clock.now = 5.0
    assert p.capture([state]) == 0  # due, nothing changed


def test_a_captured_blob_is_signed_and_names_its_learner_and_version() -> None:
    p, _ = publisher(MemoryModelStore(), Clock())
    p.capture([partition(trained("sea", 20))])
    capture = p._pending["sea"]
    state, meta = load_snapshot(capture.blob, key=KEY)
    assert isinstance(state, OnlineLearner) and state.n_seen == 20 == capture.version
    assert meta.extra["learner"] == "sea" and meta.extra["version"] == 20
    assert meta.offsets == {"learnloop.feedback:0": 100}
    assert set(meta.extra["metrics"]) >= {"accuracy", "log_loss"}


async def test_publication_stores_then_announces_an_online_snapshot_with_metrics() -> None:
    store = MemoryModelStore()
    p, sent = publisher(store, Clock())
    p.capture([partition(trained("sea", 30))])
    await p.publish_pending()
    assert store.latest == {"sea": 30}
    [update] = sent
    assert isinstance(update, ModelUpdate)
    assert (update.model, update.version, update.kind, update.alias) == ("sea", "30", "online-snapshot", "online")
    assert update.uri == "memory:sea:30" and "accuracy" in update.metrics
    assert update.lineage.n_samples == 30


@pytest.mark.parametrize("learned", [30, 40])
async def test_a_version_the_store_already_has_is_not_rewritten_nor_announced(learned: int) -> None:
    """After a rewind the worker re-learns numbers it published: the first model of a number stays."""
    store = MemoryModelStore()
    store.latest["sea"] = 40
    store.blobs[("sea", 40)] = b"earlier model"
    clock = Clock()
    p, sent = publisher(store, clock)
    sea = trained("sea", learned)
    p.capture([partition(sea)])
    await p.publish_pending()
    assert sent == [] and store.blobs[("sea", 40)] == b"earlier model"
    for _ in range(40 - learned):  # replaying up to the stored number captures nothing
        sea.learn_one({"x": 1.0}, Target(y=False, weight=1.0))
    clock.now = 10.0
    assert p.capture([partition(sea)]) == 0
    sea.learn_one({"x": 1.0}, Target(y=False, weight=1.0))
    clock.now = 20.0
    assert p.capture([partition(sea)]) == 1
    await p.publish_pending()
    assert [u.version for u in sent if isinstance(u, ModelUpdate)] == ["41"]


async def test_a_failed_publication_loses_nothing_the_next_tick_captures_again() -> None:
    store, clock = MemoryModelStore(), Clock()
    p, sent = publisher(store, clock)
    state = partition(trained("sea", 30))
    store.down = True
    p.capture([state])
    await p.publish_pending()
    assert store.latest == {} and sent == []
    assert p.metrics.registry.get_sample_value(
        "learnloop_model_publications_total", {"learner": "sea", "outcome": "failed"}
    ) == 1.0
    store.down = False
    clock.now = 1.0
    assert p.capture([state]) == 1  # unchanged learner, captured again because it was never stored
    await p.publish_pending()
    assert store.latest == {"sea": 30} and len(sent) == 1


async def test_only_the_newest_capture_per_learner_waits() -> None:
    store, clock = MemoryModelStore(), Clock()
    p, sent = publisher(store, clock)
    sea = trained("sea", 10)
    for i in range(3):
        sea.learn_one({"x": 1.0}, Target(y=False, weight=1.0))
        clock.now = float(i + 1)
        p.capture([partition(sea)])
    assert list(p._pending) == ["sea"]
    await p.publish_pending()
    assert [u.version for u in sent if isinstance(u, ModelUpdate)] == ["13"]


# -- the predictor, without a broker: loading goes through the store port ------------------


def predictor(store: MemoryModelStore, learners: list[str] | None = None) -> OnlinePredictor:
    return OnlinePredictor(KafkaConfig(), learners, store=store, snapshot_key=KEY, log=False,
                           metrics=PredictorMetrics(CollectorRegistry()))  # fmt: skip


def blob(learner: OnlineLearner, *, name: str | None = None, version: int | None = None, key: bytes = KEY) -> bytes:
    extra = {"learner": name or learner.name, "version": learner.n_seen if version is None else version}
    return dump_snapshot(learner, key=key, n_seen=learner.n_seen, offsets={}, extra=extra)


async def test_the_predictor_serves_the_latest_published_version_at_start() -> None:
    store = MemoryModelStore()
    await store.publish("sea", 50, blob(trained("sea", 50)))
    p = predictor(store, ["sea"])
    await p.live.resync()
    served = p.get("sea")
    assert (served.version, served.n_learned, served.classifier) == ("50", 50, True)
    prediction = p.predict("sea", {"x": 9.0})
    assert prediction.label is True and prediction.model_version == "50"
    assert prediction.probabilities is not None and prediction.probabilities[True] > 0.5
    assert prediction.prediction is True and prediction.value is None


async def test_a_tampered_or_misnamed_blob_is_refused_and_the_old_version_keeps_serving() -> None:
    store = MemoryModelStore()
    await store.publish("sea", 50, blob(trained("sea", 50)))
    p = predictor(store, ["sea"])
    await p.live.resync()
    good = blob(trained("sea", 60))
    store.blobs[("sea", 60)] = good[:-40] + bytes([good[-40] ^ 1]) + good[-39:]  # one bit flipped
    store.latest["sea"] = 60
    await p.live.resync()
    assert p.get("sea").version == "50" and p.refused == {"sea": "60"}
    # validly signed, but another learner's model copied under this learner's key
    store.blobs[("sea", 70)] = blob(trained("ctr", 70))
    await p.live.load("sea", 70)
    # validly signed, but an older version copied under a newer number
    store.blobs[("sea", 80)] = blob(trained("sea", 50))
    await p.live.load("sea", 80)
    # signed with another key
    store.blobs[("sea", 90)] = blob(trained("sea", 90), key=b"another-key-of-16-bytes")
    await p.live.load("sea", 90)
    assert p.get("sea").version == "50"
    loads = p.metrics.registry.get_sample_value
    assert loads("learnloop_model_loads_total", {"learner": "sea", "outcome": "refused_signature"}) == 2.0
    assert loads("learnloop_model_loads_total", {"learner": "sea", "outcome": "refused_invalid"}) == 2.0
    await store.publish("sea", 100, blob(trained("sea", 100)))
    await p.live.resync()
    assert p.get("sea").version == "100"


async def test_an_older_version_never_replaces_a_newer_one() -> None:
    store = MemoryModelStore()
    await store.publish("sea", 50, blob(trained("sea", 50)))
    store.blobs[("sea", 40)] = blob(trained("sea", 40))
    p = predictor(store, ["sea"])
    await p.live.resync()
    await p.live.load("sea", 40)
    assert p.get("sea").version == "50"


def test_a_learner_without_a_model_and_one_not_followed_are_told_apart() -> None:
    p = predictor(MemoryModelStore(), ["sea"])
    with pytest.raises(ModelNotReady, match="no version of learner 'sea'") as not_ready:
        p.predict("sea", {"x": 1.0})
    assert not isinstance(not_ready.value, LearnerNotFollowed)
    with pytest.raises(LearnerNotFollowed, match="'ctr' is not followed"):
        p.predict("ctr", {"x": 1.0})
    with pytest.raises(ModelNotReady, match="'anything'"):
        predictor(MemoryModelStore(), None).get("anything")


async def test_regression_serves_a_value_and_ids_are_unique() -> None:
    store = MemoryModelStore()
    await store.publish("price", 200, blob(trained("price", 200, task="regression")))
    p = predictor(store, None)
    await p.live.resync()
    predictions = p.predict_many("price", [({"x": 3.0}, None), ({"x": 3.0}, "a note")])
    assert all(pr.label is None and pr.probabilities is None for pr in predictions)
    assert predictions[0].value == pytest.approx(predictions[1].value) and predictions[0].value is not None
    assert predictions[0].prediction == predictions[0].value
    ids = {p.predict("price", {"x": 1.0}).prediction_id for _ in range(1000)}
    assert len(ids) == 1000
    with pytest.raises(ValueError, match="features or text"):
        p.predict("price")
    with pytest.raises(ValueError, match="1 subject_ids for 2 inputs"):
        p.predict_many("price", [({"x": 1.0}, None), ({"x": 2.0}, None)], subject_ids=["u1"])
    with pytest.raises(ValueError, match="log=False"):
        p.predict("price", {"x": 1.0}, log=True)


def test_a_logged_prediction_is_the_event_feedback_joins_to() -> None:
    proba = {True: 0.75, False: 0.25}
    event = _prediction_event(Prediction("sea", "p-1", "50", True, proba), {"x": 1.0}, "hi", "user-7", "shop")
    assert isinstance(event, PredictionEvent)
    assert (event.prediction_id, event.learner, event.model_version) == ("p-1", "sea", "50")
    assert (event.features, event.text, event.prediction, event.probability) == ({"x": 1.0}, "hi", True, 0.75)
    assert event.subject_id == "user-7"
    value = _prediction_event(Prediction("price", "p-2", "7", None, None, 12.5), {"x": 1.0}, None, None, "shop")
    assert (value.prediction, value.probability) == (12.5, None)


@pytest.mark.parametrize(
    ("task", "model"), [(t, m) for t in ("binary", "multiclass", "regression") for m in models_for(t)]
)
async def test_the_predictor_predicts_what_the_learner_predicts_for_every_model(task: str, model: str) -> None:
    learner = OnlineLearner("m", LearnerSpec(task=task, model=model))  # type: ignore[arg-type]
    for i in range(300):
        x = {"x": float(i % 10), "y": float(i % 7)}
        y: object = {"binary": x["x"] >= 5, "multiclass": f"c{i % 3}", "regression": 2.0 * x["x"]}[task]
        learner.learn_one(x, Target(y=y, weight=1.0))  # type: ignore[arg-type]
    store = MemoryModelStore()
    await store.publish("m", learner.n_seen, blob(learner))
    p = predictor(store, ["m"])
    await p.live.resync()
    for i in range(20):
        x = {"x": float(i % 10), "y": float(i % 3)}
        prediction = p.predict("m", x)
        if task == "regression":
            assert prediction.value == pytest.approx(learner.predict_one(x))
        else:
            assert prediction.label == learner.predict_one(x)
            assert prediction.probabilities == pytest.approx(learner.predict_proba_one(x))


async def test_an_unexpected_store_error_is_counted_and_retried_never_raised() -> None:
    class Broken(MemoryModelStore):
        async def publish(self, learner: str, version: int, blob: bytes) -> tuple[bool, int]:
            raise RuntimeError("WRONGTYPE Operation against a key holding the wrong kind of value")

    clock = Clock()
    p, sent = publisher(Broken(), clock)
    state = partition(trained("sea", 30))
    p.capture([state])
    await p.publish_pending()
    clock.now = 1.0
    assert p.capture([state]) == 1 and sent == []
    assert p.metrics.registry.get_sample_value(
        "learnloop_model_publications_total", {"learner": "sea", "outcome": "failed"}
    ) == 1.0


async def test_stop_publishes_the_last_capture_first() -> None:
    store = MemoryModelStore()
    p, sent = publisher(store, Clock())
    p.start(p._announce)  # type: ignore[arg-type]
    p.capture([partition(trained("sea", 30))], after_snapshot=True)
    await p.stop()
    assert store.latest == {"sea": 30} and len(sent) == 1


def test_a_short_snapshot_key_is_refused_when_the_predictor_is_built() -> None:
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        OnlinePredictor(KafkaConfig(), ["sea"], store=MemoryModelStore(), snapshot_key=b"short", log=False,
                        metrics=PredictorMetrics(CollectorRegistry()))  # fmt: skip


class FakeProducer:
    """Stands in for EventProducer: keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[Envelope] = []
        self.flushed = 0

    async def send(self, event: Envelope) -> Envelope:
        self.sent.append(event)
        return event

    async def flush(self) -> None:
        self.flushed += 1


async def test_predictions_logged_from_another_thread_are_sent_and_overflow_is_counted() -> None:
    producer = FakeProducer()
    metrics = PredictorMetrics(CollectorRegistry())
    plog = PredictionLog(KafkaConfig(), source="app", capacity=3, topics=Topics(), metrics=metrics,
                         producer=producer)  # type: ignore[arg-type]  # fmt: skip
    await plog.start()
    entries = [(Prediction("sea", f"p-{i}", "50", True, {True: 0.9, False: 0.1}), {"x": 1.0}, None, f"u{i}")
               for i in range(5)]
    await asyncio.to_thread(lambda: [plog.enqueue(e) for e in entries])  # 3 fit, 2 overflow
    await wait_until(lambda: len(producer.sent) == 3)
    bad = (Prediction("sea", "p-bad", "50", True, {True: 0.9}), {"x": [1, 2]}, None, None)  # not a flat feature value
    plog.enqueue(bad)  # type: ignore[arg-type]
    await plog.flush()
    await plog.stop()
    plog.enqueue(entries[0])  # after stop: counted, never queued for a loop that is gone
    assert [e.prediction_id for e in producer.sent] == ["p-0", "p-1", "p-2"]  # type: ignore[attr-defined]
    assert [e.subject_id for e in producer.sent] == ["u0", "u1", "u2"]  # type: ignore[attr-defined]
    value = metrics.registry.get_sample_value
    assert value("learnloop_prediction_logs_dropped_total", {"reason": "buffer_full"}) == 2.0
    assert value("learnloop_prediction_logs_dropped_total", {"reason": "invalid"}) == 1.0
    assert value("learnloop_predictions_logged_total", {"learner": "sea"}) == 3.0
    assert value("learnloop_prediction_logs_dropped_total", {"reason": "stopped"}) == 1.0


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_many_changed_learners_are_captured_over_several_batches_within_the_budget() -> None:
    store, clock = MemoryModelStore(), Clock()
    p = ModelPublisher(store=store, snapshot_key=KEY, source="test", metrics=FeedbackMetrics(CollectorRegistry()),
                       config=ServingConfig(capture_budget_ms=0.001), clock=clock)  # fmt: skip
    state = partition(trained("a", 10), trained("b", 10), trained("c", 10))
    assert p.capture([state]) == 1  # one at least, then the budget is spent
    clock.now = 0.1
    assert p.capture([state]) == 1  # not due by the timer: it carries on with the others
    clock.now = 0.2
    assert p.capture([state]) == 1
    assert p.capture([state]) == 0  # all captured, and not due
    assert sorted(p._pending) == ["a", "b", "c"]
    learn = {name: state.slots[name].learner.learn_one for name in "ac"}
    learn["a"]({"x": 1.0}, Target(y=False, weight=1.0))
    learn["c"]({"x": 1.0}, Target(y=False, weight=1.0))
    clock.now = 2.0
    assert p.capture([state]) == 1 and p._pending["a"].version == 11  # captured at 0.0, c at 0.2
    learn["a"]({"x": 1.0}, Target(y=False, weight=1.0))  # a changes all the time: it cannot starve c
    assert p.capture([state]) == 1 and p._pending["c"].version == 11
    assert p.capture([state]) == 1 and p._pending["a"].version == 12
