"""Predictor SDK: serve the online learners in-process, following their published versions.

``OnlinePredictor`` loads the latest published version of each learner it follows from the
model store at start (so it serves at once), then follows ``learnloop.model-updates``
(``kind="online-snapshot"``) and reads the store again every ``resync_every_s``, so that a
version whose announcement was lost is still served. Every blob is verified (HMAC, the
snapshot key) before it is unpickled, and must name the learner and version it was fetched
as; a refused version is logged and counted, and the loaded one keeps serving. A new version
replaces the old one with one reference assignment: a prediction runs on a whole model.

``predict`` runs locally, with no network hop: the learner's River model, an id, and (by
default) a log entry that a background task turns into a ``PredictionEvent`` on
``learnloop.predictions``. Feedback that later carries only that ``prediction_id`` and a
label is joined by the feedback worker to the exact features that were served.

``SyncOnlinePredictor`` wraps it for threaded apps, on its own event loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from learners.models import FeatureValue, with_text
from learners.online import OnlineLearner
from learners.snapshot import load_snapshot
from schemas import InvalidEvent, ModelUpdate, PredictionEvent, parse_event
from schemas.errors import SnapshotError, SnapshotSignatureError, StoreUnavailable
from streams.config import KafkaConfig, ServingConfig
from streams.loopthread import BlockingClient
from streams.metrics import PredictorMetrics, predictor_metrics
from streams.ports import ModelStore
from streams.producer import EventProducer
from streams.subscriber import ModelNotReady
from streams.topics import Topics

__all__ = ["LearnerNotFollowed", "ModelNotReady", "OnlinePredictor", "Prediction", "Served", "SyncOnlinePredictor"]

log = logging.getLogger(__name__)

ONLINE_SNAPSHOT = "online-snapshot"
_POLL_MS = 500


class LearnerNotFollowed(ModelNotReady):
    """The predictor was built to follow other learners; this one will never be served by it."""


@dataclass(frozen=True, slots=True)
class Served:
    """One loaded version of a learner; immutable, so a reference to it is always consistent.

    ``version`` is the learner's ``n_learned`` at publication (see ``streams.publisher``).
    """

    learner: str
    version: str
    learner_obj: OnlineLearner
    task: str
    metrics: dict[str, float] = field(default_factory=dict)
    published_at: str = ""
    # The River model's predict_proba_one, bound once: the hot path calls it with nothing in between.
    proba_scorer: Callable[[dict[str, FeatureValue]], dict[Any, float]] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "proba_scorer", self.learner_obj.proba_scorer)

    @property
    def classifier(self) -> bool:
        return self.task != "regression"

    @property
    def n_learned(self) -> int:
        return int(self.version)


class Prediction(NamedTuple):
    """One served prediction. A tuple: built in a fraction of a microsecond on the hot path.

    Classification sets ``label`` and ``probabilities`` (class -> probability); regression sets
    ``value``. ``prediction_id`` is what feedback refers to.
    """

    learner: str
    prediction_id: str
    model_version: str
    label: Any = None
    probabilities: dict[Any, float] | None = None
    value: float | None = None

    @property
    def prediction(self) -> Any:
        """The label of a classification, the value of a regression."""
        return self.value if self.probabilities is None else self.label


_new_tuple = tuple.__new__  # a NamedTuple built without its generated __new__ (a third of the cost)
_LogEntry = tuple[Prediction, dict[str, FeatureValue] | None, str | None]


class OnlinePredictor:
    """Serves chosen learners (``learners``; ``None`` follows every published learner).

    >>> p = OnlinePredictor(KafkaConfig(), ["sea"], store=None, snapshot_key=b"k" * 16, log=False)
    >>> p.predict("sea", features={"x": 1.0})
    Traceback (most recent call last):
    ...
    streams.subscriber.ModelNotReady: no version of learner 'sea' is published yet (or none was loaded)
    >>> p.get("ctr")
    Traceback (most recent call last):
    ...
    streams.predictor.LearnerNotFollowed: learner 'ctr' is not followed by this predictor (following: sea)
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        learners: Iterable[str] | None,
        *,
        store: ModelStore,
        snapshot_key: bytes,
        log: bool = True,
        producer: EventProducer | None = None,
        source: str = "learnloop-predictor",
        config: ServingConfig | None = None,
        topics: Topics | None = None,
        metrics: PredictorMetrics | None = None,
    ) -> None:
        self.kafka = kafka
        self.learners = None if learners is None else frozenset(learners)
        if self.learners is not None and not self.learners:
            raise ValueError("follow at least one learner, or None for every published one")
        self.store = store
        self.snapshot_key = snapshot_key
        self.log = log
        self.source = source
        self.config = config or ServingConfig()
        self.topics = topics or Topics(kafka.topic_prefix)
        self.metrics = metrics or predictor_metrics()
        self.refused: dict[str, str] = {}  # learner -> the last version refused
        self._producer = producer
        self._own_producer = producer is None
        self._served: dict[str, Served] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Unique without a uuid4 per call (which costs half of River's own predict on a small model):
        # 122 random bits per predictor, then a counter.
        self._id_prefix = uuid.uuid4().hex + "-"
        self._ids = itertools.count(1)
        self._queue: collections.deque[_LogEntry] = collections.deque()
        self._log_wake = asyncio.Event()
        self._wake_pending = False

    # -- serving (any thread) ---------------------------------------------------

    def get(self, learner: str) -> Served:
        """The version of ``learner`` being served; ``ModelNotReady`` / ``LearnerNotFollowed`` otherwise."""
        served = self._served.get(learner)
        if served is None:
            raise self._missing(learner)
        return served

    def predict(
        self,
        learner: str,
        features: Mapping[str, FeatureValue] | None = None,
        text: str | None = None,
        *,
        log: bool | None = None,
    ) -> Prediction:
        """Predict with the served version of ``learner``; logs a ``PredictionEvent`` unless ``log`` is false."""
        served = self._served.get(learner)  # one read: a swap during the call does not change this version
        if served is None:
            raise self._missing(learner)
        return self._predict(served, features, text, self.log if log is None else self._logged(log))

    def predict_many(
        self,
        learner: str,
        inputs: Iterable[tuple[Mapping[str, FeatureValue] | None, str | None]],
        *,
        log: bool | None = None,
    ) -> list[Prediction]:
        """Predict ``(features, text)`` pairs, all with one version of ``learner``."""
        served = self.get(learner)
        logged = self.log if log is None else self._logged(log)
        return [self._predict(served, features, text, logged) for features, text in inputs]

    def versions(self) -> dict[str, str]:
        """The version served per learner (for status pages)."""
        return {name: served.version for name, served in list(self._served.items())}

    def _logged(self, log: bool) -> bool:
        if log and not self.log:
            raise ValueError("this predictor was built with log=False: it has no producer to log with")
        return log

    def _predict(
        self, served: Served, features: Mapping[str, FeatureValue] | None, text: str | None, logged: bool
    ) -> Prediction:
        # The hot path: River's own call plus about half a microsecond (no copies, no validation,
        # the tuple built directly); see bench/ for the comparison with predict_proba_one.
        if text is None:
            if features is None:
                raise ValueError("predict needs features or text")
            x = features if type(features) is dict else dict(features)
        else:
            x = with_text(features, text)
        pid = f"{self._id_prefix}{next(self._ids):x}"
        scorer = served.proba_scorer
        if scorer is not None:
            proba = scorer(x)
            label, best = None, -1.0
            for k, p in proba.items():  # the first most probable class, as River's predict_one picks it
                if p > best:
                    label, best = k, p
            prediction = _new_tuple(Prediction, (served.learner, pid, served.version, label, proba, None))
        else:
            label, probabilities = served.learner_obj.predict_with_proba(x)
            if probabilities is None:  # a regression: the label is the value
                prediction = _new_tuple(Prediction, (served.learner, pid, served.version, None, None, label))
            else:
                prediction = _new_tuple(Prediction, (served.learner, pid, served.version, label, probabilities, None))
        if logged:
            # A copy: the app may reuse its dict, and the log must hold what was served.
            self._enqueue((prediction, None if features is None else dict(features), text))
        return prediction

    def _missing(self, learner: str) -> ModelNotReady:
        if self.learners is not None and learner not in self.learners:
            following = ", ".join(sorted(self.learners))
            return LearnerNotFollowed(f"learner {learner!r} is not followed by this predictor (following: {following})")
        return ModelNotReady(f"no version of learner {learner!r} is published yet (or none was loaded)")

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Load what is published, then follow announcements; with ``log``, start the producer too."""
        self._loop = asyncio.get_running_loop()
        consumer = AIOKafkaConsumer(
            client_id=f"{self.kafka.client_id}-predictor", enable_auto_commit=False, **self.kafka.client_kwargs()
        )
        try:
            if self.log and self._producer is None:
                self._producer = EventProducer(self.kafka, topics=self.topics)
                await self._producer.start()
            await consumer.start()
            with contextlib.suppress(StoreUnavailable):  # logged; the follow loop retries
                await self._resync()
        except BaseException:
            await consumer.stop()
            await self._stop_producer()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(consumer), name="learnloop-predictor")
        self._task.add_done_callback(_report_crash)
        if self.log:
            self._log_task = asyncio.create_task(self._drain_logs(), name="learnloop-predictor-log")
            self._log_task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        """Stop following, send the predictions still waiting to be logged, close the clients."""
        if self._task is not None:
            self._task.cancel()  # a load in progress finishes in its thread and is dropped
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a crash was logged when it happened
                await self._task
            self._task = None
        if self._log_task is not None:
            self._log_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._log_task
            self._log_task = None
            await self._send_logged()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        await self._stop_producer()

    async def _stop_producer(self) -> None:
        if self._own_producer and self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def __aenter__(self) -> OnlinePredictor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_ready(self, learner: str, timeout: float = 60.0) -> Served:
        """Wait until a version of ``learner`` is served; ``ModelNotReady`` after ``timeout`` seconds."""
        if self.learners is not None and learner not in self.learners:
            raise self._missing(learner)
        ready = self._ready.setdefault(learner, asyncio.Event())
        if learner in self._served:
            return self._served[learner]
        waiter = asyncio.ensure_future(ready.wait())
        watched: set[asyncio.Future[Any]] = {waiter} | ({self._task} if self._task is not None else set())
        try:
            await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            raise ModelNotReady(f"the predictor stopped following: {task.exception()!r}")
        served = self._served.get(learner)
        if served is None:
            raise ModelNotReady(f"no version of learner {learner!r} was published within {timeout:g}s")
        return served

    async def flush(self) -> None:
        """Send every prediction logged so far and wait for the broker to acknowledge them."""
        await self._send_logged()
        if self._producer is not None:
            await self._producer.flush()

    # -- following versions -------------------------------------------------------

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        tps = await self._partitions(consumer)
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)  # history is in the store; only what comes next is needed
        next_resync = 0.0  # at once: what was published before the seek is not announced again
        while True:
            if time.monotonic() >= next_resync:
                try:
                    await self._resync()
                except StoreUnavailable as exc:
                    log.warning("model store unreachable, serving stays as it is: %s", exc)
                next_resync = time.monotonic() + self.config.resync_every_s
            newest = self._announced(await self._poll(consumer))
            for learner, version in newest.items():
                try:
                    await self._load(learner, version)
                except StoreUnavailable as exc:
                    log.warning("model store unreachable, %s stays at %s: %s", learner, self._version(learner), exc)

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        topic = self.topics.model_updates
        while True:  # nothing announced yet: the topic may not exist
            parts = consumer.partitions_for_topic(topic)
            if parts:
                return [TopicPartition(topic, p) for p in sorted(parts)]
            with contextlib.suppress(KafkaError):
                await consumer._client.force_metadata_update()
            await asyncio.sleep(0.5)

    async def _poll(self, consumer: AIOKafkaConsumer) -> list[Any]:
        try:
            batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=10_000)
        except KafkaError as error:  # the client reconnects by itself; keep serving meanwhile
            log.warning("model-update poll failed, retrying: %r", error)
            await asyncio.sleep(1.0)
            return []
        return [rec for recs in batch.values() for rec in recs]

    def _announced(self, records: Sequence[Any]) -> dict[str, int]:
        """The newest announced online-snapshot version per followed learner; older ones are never loaded."""
        newest: dict[str, int] = {}
        for rec in records:
            try:
                update = parse_event(rec.value or b"", ModelUpdate)
            except InvalidEvent as error:
                log.warning("skipping model-update record %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, error)
                continue
            assert isinstance(update, ModelUpdate)
            if update.kind != ONLINE_SNAPSHOT or not self._follows(update.model) or not update.version.isdigit():
                continue
            newest[update.model] = max(newest.get(update.model, -1), int(update.version))
        return newest

    async def _resync(self) -> None:
        """Load the store's latest version of every followed learner that is newer than the served one."""
        latest = await self.store.latest_versions(None if self.learners is None else sorted(self.learners))
        for learner, version in latest.items():
            if self._follows(learner):
                await self._load(learner, version)

    async def _load(self, learner: str, version: int) -> None:
        current = self._served.get(learner)
        if (current is not None and current.n_learned >= version) or self.refused.get(learner) == str(version):
            return
        blob = await self.store.fetch(learner, version)
        if blob is None:  # superseded and expired since it was announced: take the latest instead
            found = await self.store.fetch_latest(learner)
            if found is None or (current is not None and current.n_learned >= found[0]):
                self.metrics.model_loads.labels(learner, "missing").inc()
                return
            version, blob = found
        try:
            served = await asyncio.to_thread(self._verify, learner, version, blob)
        except SnapshotSignatureError as exc:
            self._refuse(learner, version, "refused_signature", exc)
            return
        except (SnapshotError, TypeError) as exc:
            self._refuse(learner, version, "refused_invalid", exc)
            return
        current = self._served.get(learner)
        if current is None or served.n_learned > current.n_learned:  # another load may have won meanwhile
            self._swap(served)

    def _verify(self, learner: str, version: int, blob: bytes) -> Served:
        state, meta = load_snapshot(blob, key=self.snapshot_key)  # the HMAC is checked before unpickling
        if not isinstance(state, OnlineLearner):
            raise TypeError(f"the blob holds {type(state).__name__}, not an OnlineLearner")
        # Signed by us, but it must be the one asked for: a valid blob copied under another
        # learner's or version's key is refused too.
        named = (meta.extra.get("learner"), meta.extra.get("version"))
        if named != (learner, version) or state.name != learner:
            raise SnapshotError(f"the blob is {named[0]!r} version {named[1]!r}, fetched as {learner!r} {version}")
        metrics = meta.extra.get("metrics", {})
        return Served(learner, str(version), state, state.spec.task, dict(metrics), meta.created_at)

    def _refuse(self, learner: str, version: int, outcome: str, exc: Exception) -> None:
        self.refused[learner] = str(version)
        self.metrics.model_loads.labels(learner, outcome).inc()
        log.error("%s version %d refused (%s); serving stays at %s", learner, version, exc, self._version(learner))

    def _swap(self, served: Served) -> None:
        previous = self._served.get(served.learner)
        self._served[served.learner] = served  # the one reference readers see: a whole model or the old one
        self._ready.setdefault(served.learner, asyncio.Event()).set()
        self.metrics.model_loads.labels(served.learner, "loaded").inc()
        self.metrics.served_version.labels(served.learner).set(served.n_learned)
        was = previous.version if previous is not None else None
        log.info("%s: serving version %s, was %s", served.learner, served.version, was)

    def _follows(self, learner: str) -> bool:
        return self.learners is None or learner in self.learners

    def _version(self, learner: str) -> str | None:
        served = self._served.get(learner)
        return served.version if served is not None else None

    # -- logging predictions --------------------------------------------------------

    def _enqueue(self, entry: _LogEntry) -> None:
        if len(self._queue) >= self.config.log_buffer:
            self.metrics.prediction_logs_dropped.labels("buffer_full").inc()
            return
        self._queue.append(entry)
        if not self._wake_pending and self._loop is not None:
            # Once per drain, not per call; the drainer clears the flag before it empties the queue.
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._log_wake.set)

    async def _drain_logs(self) -> None:
        while True:
            await self._log_wake.wait()
            self._log_wake.clear()
            self._wake_pending = False
            await self._send_logged()

    async def _send_logged(self) -> None:
        if self._producer is None:
            return
        counts: collections.Counter[str] = collections.Counter()
        invalid = 0
        while self._queue:
            prediction, features, text = self._queue.popleft()
            try:
                event = _prediction_event(prediction, features, text, self.source)
            except ValidationError as exc:
                invalid += 1
                if invalid == 1:
                    log.warning("prediction %s not logged: %s", prediction.prediction_id, _first_error(exc))
                continue
            try:
                await self._producer.send(event)
            except KafkaError as exc:
                self.metrics.prediction_logs_dropped.labels("send_failed").inc()
                log.error("prediction %s not logged: %r", prediction.prediction_id, exc)
                continue
            counts[prediction.learner] += 1
        if invalid:
            self.metrics.prediction_logs_dropped.labels("invalid").inc(invalid)
        for learner, n in counts.items():
            self.metrics.predictions_logged.labels(learner).inc(n)


