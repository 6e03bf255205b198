"""Subscriber SDK: serving applications follow ``learnloop.model-updates`` and hot-swap models.

``ModelSubscriber`` reads the model-update topic, keeps the updates for the
models and aliases it follows, loads each new version in a worker thread and
swaps it in with one reference assignment, so ``predict`` always runs on a
complete model. ``SyncModelSubscriber`` wraps it for threaded apps (Flask,
Django, scripts) with its own event loop in a daemon thread.

The subscriber is a *reader*, not a processor: it never produces, so a record
it cannot read is logged and skipped (not dead-lettered), and a version that
fails to load is logged while the loaded one keeps serving.

It also follows ``learnloop.rollouts``: while a rollout of a followed model runs, the
champion and challenger versions it names are both loaded, and ``predict``/``serve`` route
every input the way the gateway does (``streams.routing``): canary/ab by the sticky
assignment, shadow with the challenger predicting a copy that is handed to
``on_prediction`` (logged, never returned).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from schemas import InvalidEvent, ModelUpdate, PredictionEvent, RolloutEvent, parse_event
from schemas.errors import LearnloopError
from streams.config import KafkaConfig
from streams.mlflow_models import load_mlflow_model
from streams.routed import RoutedServing, add_rollout_partitions, pin_rollout_versions
from streams.routing import RoutedPrediction
from streams.topics import Topics

log = logging.getLogger(__name__)

Loader = Callable[[str], Any]
"""Turns an update's ``uri`` into an object with ``predict(inputs)``."""
OnSwap = Callable[[str, ModelUpdate], None]
OnPrediction = Callable[[PredictionEvent], None]
"""Takes each prediction ``serve`` makes (answers and shadow copies), e.g. to log it; must not block."""

_POLL_MS = 500
_CATCH_UP_IDLE_POLLS = 3  # empty polls after which catch-up ends even if an end offset was not reached
_ROLLOUT_TOPIC_CHECK_POLLS = 20  # without the rollout topic yet: look for it every 20 polls (~10 s idle)


class ModelNotReady(LearnloopError):
    """No version of the model has been loaded yet (or the model is not followed)."""


@dataclass(frozen=True)
class ServedModel:
    """A loaded model and the update it came from; immutable, so a reference to it is always consistent."""

    update: ModelUpdate
    model: Any

    @property
    def version(self) -> str:
        return self.update.version

    def predict(self, inputs: Any) -> Any:
        return self.model.predict(inputs)


def _newer(candidate: str, current: str) -> bool:
    """Numbered versions compare as numbers; other versions are newer when they differ (topic order)."""
    if candidate.isdigit() and current.isdigit():
        return int(candidate) > int(current)
    return candidate != current


