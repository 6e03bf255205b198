"""The snapshot-commit path of the feedback loop: each owned partition's state, then the offsets.

A mixin of :class:`streams.consumer.FeedbackConsumer`, kept apart so that the loop reads on its own.
The snapshot in Redis, written atomically with the event ids it accepted, is where a partition
resumes; Kafka's committed offset is written afterwards, for lag tools and prediction replay.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from learners.snapshot import dump_snapshot
from streams.config import FeedbackConfig
from streams.dedup import DedupCache
from streams.feedback import ConsumerStats, LearnedSample, PartitionState
from streams.metrics import FeedbackMetrics
from streams.ports import SampleSink
from streams.topics import Topics

log = logging.getLogger("streams.consumer")


class SnapshotCommits:
    """When and how the feedback loop snapshots its partitions (attributes set by FeedbackConsumer)."""

    config: FeedbackConfig
    store: DedupCache
    snapshot_key: bytes
    topics: Topics
    samples: SampleSink | None
    states: dict[TopicPartition, PartitionState]
    stats: ConsumerStats
    metrics: FeedbackMetrics
    _consumer: AIOKafkaConsumer | None
    _lock: asyncio.Lock
    _pending_samples: list[LearnedSample]
    _prediction_positions: dict[TopicPartition, int]
    _since_snapshot: int
    _last_snapshot: float

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "start() first"
        return self._consumer

    def _partitions(self) -> int | None:
        """The feedback topic's partition count, which decides each learner's owner partition."""
        parts = self.consumer.partitions_for_topic(self.topics.feedback)
        return len(parts) if parts else None

    async def _maybe_commit(self, *, idle: bool = False) -> None:
        """Snapshot every ``snapshot_every_events`` or ``snapshot_every_s``, and when the input runs dry.

        The idle case (an empty poll, the last snapshot at least ``snapshot_idle_s`` old) makes a
        burst durable, and visible to status readers, soon after its last record instead of up to
        ``snapshot_every_s`` later. Under steady load a poll is rarely empty.
        """
        pending = self._since_snapshot or self._prediction_positions
        age = time.monotonic() - self._last_snapshot
        due_events = self._since_snapshot >= self.config.snapshot_every_events
        due_time = age >= self.config.snapshot_every_s or (idle and age >= self.config.snapshot_idle_s)
        if due_events or (pending and due_time):
            await self._commit_all()

    async def _commit_all(self) -> None:
        await self._flush_samples()
        for tp in list(self.states):
            await self._commit_partition(tp)
        await self._commit_predictions()
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()

    async def _flush_samples(self) -> None:
        # Before any snapshot covers them: a crash in between replays them, and the sink dedups.
        if self.samples is not None and self._pending_samples:
            await self.samples.add_samples(self._pending_samples)
        self._pending_samples = []

    async def _commit_partition(self, tp: TopicPartition) -> None:
        state = self.states[tp]
        if state.offset < 0 and not state.slots:
            return
        ids, state.uncommitted_ids = state.uncommitted_ids, []
        try:
            n_seen = sum(s.learner.n_seen for s in state.slots.values())
            statuses = state.statuses(self._partitions())
            blob = dump_snapshot(
                state,
                key=self.snapshot_key,
                n_seen=n_seen,
                offsets={f"{tp.topic}:{tp.partition}": state.next_offset},
                # The learners' names, readable without the key: a snapshot that fails to load is named by them.
                extra={"counters": dict(state.counters), "learners": sorted(state.slots)},
            )
            await self.store.commit(
                tp.topic,
                tp.partition,
                snapshot=blob,
                offset=state.next_offset,
                event_ids=ids,
                statuses=statuses,
            )
        except BaseException:
            state.uncommitted_ids = ids + state.uncommitted_ids
            raise
        self.stats.snapshots += 1
        self.metrics.snapshot_written(tp.topic, tp.partition, statuses)
        await self._kafka_commit({tp: state.next_offset})

    async def _commit_predictions(self) -> None:
        if self._prediction_positions:
            await self._kafka_commit(dict(self._prediction_positions))
            self._prediction_positions.clear()

    async def _kafka_commit(self, offsets: dict[TopicPartition, int]) -> None:
        # For lag tools and prediction replay; the snapshot already made the state durable.
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            log.info("kafka offset commit skipped (%s); the snapshot holds the position", exc)
