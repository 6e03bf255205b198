"""`learnloop worker rollouts`: the rollout controller's consumer loop.

Reads ``learnloop.model-updates`` (a gated challenger starts a rollout), ``learnloop.predictions``
(what each version served) and ``learnloop.feedback`` (labels by prediction_id). Every
``tick_s`` it decides, announces (``learnloop.rollouts``, and ``learnloop.model-updates`` alias
champion on a promotion), then saves the rollouts with the positions it has read up to in one
SQL transaction. It resumes from those positions (never from Kafka's committed offsets, which
are written afterwards for lag tools only), so a kill at any point counts nothing twice.

Run one controller per deployment: it reads every partition itself. A partition it has no saved
position for is read from its end: a new controller acts on what happens after it starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from learners.config import LearnersConfig
from schemas import FeedbackEvent, ModelUpdate, PredictionEvent, parse_event
from schemas.errors import InvalidEvent
from streams.admin import ensure_topics
from streams.app import LoopService, create_app
from streams.lifecycle import Lifecycle
from streams.metrics import serve_metrics
from streams.producer import EventProducer
from streams.topics import Topics
from workers.feedback.worker import run_faust
from workers.rollouts.controller import RolloutController
from workers.rollouts.metrics import RolloutMetrics
from workers.rollouts.store import RolloutStore
from workers.settings import Settings
from workers.store.migrate import migrated_engine

log = logging.getLogger(__name__)


class RolloutLoop(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, settings: Settings, learners: LearnersConfig) -> None:
        self.settings = settings
        self.learners = learners
        self.topics = Topics(settings.kafka.topic_prefix)
        self.store = RolloutStore(migrated_engine(settings.database, settings.data_dir))
        self._life = Lifecycle("rollout")
        self._consumer: AIOKafkaConsumer | None = None
        self._producer = EventProducer(settings.kafka, topics=self.topics)
        self._redis = aioredis.Redis.from_url(settings.redis.url, decode_responses=False)
        self._positions: dict[tuple[str, int], int] = {}
        self.controller: RolloutController | None = None

    async def start(self) -> None:
        from workers.trainer.registry import ModelRegistry  # imports MLflow: only where it is needed

        await ensure_topics(self.settings.kafka, self.topics.all())
        await self._redis.ping()  # an unreachable Redis stops the worker here, in one line
        self.controller = RolloutController(
            store=self.store, aliases=ModelRegistry(self.settings.mlflow, self.settings.data_dir),
            learners=self.learners, config=self.settings.rollout, redis=self._redis,
            prefix=self.settings.redis.key_prefix, source=self.settings.source, metrics=RolloutMetrics(),
        )
        await asyncio.to_thread(self.controller.load)
        self._positions = await asyncio.to_thread(self.store.offsets)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            group_id=self.settings.rollout.group_id,
            client_id=f"{self.settings.kafka.client_id}-rollouts",
            enable_auto_commit=False,
            auto_offset_reset="latest",
            session_timeout_ms=self.settings.kafka.session_timeout_ms,
            heartbeat_interval_ms=self.settings.kafka.heartbeat_interval_ms,
            **self.settings.kafka.client_kwargs(),
        )
        await self._consumer.start()
        self._consumer.subscribe([self.topics.model_updates, self.topics.predictions, self.topics.feedback],
                                 listener=self)
        log.info("rollout controller started (group %s, %d active rollouts)", self.settings.rollout.group_id,
                 len(self.controller.active))

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        assert self._consumer is not None
        fresh = []
        for tp in assigned:
            saved = self._positions.get((tp.topic, tp.partition))
            if saved is None:
                fresh.append(tp)
            else:
                self._consumer.seek(tp, saved)
        if fresh:
            await self._consumer.seek_to_end(*fresh)
            for tp in fresh:
                self._positions[(tp.topic, tp.partition)] = await self._consumer.position(tp)
            # Saved at once: a rollout announced from now on is found again after a restart.
            await asyncio.to_thread(self.store.save, [], [], dict(self._positions), {})
        log.info("rollout controller reads %d partitions", len(assigned))

    def request_stop(self) -> None:
        self._life.request_stop()

    async def stop(self) -> None:
        self._life.request_stop()
        await self._life.wait_stopped()
        try:
            if self._consumer is not None:
                await self._consumer.stop()
        finally:
            await self._producer.stop()
            await self._redis.aclose()

    async def run(self) -> None:
        assert self._consumer is not None and self.controller is not None
        tick_s = self.settings.rollout.tick_s
        last = time.monotonic()
        with self._life.running():
            await self._loop(tick_s, last)

    async def _loop(self, tick_s: float, last: float) -> None:
        assert self._consumer is not None
        while not self._life.stopping:
            batch = await self._consumer.getmany(timeout_ms=min(200, int(tick_s * 1000)), max_records=2000)
            if batch:
                await self._handle(batch)
            if time.monotonic() - last >= tick_s:
                last = time.monotonic()
                await self._tick()

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        assert self.controller is not None
        updates: list[ModelUpdate] = []
        predictions: list[PredictionEvent] = []
        feedback: list[FeedbackEvent] = []
        for tp, records in batch.items():
            for rec in records:
                try:
                    ev = parse_event(rec.value)
                except InvalidEvent:
                    continue  # the feedback worker dead-letters what it cannot read; nothing to judge here
                if isinstance(ev, ModelUpdate):
                    updates.append(ev)
                elif isinstance(ev, PredictionEvent):
                    predictions.append(ev)
                elif isinstance(ev, FeedbackEvent):
                    feedback.append(ev)
            self._positions[(tp.topic, tp.partition)] = records[-1].offset + 1
        for u in updates:
            await asyncio.to_thread(self.controller.on_model_update, u)
        await self.controller.on_predictions(predictions)
        await self.controller.on_feedback(feedback)

    async def _tick(self) -> None:
        assert self.controller is not None and self._consumer is not None
        c = self.controller
        await asyncio.to_thread(c.tick)
        # Announce before saving: a kill in between replays the same records to the same decision.
        if c.outbox:
            await self._producer.send_many(list(c.outbox))
            await self._producer.flush()
        await asyncio.to_thread(self.store.save, list(c.changed.values()), list(c.decisions),
                                dict(self._positions), dict(c.done))
        c.saved()
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "") for (t, p), o in self._positions.items()}
        try:
            await self._consumer.commit(offsets)  # for lag tools only
        except Exception as exc:  # a rebalance in progress: the saved positions are what counts
            log.debug("commit for lag tools skipped: %r", exc)


def run_rollout_worker(settings: Settings, learners: LearnersConfig | None = None) -> None:
    learners = learners or settings.load_learners()
    loop = RolloutLoop(settings, learners)
    app = create_app(settings.kafka, app_id="learnloop-rollout-controller", data_dir=settings.data_dir / "faust")
    serve_metrics(settings.metrics.host, settings.metrics.port_for("rollouts"))
    run_faust(app, LoopService(loop), loglevel=settings.log_level)