class ModelSubscriber:
    """Follows chosen models and aliases on the model-update topic; serves the newest loadable version.

    ``models`` maps a model name to the alias followed, e.g. ``{"sea-text": "champion"}``.
    Every partition is read from the beginning (updates are few), so at start the
    subscriber loads the latest announced version and then follows. Without a
    ``group_id`` nothing is committed; with one, the applied offsets are committed
    under it so that lag tools see the app (partitions are still all read by every
    replica: a serving replica needs every update, so it never shares partitions).

    An update older than the loaded version is ignored. When the newest version
    fails to load, the next-newer announced ones are tried (up to ``max_fallbacks``)
    and otherwise the loaded model stays; the failure is logged with the version.

    >>> sub = ModelSubscriber(KafkaConfig(), {"sea-text": "champion"}, loader=lambda uri: None)
    >>> sub.current("sea-text") is None
    True
    >>> sub.predict("sea-text", ["great product"])
    Traceback (most recent call last):
    ...
    streams.subscriber.ModelNotReady: no version of 'sea-text' (alias 'champion') is loaded yet
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        models: Mapping[str, str],
        *,
        loader: Loader | None = None,
        topics: Topics | None = None,
        group_id: str | None = None,
        on_swap: OnSwap | None = None,
        max_fallbacks: int = 3,
        every_model: str | None = None,
        on_prediction: OnPrediction | None = None,
        source: str = "subscriber",
    ) -> None:
        if not models and every_model is None:
            raise ValueError("follow at least one model, e.g. {'sea-text': 'champion'}")
        self.kafka = kafka
        self.models = dict(models)
        # every_model: follow this alias of every fine-tuned model announced (the gateway serves them all).
        self.every_model = every_model
        self.known: set[str] = set(self.models)  # every model announced or followed: others are unknown
        self.loader: Loader = loader or load_mlflow_model
        self.topics = topics or Topics(kafka.topic_prefix)
        self.group_id = group_id
        self.on_swap = on_swap
        self.max_fallbacks = max_fallbacks
        self.load_failures: dict[str, int] = {}
        self.skipped_records = 0
        self._served: dict[str, ServedModel] = {}
        self._lock = threading.Lock()
        self._ready = {name: asyncio.Event() for name in self.models}
        self._announced: dict[tuple[str, str], ModelUpdate] = {}  # (model, version) -> its announcement
        self._rollouts: dict[str, RolloutEvent] = {}
        self._pinned: dict[tuple[str, str], ServedModel] = {}  # versions a rollout needs, loaded by version
        self.routing = RoutedServing(self, on_prediction=on_prediction, source=source)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    # -- serving (any thread) -------------------------------------------------

    def get(self, model: str) -> ServedModel:
        """The loaded version of ``model``; use its ``version`` with its ``predict`` to report both consistently."""
        with self._lock:
            served = self._served.get(model)
        if served is None:
            if model not in self.models:
                raise ModelNotReady(f"model {model!r} is not followed (following: {', '.join(self.models)})")
            raise ModelNotReady(f"no version of {model!r} (alias {self.models[model]!r}) is loaded yet")
        return served

    def predict(self, model: str, inputs: Any, *, subject_ids: Sequence[str | None] | None = None) -> Any:
        """Predict with the version that answers each input; a swap never interrupts a call in progress.

        Without a running rollout of ``model`` that is the loaded version, and the output is the
        model's own. While one runs, each input goes to its arm (sticky by its subject id, else
        random per call) and the outputs come back in input order; use ``serve`` to learn which
        version answered which input, with prediction ids to join feedback to.
        """
        return self.routing.predict(model, inputs, subject_ids)

    def serve(
        self, model: str, texts: Sequence[str], *, subject_ids: Sequence[str | None] | None = None
    ) -> list[RoutedPrediction]:
        """Answer each text as a rollout routes it: label, probability, version, arm and a prediction id.

        Each answer (and, in shadow mode, the challenger's copy) goes to ``on_prediction``.
        """
        return self.routing.serve(model, texts, subject_ids)

    def rollout(self, model: str) -> RolloutEvent | None:
        """The latest rollout state of ``model`` (None: none was ever announced)."""
        with self._lock:
            return self._rollouts.get(model)

    def version(self, model: str, version: str) -> ServedModel | None:
        """A loaded version of ``model``: the served one, or one a rollout pinned."""
        with self._lock:
            served = self._served.get(model)
            if served is not None and served.version == version:
                return served
            return self._pinned.get((model, version))

    def announcement(self, model: str, version: str) -> ModelUpdate | None:
        return self._announced.get((model, version))

    def pin(self, update: ModelUpdate, loaded: Any) -> None:
        """Hold a version a rollout routes to, beside the served one."""
        with self._lock:
            self._pinned[(update.model, update.version)] = ServedModel(update, loaded)

    def unpin(self, model: str, *, keep: frozenset[str]) -> None:
        with self._lock:
            for key in [k for k in self._pinned if k[0] == model and k[1] not in keep]:
                del self._pinned[key]

    def announced_version(self, model: str, alias: str) -> str | None:
        """The latest version announced for ``alias`` of ``model`` (loaded or not)."""
        versions = [v for (m, v), u in list(self._announced.items()) if m == model and u.alias == alias]
        return versions[-1] if versions else None

    def loaded_versions(self, model: str) -> frozenset[str]:
        with self._lock:
            served = self._served.get(model)
            pinned = {v for (m, v) in self._pinned if m == model}
        return frozenset(pinned | ({served.version} if served is not None else set()))

    def current(self, model: str) -> ModelUpdate | None:
        with self._lock:
            served = self._served.get(model)
        return served.update if served is not None else None

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            client_id=f"{self.kafka.client_id}-model-subscriber",
            group_id=self.group_id,
            enable_auto_commit=False,
            **self.kafka.client_kwargs(),
        )
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="learnloop-model-subscriber")
        self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        self.routing.close()
        if self._task is not None:
            self._task.cancel()  # a load in progress finishes in its thread and is dropped
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a crash was logged when it happened
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> ModelSubscriber:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_ready(self, model: str, timeout: float = 60.0) -> ServedModel:
        """Wait until a version of ``model`` is loaded; ``ModelNotReady`` after ``timeout`` seconds."""
        if self.every_model is not None:
            self._ready.setdefault(model, asyncio.Event())
        if model not in self._ready:
            raise ModelNotReady(f"model {model!r} is not followed (following: {', '.join(self.models)})")
        waiter = asyncio.ensure_future(self._ready[model].wait())
        watched: set[asyncio.Future[Any]] = {waiter} | ({self._task} if self._task is not None else set())
        try:
            await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._task is not None and self._task.done() and not self._task.cancelled() and self._task.exception():
            raise ModelNotReady(f"the subscriber stopped: {self._task.exception()!r}")
        if not self._ready[model].is_set():
            raise ModelNotReady(f"no version of {model!r} loaded within {timeout:g}s")
        return self.get(model)

    # -- the loop -------------------------------------------------------------

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        tps = await self._partitions(consumer)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        # Catch up first and load once: replaying history must not load every old version.
        pending: dict[str, list[ModelUpdate]] = {}
        idle = 0
        while idle < _CATCH_UP_IDLE_POLLS and any([await consumer.position(tp) < end[tp] for tp in tps]):
            batch = await self._poll(consumer)
            idle = 0 if batch else idle + 1
            self._collect(batch, pending)
        await self._apply_all(consumer, pending)
        await pin_rollout_versions(self)
        log.info("model subscriber caught up: %s", {m: self._version(m) for m in self.models})
        polls = 0
        while True:
            pending = {}
            rollouts = len(self._rollouts), [r.decided_at for r in self._rollouts.values()]
            self._collect(await self._poll(consumer), pending)
            if pending:
                await self._apply_all(consumer, pending)
            if pending or rollouts != (len(self._rollouts), [r.decided_at for r in self._rollouts.values()]):
                await pin_rollout_versions(self)
            polls += 1
            if polls % _ROLLOUT_TOPIC_CHECK_POLLS == 0 and all(tp.topic != self.topics.rollouts for tp in tps):
                tps = await add_rollout_partitions(consumer, self.topics.rollouts, tps)

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        topic = self.topics.model_updates
        while True:  # nothing announced yet: the topic may not exist
            parts = consumer.partitions_for_topic(topic)
            if parts:
                rollouts = consumer.partitions_for_topic(self.topics.rollouts) or set()
                return [TopicPartition(topic, p) for p in sorted(parts)] + [
                    TopicPartition(self.topics.rollouts, p) for p in sorted(rollouts)
                ]
            with contextlib.suppress(KafkaError):
                await consumer._client.force_metadata_update()
            await asyncio.sleep(0.5)

    async def _poll(self, consumer: AIOKafkaConsumer) -> list[ConsumerRecord[bytes, bytes]]:
        try:
            batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=10_000)
        except KafkaError as error:  # the client reconnects by itself; keep serving meanwhile
            log.warning("model-update poll failed, retrying: %r", error)
            await asyncio.sleep(1.0)
            return []
        records: list[ConsumerRecord[bytes, bytes]] = []
        for recs in batch.values():
            records.extend(recs)
        return records

    def _collect(self, records: list[ConsumerRecord[bytes, bytes]], pending: dict[str, list[ModelUpdate]]) -> None:
        for rec in records:
            if (self.every_model is None and rec.key is not None
                    and rec.key.decode(errors="replace") not in self.models):  # fmt: skip
                # Keyed by model: another model's update, not parsed. The feedback worker announces
                # every learner about once a second, so most records of the topic are these.
                continue
            try:
                if rec.value is None:
                    raise InvalidEvent("record has no value", reason="invalid_json")
                if rec.topic == self.topics.rollouts:
                    self._follow_rollout(parse_event(rec.value, RolloutEvent))
                    continue
                update = parse_event(rec.value, ModelUpdate)
            except InvalidEvent as error:
                self.skipped_records += 1
                log.warning(
                    "skipping record %s[%d]@%d: %s (%s)", rec.topic, rec.partition, rec.offset, error, error.reason
                )
                continue
            if update.kind == "fine-tuned" and self.every_model is not None and update.model not in self.models:
                self.models[update.model] = self.every_model
                self._ready.setdefault(update.model, asyncio.Event())
            if update.model in self.models:
                self.known.add(update.model)
                self._announced[(update.model, update.version)] = update
            if self.models.get(update.model) == update.alias:
                pending.setdefault(update.model, []).append(update)

    def _follow_rollout(self, event: RolloutEvent) -> None:
        with self._lock:
            self._rollouts[event.model] = event
        if event.model in self.models:
            log.info("%s rollout %s: %s %s at %g %% (champion %s, challenger %s)", event.model, event.rollout_id,
                     event.state, event.mode, event.share, event.champion_version, event.challenger_version)

    async def _apply_all(self, consumer: AIOKafkaConsumer, pending: dict[str, list[ModelUpdate]]) -> None:
        for model, updates in pending.items():
            await self._apply(model, updates)
        if self.group_id is not None:
            try:
                await consumer.commit()
            except KafkaError as error:  # offsets are for lag tools only; the next commit catches up
                log.warning("could not commit model-update offsets for %s: %r", self.group_id, error)

    async def _apply(self, model: str, updates: list[ModelUpdate]) -> None:
        """Load the newest update that is newer than the served one; fall back to the next-newer ones."""
        current = self._version(model)
        fresh = [u for u in updates if current is None or _newer(u.version, current)]
        if all(u.version.isdigit() for u in fresh):
            fresh.sort(key=lambda u: int(u.version))
        candidates: dict[str, ModelUpdate] = {}
        for update in reversed(fresh):  # newest first; a re-announced version is tried once
            candidates.setdefault(update.version, update)
        for update in list(candidates.values())[: 1 + self.max_fallbacks]:
            pinned = self.version(model, update.version)
            if pinned is not None:  # a promoted challenger is loaded already
                self._swap(model, ServedModel(update, pinned.model))
                return
            try:
                loaded = await asyncio.to_thread(self.loader, update.uri)
            except Exception:  # any loader failure: the served model must survive it
                self.load_failures[model] = self.load_failures.get(model, 0) + 1
                log.exception("%s version %s failed to load; serving stays at %s", model, update.version, current)
                continue
            self._swap(model, ServedModel(update, loaded))
            return

    def _swap(self, model: str, served: ServedModel) -> None:
        with self._lock:
            previous = self._served.get(model)
            self._served[model] = served
        self._ready[model].set()
        was = previous.version if previous else None
        log.info("%s: serving version %s (%s), was %s", model, served.version, served.update.uri, was)
        if self.on_swap is not None:
            try:
                self.on_swap(model, served.update)
            except Exception:  # the app's callback must not stop the subscriber
                log.exception("on_swap callback failed for %s version %s", model, served.version)

    def _version(self, model: str) -> str | None:
        update = self.current(model)
        return update.version if update is not None else None


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("model subscriber stopped; the loaded models keep serving", exc_info=task.exception())


def __getattr__(name: str) -> Any:
    # The blocking wrapper lives in its own module; this keeps `from streams.subscriber import SyncModelSubscriber`.
    if name == "SyncModelSubscriber":
        from streams.subscriber_sync import SyncModelSubscriber

        return SyncModelSubscriber
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
