"""The high-volume feedback loop: aiokafka ``getmany`` batches, snapshots paired with offsets.

Faust's per-event stream machinery costs most of the budget on this path
(DESIGN.md, 'Measured'), so this loop owns its consumer and its offsets. The
source of truth for where a partition resumes is the offset stored *inside*
the learner snapshot in Redis, written atomically with the event ids it
accepted; Kafka's committed offset is written afterwards for lag tools only.
A worker killed at any point resumes from the last snapshot, replays the
records after it, and ends in the state of a run that was never killed.

Failures: an outage (Redis, the broker) marks the in-memory state dirty; the loop
then rewinds every owned partition to its snapshot before it reads again,
retrying with back-off until the rewind succeeds, and exits after
``max_outage_s`` of failures. A partition whose snapshot cannot be restored
(tampered, unreadable) stops the worker with one line that names it. The loop
never stays up with a partition it does not process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from schemas import Envelope
from schemas.errors import StoreUnavailable
from streams.config import FeedbackConfig, KafkaConfig
from streams.consumer_restore import OUTAGE, PartitionRestore
from streams.dedup import DedupCache
from streams.feedback import ConsumerStats, FeedbackProcessor, LearnedSample, PartitionState
from streams.lifecycle import Lifecycle
from streams.metrics import FeedbackMetrics, LearnedTally, feedback_metrics
from streams.partitioning import Forward
from streams.ports import SampleSink
from streams.producer import send_and_wait
from streams.publisher import ModelPublisher
from streams.topics import Topics

log = logging.getLogger(__name__)


class FeedbackConsumer(PartitionRestore, ConsumerRebalanceListener):  # type: ignore[misc]
    """Consumes feedback and predictions; hands batches to a :class:`FeedbackProcessor`."""

    def __init__(
        self,
        *,
        kafka: KafkaConfig,
        config: FeedbackConfig,
        processor: FeedbackProcessor,
        store: DedupCache,
        snapshot_key: bytes,
        topics: Topics | None = None,
        samples: SampleSink | None = None,
        metrics: FeedbackMetrics | None = None,
        publisher: ModelPublisher | None = None,
    ) -> None:
        self.kafka = kafka
        self.config = config
        self.processor = processor
        if processor.store is not store:
            raise ValueError("the processor must look duplicates up in the consumer's DedupCache (the local window)")
        if processor.collect_samples != (samples is not None):
            raise ValueError("the processor collects samples exactly when the consumer has a sample sink")
        self.store = store
        self.snapshot_key = snapshot_key
        self.topics = topics or Topics(kafka.topic_prefix)
        self.samples = samples
        self.publisher = publisher
        self._pending_samples: list[LearnedSample] = []
        self.states: dict[TopicPartition, PartitionState] = {}
        self.stats = ConsumerStats()
        self.metrics = metrics or feedback_metrics()
        self._learned = LearnedTally(self.metrics.events_learned)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._life = Lifecycle("feedback")
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self._last_progress = 0.0
        self._prediction_positions: dict[TopicPartition, int] = {}
        self._dirty = False  # in-memory state diverged from the snapshots after a failed step
        self._unrestored: set[TopicPartition] = set()  # assigned while Redis was away: _rewind restores them
        self._failure: Exception | None = None  # a partition that cannot be restored: run() raises it

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            client_id=f"{self.kafka.client_id}-feedback-out",
            acks="all",
            linger_ms=self.kafka.linger_ms,
            **self.kafka.client_kwargs(),
        )
        await self._producer.start()
        if self.publisher is not None:
            self.publisher.start(self._send)
        self._consumer = AIOKafkaConsumer(
            group_id=self.config.group_id,
            client_id=f"{self.kafka.client_id}-feedback",
            enable_auto_commit=False,
            auto_offset_reset=self.config.auto_offset_reset,
            session_timeout_ms=self.kafka.session_timeout_ms,
            heartbeat_interval_ms=self.kafka.heartbeat_interval_ms,
            max_partition_fetch_bytes=self.config.max_partition_fetch_bytes,
            fetch_max_wait_ms=self.config.fetch_max_wait_ms,
            **self.kafka.client_kwargs(),
        )
        await self._consumer.start()
        self._consumer.subscribe([self.topics.feedback, self.topics.predictions], listener=self)
        log.info("feedback consumer started (group %s)", self.config.group_id)

    def request_stop(self) -> None:
        self._life.request_stop()

    async def stop(self) -> None:
        """Let run() finish its batch, snapshot every owned partition, then leave the group."""
        self._life.request_stop()
        await self._life.wait_stopped()
        async with self._lock:
            if self._consumer is not None and self.states and not self._dirty:
                try:
                    await self._commit_all()
                except OUTAGE as exc:
                    log.error("final snapshot skipped (%s); the next owner resumes from the last one", exc)
                else:
                    self._capture_models(after_snapshot=True)
        if self.publisher is not None:
            await self.publisher.stop()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        log.info("feedback consumer stopped")

    # -- rebalance -------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self._lock:
            mine = [tp for tp in revoked if tp in self.states]
            self._unrestored.difference_update(revoked)
            try:
                if mine and not self._dirty:
                    await self._flush_samples()
                for tp in mine if not self._dirty else []:
                    await self._commit_partition(tp)
            except OUTAGE as exc:
                # aiokafka would swallow this and the partitions would stay in self.states, snapshotted
                # later over their new owner's. Released all the same: the new owner resumes from the
                # last snapshot; what stays here is rewound to its own.
                log.error("snapshot on release failed (%s); the new owner resumes from the last snapshot", exc)
                self._dirty = True
            for tp in mine:
                del self.states[tp]
                self.store.forget(tp.topic, tp.partition)
                self._learned.forget(tp.topic, tp.partition)
                self.metrics.forget_partition(tp.topic, tp.partition)
            await self._commit_predictions()
            for tp in revoked:
                self._prediction_positions.pop(tp, None)
            if mine:
                log.info("released partitions %s", sorted(tp.partition for tp in mine))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        # aiokafka logs and swallows what a listener raises, leaving the partition assigned and unread.
        # So nothing escapes: an outage leaves the partition to _rewind, anything else stops the worker.
        async with self._lock:
            for tp in assigned:
                if tp.topic != self.topics.feedback:
                    continue
                try:
                    await self._resume(tp)
                except OUTAGE as exc:
                    log.error("cannot restore %s:%d yet (%s); retrying", tp.topic, tp.partition, exc)
                    self._unrestored.add(tp)
                    self._dirty = True
                except Exception as exc:
                    await self._fail(tp, exc)
            if assigned:
                log.info("assigned %s", ", ".join(f"{tp.topic}:{tp.partition}" for tp in sorted(assigned)))

    # -- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Consume until asked to stop. Infrastructure failures rewind to the last snapshot and retry."""
        with self._life.running():
            await self._run()

    async def _run(self) -> None:
        delay, failing_since, resumed_at = 0.5, None, 0.0
        while not self._life.stopping:
            if self._failure is not None:
                raise self._failure
            try:
                if self._dirty:  # before reading on: a rewind that failed is retried here until it succeeds
                    await self._rewind()
                batch = await self.consumer.getmany(
                    timeout_ms=self.config.batch_timeout_ms, max_records=self.config.batch_max_records
                )
                # Shielded: a cancellation (shutdown) never leaves a half-applied batch behind;
                # stop() waits on the lock the step holds.
                await asyncio.shield(asyncio.ensure_future(self._step(batch)))
                await self._maybe_publish_progress()
                if failing_since is not None and self._recovered(resumed_at):
                    delay, failing_since = 0.5, None
            except OUTAGE as exc:
                self._dirty = True
                if self._life.stopping:
                    break  # stop() snapshots nothing while dirty; the next owner resumes from the last snapshot
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                left = self.config.max_outage_s - (now - failing_since)
                if left <= 0:
                    raise StoreUnavailable(
                        f"{exc}; still failing after {now - failing_since:.0f}s (LEARNLOOP_FEEDBACK__MAX_OUTAGE_S="
                        f"{self.config.max_outage_s:g}): exiting, a restart resumes from the last snapshot"
                    ) from exc
                log.error("%s; pausing %.1fs, then resuming from the last snapshot (nothing is lost)", exc, delay)
                await self._life.pause(min(delay, left))
                delay = min(delay * 2, 30.0)
                resumed_at = time.monotonic()

    def _recovered(self, resumed_at: float) -> bool:
        """Whether an outage is over: a batch going through is not enough when reads work and writes fail.

        Over once a snapshot was committed since the loop resumed, or once it ran a snapshot interval
        without failing: anything consumed meanwhile would have been snapshotted at once (the last
        snapshot is older than the interval), so there was nothing to write.
        """
        return self._last_snapshot > resumed_at or time.monotonic() - resumed_at >= self.config.snapshot_every_s

    async def _step(self, batch: dict[TopicPartition, list[Any]]) -> None:
        async with self._lock:
            if self._dirty:
                return  # an earlier step failed; _rewind must run first
            t0 = time.perf_counter()
            try:
                await self._handle(batch)
                snapshots = self.stats.snapshots
                await self._maybe_commit(idle=not any(batch.values()))
            except BaseException:
                self._dirty = True
                raise
            self._capture_models(after_snapshot=self.stats.snapshots != snapshots)
            self.stats.last_batch_s = time.perf_counter() - t0
            if batch:
                self.metrics.batch_seconds.labels("feedback").observe(self.stats.last_batch_s)

    def _capture_models(self, *, after_snapshot: bool) -> None:
        """Hand changed learners to the publisher (it pickles them here, between batches, and sends later)."""
        if self.publisher is not None:
            self.publisher.capture(self.states.values(), after_snapshot=after_snapshot, partitions=self._partitions())

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        outputs: list[Envelope] = []
        forwards: list[Forward] = []
        # Predictions first, so feedback in the same batch can join to them.
        for tp, records in batch.items():
            if tp.topic == self.topics.predictions and records:
                r = await self.processor.store_predictions(records)
                self.stats.add(r)
                self.metrics.record_batch(tp.topic, len(records), r)
                outputs.extend(r.outputs)
                self._prediction_positions[tp] = records[-1].offset + 1
                self.stats.records += len(records)
        learning, t0 = 0, time.perf_counter()
        for tp, records in batch.items():
            if tp.topic != self.topics.feedback or not records:
                continue
            state = self.states.get(tp)
            if state is None:
                continue  # revoked while the fetch was in flight: its new owner will read it
            partitions = self._partitions()
            if partitions is None:  # not while partitions of the topic are assigned; an owner is never guessed
                raise KafkaError(f"no metadata for {tp.topic}: cannot tell which partition owns a learner")
            r = await self.processor.process(state, records, partitions=partitions)
            self._pending_samples.extend(r.samples)
            self.stats.add(r)
            self.metrics.record_batch(tp.topic, len(records), r)
            outputs.extend(r.outputs)
            forwards.extend(r.forwards)
            self.stats.records += len(records)
            self._since_snapshot += len(records)
            learning += len(records)
        if learning:
            self.metrics.learn_seconds.observe((time.perf_counter() - t0) / learning)
        for tp, state in self.states.items():
            if state.pending and not batch.get(tp):  # a processed partition has just looked its waiters up
                r = await self.processor.poll_pending(state)
                self._pending_samples.extend(r.samples)
                self.stats.add(r)
                self.metrics.record_batch(tp.topic, 0, r)
                outputs.extend(r.outputs)
            self._learned.update(tp.topic, tp.partition, state.slots)
        if batch:
            self.stats.batches += 1
        await self._forward(forwards)
        await self._send(outputs)

    async def _forward(self, forwards: list[Forward]) -> None:
        """Send records on to their learners' owner partitions and wait for the acks, like derived events.

        A forward sent again after a crash (its source offset not yet snapshotted) carries the same
        event_id, and the owner's dedup drops it.
        """
        if forwards:
            assert self._producer is not None
            sent = [
                await self._producer.send(f.topic, f.value, f.key, partition=f.partition, headers=list(f.headers))
                for f in forwards
            ]
            await asyncio.gather(*sent)

    async def _send(self, events: list[Envelope]) -> None:
        """Send derived events and wait for the acks: a snapshot never covers an unsent output."""
        if events:
            assert self._producer is not None
            await send_and_wait(self._producer, events, self.topics)

    async def _maybe_publish_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress < 0.5:
            return
        self._last_progress = now
        for tp, state in list(self.states.items()):
            hw = self.consumer.highwater(tp)
            await self.store.publish_progress(
                self.config.group_id, tp.topic, tp.partition,
                position=state.next_offset, highwater=hw, counters=state.counters,
            )


