"""Restoring partitions from their snapshots: at assignment, and the rewind after an outage.

A mixin of :class:`streams.consumer.FeedbackConsumer`. A partition whose snapshot cannot be
restored (tampered, unreadable) stops the worker with one line that names it, and the reason
goes where lag views read progress.
"""

from __future__ import annotations

import logging

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from learners.snapshot import load_snapshot, read_snapshot_meta
from schemas.errors import SnapshotError, SnapshotSignatureError, StoreUnavailable
from streams.consumer_commit import SnapshotCommits
from streams.feedback import PartitionState
from streams.metrics import LearnedTally

log = logging.getLogger("streams.consumer")
OUTAGE = (TimeoutError, StoreUnavailable, KafkaError, OSError)  # rewind to the snapshots, retry with back-off


class PartitionRestore(SnapshotCommits):
    """Resume, rewind and fail partitions (attributes set by FeedbackConsumer)."""

    _learned: LearnedTally
    _dirty: bool  # in-memory state diverged from the snapshots after a failed step
    _unrestored: set[TopicPartition]  # assigned while Redis was away: _rewind restores them
    _failure: Exception | None  # a partition that cannot be restored: run() raises it

    async def _seek_reset(self, tp: TopicPartition) -> None:
        if self.config.auto_offset_reset == "earliest":
            await self.consumer.seek_to_beginning(tp)
        else:
            await self.consumer.seek_to_end(tp)

    async def _resume(self, tp: TopicPartition) -> None:
        """Restore ``tp`` from its snapshot and seek to where the snapshot ends."""
        state = await self._restore(tp)
        self.states[tp] = state
        self._unrestored.discard(tp)
        if state.offset >= 0:
            self.consumer.seek(tp, state.next_offset)
        else:
            await self._seek_reset(tp)

    async def _restore(self, tp: TopicPartition) -> PartitionState:
        await self.store.warm(tp.topic, tp.partition)
        blob = await self.store.load(tp.topic, tp.partition)
        if blob is None:
            self._learned.forget(tp.topic, tp.partition)
            return PartitionState(tp.topic, tp.partition)
        try:
            state, meta = load_snapshot(blob, key=self.snapshot_key)
            if not isinstance(state, PartitionState):
                raise SnapshotError(f"the snapshot holds {type(state).__name__}, not PartitionState")
        except SnapshotError as exc:
            where = f"cannot restore {tp.topic} partition {tp.partition}{_learners_named(blob)}"
            raise type(exc)(f"{where}: {exc}") from exc
        self._learned.restored(tp.topic, tp.partition, state.slots)
        self.metrics.snapshot_restored(tp.topic, tp.partition, meta.created_at)
        log.info(
            "restored %s:%d at offset %d (%d learners, %d events learned)",
            tp.topic, tp.partition, state.next_offset, len(state.slots), meta.n_seen,
        )
        return state

    async def _rewind(self) -> None:
        """Drop in-memory progress and resume every owned partition from its stored snapshot.

        Raises what fails, with the state still dirty: the loop retries it. A snapshot that cannot
        be restored any more stops the worker, as at assignment.
        """
        async with self._lock:
            for tp in [*self.states, *sorted(self._unrestored)]:
                try:
                    await self._resume(tp)
                except OUTAGE:
                    raise
                except Exception as exc:
                    await self._fail(tp, exc)
                    raise
            for tp in list(self._prediction_positions):
                committed = await self.consumer.committed(tp)
                if committed is not None:
                    self.consumer.seek(tp, committed)
                else:
                    await self._seek_reset(tp)
            self._prediction_positions.clear()
            self._pending_samples = []
            self._since_snapshot = 0
            self._dirty = False
            log.info("rewound %d partition(s) to their snapshots", len(self.states))

    async def _fail(self, tp: TopicPartition, exc: Exception) -> None:
        """``tp`` cannot be restored: run() raises ``exc``; the reason goes where lag views read progress."""
        if not isinstance(exc, SnapshotError):
            log.error("cannot restore %s partition %d: %r", tp.topic, tp.partition, exc)
        if self._failure is None:
            self._failure = exc
        reason = (
            "snapshot_signature" if isinstance(exc, SnapshotSignatureError)
            else "snapshot_unreadable" if isinstance(exc, SnapshotError) else "restore_failed"
        )
        try:
            committed = await self.consumer.committed(tp)
            await self.store.publish_failure(
                self.config.group_id, tp.topic, tp.partition,
                position=committed or 0, reason=reason, message=str(exc),
            )
        except OUTAGE as publish_exc:
            log.warning("could not record why %s:%d stopped (%s)", tp.topic, tp.partition, publish_exc)


def _learners_named(blob: bytes) -> str:
    """' (learner a, b)' from a snapshot's header, unverified and for messages only; '' when unreadable."""
    try:
        names = read_snapshot_meta(blob).extra.get("learners")
    except SnapshotError:
        return ""
    if not isinstance(names, list) or not names:
        return ""
    return f" (learner{'s' if len(names) > 1 else ''} {', '.join(str(n) for n in names)})"
