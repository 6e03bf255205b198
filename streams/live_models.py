"""The versions a predictor serves: loaded from the model store, followed on the model-update topic.

At start the latest published version of each followed learner is loaded from the store, so
a predictor serves at once; then ``learnloop.model-updates`` (``kind="online-snapshot"``) is
followed from its end, and the store is read again every ``resync_every_s``, so a version
whose announcement was lost is still served. Every blob is verified (HMAC, the snapshot key)
before it is unpickled, and must name the learner and version it was fetched as; a refused
version is logged and counted, and the loaded one keeps serving. A new version replaces the
old one with one reference assignment, so a reader always holds a whole model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from learners.models import FeatureValue
from learners.online import OnlineLearner
from learners.snapshot import MIN_KEY_BYTES, load_snapshot
from schemas import InvalidEvent, ModelUpdate, parse_event
from schemas.errors import ConfigError, SnapshotError, SnapshotSignatureError, StoreUnavailable
from streams.config import KafkaConfig, ServingConfig
from streams.metrics import PredictorMetrics
from streams.ports import ModelStore
from streams.subscriber import ModelNotReady
from streams.topics import Topics

__all__ = ["LearnerNotFollowed", "LiveModels", "ModelNotReady", "Served"]

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


class LiveModels:
    """The served version of each followed learner (``learners``; ``None`` follows every published one).

    ``served`` is read from any thread without a lock: an entry is replaced by one assignment.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        learners: frozenset[str] | None,
        *,
        store: ModelStore,
        snapshot_key: bytes,
        config: ServingConfig,
        topics: Topics,
        metrics: PredictorMetrics,
    ) -> None:
        if len(snapshot_key) < MIN_KEY_BYTES:  # found now, not at the first version to load
            raise ConfigError(f"snapshot key must be at least {MIN_KEY_BYTES} bytes (LEARNLOOP_SNAPSHOT__KEY)")
        self.kafka = kafka
        self.learners = learners
        self.store = store
        self.snapshot_key = snapshot_key
        self.config = config
        self.topics = topics
        self.metrics = metrics
        self.served: dict[str, Served] = {}
        self.refused: dict[str, str] = {}  # learner -> the last version refused
        self._ready: dict[str, asyncio.Event] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def missing(self, learner: str) -> ModelNotReady:
        """The error for a learner with nothing served: not followed, or nothing published (loaded) yet."""
        if self.learners is not None and learner not in self.learners:
            following = ", ".join(sorted(self.learners))
            return LearnerNotFollowed(f"learner {learner!r} is not followed by this predictor (following: {following})")
        return ModelNotReady(f"no version of learner {learner!r} is published yet (or none was loaded)")

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            client_id=f"{self.kafka.client_id}-predictor", enable_auto_commit=False, **self.kafka.client_kwargs()
        )
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        try:
            await self.resync()
        except StoreUnavailable as exc:  # the follow loop retries; nothing to serve until then
            log.warning("model store unreachable at start, retrying every %gs: %s", self.config.resync_every_s, exc)
        except Exception:
            log.exception("reading the model store failed at start; retrying every %gs", self.config.resync_every_s)
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(consumer), name="learnloop-predictor")
        self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()  # a load in progress finishes in its thread and is dropped
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a crash was logged when it happened
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def wait_ready(self, learner: str, timeout: float = 60.0) -> Served:
        """Wait until a version of ``learner`` is served; ``ModelNotReady`` after ``timeout`` seconds."""
        if self.learners is not None and learner not in self.learners:
            raise self.missing(learner)
        ready = self._ready.setdefault(learner, asyncio.Event())
        if learner in self.served:
            return self.served[learner]
        waiter = asyncio.ensure_future(ready.wait())
        watched: set[asyncio.Future[Any]] = {waiter} | ({self._task} if self._task is not None else set())
        try:
            await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            raise ModelNotReady(f"the predictor stopped following versions: {task.exception()!r}")
        served = self.served.get(learner)
        if served is None:
            raise ModelNotReady(f"no version of learner {learner!r} was published within {timeout:g}s")
        return served

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        tps = await self._partitions(consumer)
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)  # history is in the store; only what comes next is needed
        next_resync = 0.0  # at once: what was published before the seek is not announced again
        while True:
            if time.monotonic() >= next_resync:
                try:
                    await self.resync()
                except StoreUnavailable as exc:
                    log.warning("model store unreachable, serving stays as it is: %s", exc)
                except Exception:  # a store answering nonsense must not stop following: loud, then retried
                    log.exception("reading the model store failed; serving stays as it is, retrying")
                next_resync = time.monotonic() + self.config.resync_every_s
            newest = self._announced(await self._poll(consumer))
            for learner, version in newest.items():
                try:
                    await self.load(learner, version)
                except StoreUnavailable as exc:
                    log.warning("model store unreachable, %s stays at %s: %s", learner, self._version(learner), exc)
                except Exception:  # the next announcement or resync tries again
                    self.metrics.model_loads.labels(learner, "failed").inc()
                    log.exception("%s version %d failed to load; serving stays at %s", learner, version,
                                  self._version(learner))  # fmt: skip

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
        followed = self.learners
        for rec in records:
            if followed is not None and rec.key is not None and rec.key.decode(errors="replace") not in followed:
                continue  # keyed by model: another learner's (or a fine-tuned model's) update, not parsed
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

    async def resync(self) -> None:
        """Load the store's latest version of every followed learner that is newer than the served one."""
        latest = await self.store.latest_versions(None if self.learners is None else sorted(self.learners))
        for learner, version in latest.items():
            if self._follows(learner):
                await self.load(learner, version)

    async def load(self, learner: str, version: int) -> None:
        current = self.served.get(learner)
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
        current = self.served.get(learner)
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
        previous = self.served.get(served.learner)
        self.served[served.learner] = served  # the one reference readers see: a whole model or the old one
        self._ready.setdefault(served.learner, asyncio.Event()).set()
        self.metrics.model_loads.labels(served.learner, "loaded").inc()
        self.metrics.served_version.labels(served.learner).set(served.n_learned)
        if previous is None:
            log.info("%s: serving version %s", served.learner, served.version)
        else:  # about once a second per learner while it learns: not for the info log
            log.debug("%s: serving version %s, was %s", served.learner, served.version, previous.version)

    def _follows(self, learner: str) -> bool:
        return self.learners is None or learner in self.learners

    def _version(self, learner: str) -> str | None:
        served = self.served.get(learner)
        return served.version if served is not None else None


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("predictor task %s stopped; the loaded versions keep serving", task.get_name(),
                  exc_info=task.exception())  # fmt: skip