def _prediction_event(
    prediction: Prediction, features: dict[str, FeatureValue] | None, text: str | None, source: str
) -> PredictionEvent:
    probability = None
    if prediction.probabilities is not None and prediction.label is not None:
        probability = float(prediction.probabilities.get(prediction.label, 0.0))
    return PredictionEvent(
        source=source,
        prediction_id=prediction.prediction_id,
        learner=prediction.learner,
        features=features,
        text=text,
        prediction=prediction.prediction,
        probability=probability,
        model_version=prediction.model_version,
    )


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("predictor task %s stopped; the loaded versions keep serving", task.get_name(),
                  exc_info=task.exception())  # fmt: skip


class SyncOnlinePredictor(BlockingClient[OnlinePredictor]):
    """Blocking wrapper around :class:`OnlinePredictor` for threaded apps.

    A private event loop runs in a daemon thread and follows the versions; ``predict``,
    ``predict_many``, ``get`` and ``versions`` run in the caller's thread and never wait
    on that loop (logging hands the entry over and returns).
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        learners: Iterable[str] | None,
        *,
        store: ModelStore,
        snapshot_key: bytes,
        log: bool = True,
        source: str = "learnloop-predictor",
        config: ServingConfig | None = None,
        topics: Topics | None = None,
        metrics: PredictorMetrics | None = None,
    ) -> None:
        predictor = OnlinePredictor(
            kafka, learners, store=store, snapshot_key=snapshot_key, log=log, source=source, config=config,
            topics=topics, metrics=metrics,
        )  # fmt: skip
        super().__init__(predictor, "learnloop-predictor")

    @property
    def predictor(self) -> OnlinePredictor:
        return self._async

    def wait_ready(self, learner: str, timeout: float = 60.0) -> Served:
        return self._call(self._async.wait_ready(learner, timeout))

    def get(self, learner: str) -> Served:
        return self._async.get(learner)

    def predict(
        self,
        learner: str,
        features: Mapping[str, FeatureValue] | None = None,
        text: str | None = None,
        *,
        log: bool | None = None,
    ) -> Prediction:
        return self._async.predict(learner, features, text, log=log)

    def predict_many(
        self,
        learner: str,
        inputs: Iterable[tuple[Mapping[str, FeatureValue] | None, str | None]],
        *,
        log: bool | None = None,
    ) -> list[Prediction]:
        return self._async.predict_many(learner, inputs, log=log)

    def versions(self) -> dict[str, str]:
        return self._async.versions()

    def flush(self) -> None:
        self._call(self._async.flush())
