"""The feedback pipeline: decode → validate → dedup → join → learn, one partition batch at a time.

Plain asyncio code over the ports in ``streams.ports``; the Kafka loop that feeds
it lives in ``streams.consumer``. Everything a crash must not lose or repeat —
the learners, the offset they cover, counters, feedback waiting for its
prediction — lives in :class:`PartitionState`, which is snapshotted whole.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from learners.config import LearnersConfig, LearnerSpec
from learners.labels import Target, resolve_target
from learners.models import with_text
from learners.monitors.inputs import InputDriftMonitor
from learners.monitors.served import ServedMonitors, monitors_status
from learners.online import OnlineLearner
from learners.retrain_policy import RetrainGate
from schemas import DeadLetter, DriftEvent, DriftEventV2, FeedbackEvent, PredictionEvent, parse_event, rfc3339
from schemas.errors import InvalidEvent
from streams.derived import RawRecord, dead_letter, drift_events, retrain_request
from streams.feedback_results import BatchResult, ConsumerStats, LearnedSample
from streams.monitoring import ServedWatch, watch_learned
from streams.partitioning import forward, owner_partition
from streams.ports import JoinStore, PartitionStateStore, RecordLike

# RawRecord stays importable from here: snapshots pickled with waiting feedback name it by this module.
# The result types moved to streams.feedback_results and stay importable from here too.
__all__ = ["BatchResult", "ConsumerStats", "FeedbackProcessor", "LearnedSample", "PartitionState", "RawRecord"]

log = logging.getLogger(__name__)


@dataclass
class PendingFeedback:
    """Feedback whose prediction has not arrived yet."""

    event: FeedbackEvent
    record: RawRecord
    deadline: float  # wall clock (time.time()) after which it is dead-lettered as orphaned


@dataclass
class LearnerSlot:
    learner: OnlineLearner
    last_event_at: datetime | None = None  # event time of the newest learned event
    learned_at: float | None = None  # wall clock of the last learn
    # when the last drift was detected; older snapshots lack it and read the class default, None
    last_drift_at: datetime | None = None
    gate: RetrainGate | None = None  # the retrain policy's state, for a learner with a retrain_model
    inputs: InputDriftMonitor | None = None  # [learners.X.input_drift]
    served: ServedMonitors | None = None  # prediction drift and the estimate, shared with the ServedWatch


@dataclass
class PartitionState:
    """Everything one feedback partition's processing depends on; pickled into the snapshot."""

    topic: str
    partition: int
    offset: int = -1  # last offset processed; the consumer resumes at offset + 1
    slots: dict[str, LearnerSlot] = field(default_factory=dict)
    pending: list[PendingFeedback] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    # ids accepted since the last commit; they join the Redis window at commit time
    uncommitted_ids: list[str] = field(default_factory=list)

    @property
    def next_offset(self) -> int:
        return self.offset + 1

    def statuses(self, partitions: int | None = None) -> dict[str, dict[str, Any]]:
        """Each learner's status; with the topic's partition count, also the partition that owns it."""
        out: dict[str, dict[str, Any]] = {}
        for name, slot in self.slots.items():
            st = slot.learner.status()
            # Times in RFC 3339 UTC, as in every JSON output; the last drift as a position and a time.
            st["last_event_at"] = rfc3339(slot.last_event_at)
            st["learned_at"] = rfc3339(slot.learned_at)
            st["last_drift_n"] = (st.get("last_drift") or {}).get("n_seen")
            st["last_drift_at"] = rfc3339(slot.last_drift_at)
            st["partition"] = self.partition
            st["topic"] = self.topic
            st["offset"] = self.offset
            st["owner_partition"] = owner_partition(name, partitions) if partitions else None
            if slot.gate is not None:
                st["retrain_gate"] = slot.gate.status()
            if slot.inputs is not None or slot.served is not None:
                st["monitors"] = monitors_status(slot.inputs, slot.served)
            out[name] = st
        return out


class FeedbackProcessor:
    """Turns batches of feedback records into learning, drift events and dead letters."""

    CHUNK = 256

    def __init__(
        self,
        *,
        learners: LearnersConfig,
        store: PartitionStateStore,
        joins: JoinStore,
        source: str,
        join_ttl_s: int = 86_400,
        orphan_wait_s: float = 60.0,
        orphan_max: int = 50_000,
        clock: Any = time.time,
        collect_samples: bool = True,
    ) -> None:
        self.learners = learners
        self.store = store
        self.joins = joins
        self.source = source
        self.join_ttl_s = join_ttl_s
        self.orphan_wait_s = orphan_wait_s
        self.orphan_max = orphan_max
        self.clock = clock
        self.collect_samples = collect_samples  # off when nothing stores samples: no LearnedSample is built
        self._recent: dict[tuple[str, int], tuple[list[str], set[str]]] = {}
        self._served = ServedWatch(learners, source)

    # -- dead letters --------------------------------------------------------

    def dead_letter(self, rec: RecordLike, error: BaseException, reason: str | None = None) -> DeadLetter:
        return dead_letter(rec, error, source=self.source, reason=reason)

    # -- predictions -----------------------------------------------------------

    async def store_predictions(self, records: Sequence[RecordLike]) -> BatchResult:
        """Keep each prediction's features for the later label (idempotent: keyed by prediction_id)."""
        result = BatchResult()
        rows: dict[str, bytes] = {}
        for r in records:
            raw = RawRecord.of(r)
            try:
                ev = parse_event(raw.value or b"", PredictionEvent)
            except InvalidEvent as exc:
                result.add_deadletter(self.dead_letter(raw, exc))
                continue
            assert isinstance(ev, PredictionEvent)
            rows[ev.prediction_id] = ev.to_json()
            if self._served.any:
                drifts = self._served.prediction(ev)
                result.drifts += len(drifts)
                result.outputs.extend(drifts)
        if rows:
            await self.joins.put_predictions(list(rows.items()), ttl_s=self.join_ttl_s)
        return result

    # -- feedback --------------------------------------------------------------

    async def process(
        self, state: PartitionState, records: Sequence[RecordLike], *, partitions: int | None = None
    ) -> BatchResult:
        """Process records of one partition, in offset order, updating ``state`` in place.

        ``partitions`` is the topic's partition count: a valid event whose learner another
        partition owns (:func:`~streams.partitioning.owner_partition`) is not learned here but
        returned in ``forwards``, so that one learner stays one model whatever partitioner its
        producer used; what its bytes and the learners file decide (schema, learner, label) is
        dead-lettered here. Without it every learner is learned where its records arrive.

        In chunks of ``CHUNK`` records: a decoded event then lives for a few hundred
        events, not a whole fetch, so it dies young instead of being promoted into
        the old generation, whose full collections walk the whole heap (they cost
        about a quarter of the loop when whole batches were decoded up front).
        """
        result = BatchResult()
        for i in range(0, len(records), self.CHUNK):
            await self._process_chunk(state, records[i : i + self.CHUNK], result, first=i == 0, partitions=partitions)
        self._expire_orphans(state, result)
        self._tally(state, result)
        return result

    async def _process_chunk(
        self, state: PartitionState, records: Sequence[RecordLike], result: BatchResult, *, first: bool,
        partitions: int | None,
    ) -> None:
        decoded: list[tuple[RecordLike, FeedbackEvent]] = []
        for r in records:
            if r.offset <= state.offset:
                continue  # already covered by the snapshot (a re-fetch after seek)
            state.offset = r.offset
            state.counters["in"] += 1
            try:
                ev = parse_event(r.value or b"", FeedbackEvent)
            except InvalidEvent as exc:
                result.add_deadletter(self.dead_letter(r, exc))
                continue
            assert isinstance(ev, FeedbackEvent)
            if partitions and (owner := owner_partition(ev.learner, partitions)) != state.partition:
                try:  # what the event and the learners file alone decide fails here, where it arrived
                    self._target(ev, self.learners.resolve(ev.learner))
                except InvalidEvent as exc:
                    result.add_deadletter(self.dead_letter(r, exc))
                    continue
                result.forwards.append(forward(r, learner=ev.learner, owner=owner))  # the owner dedups and joins
                continue
            decoded.append((r, ev))

        fresh = await self._drop_duplicates(state, decoded, result)

        ready: list[tuple[RecordLike, FeedbackEvent]] = []
        waiting: list[tuple[RecordLike, FeedbackEvent]] = []
        for raw, ev in fresh:
            (waiting if ev.needs_join else ready).append((raw, ev))
        now = self.clock()
        added = [PendingFeedback(ev, RawRecord.of(r), now + self.orphan_wait_s) for r, ev in waiting]
        state.pending.extend(added)
        # Joined feedback is learned in the order its prediction became available. The batch's
        # predictions are all stored before it is processed, so what waited before the batch is
        # looked up once (first chunk) and later chunks look up only what they added.
        candidates = state.pending if first else added
        if candidates:
            ready = await self._release_joined(state, result, candidates) + ready

        for raw, ev in ready:
            self._learn(state, raw, ev, result)

    async def poll_pending(self, state: PartitionState) -> BatchResult:
        """Retry the join for waiting feedback and expire the overdue (called when idle too)."""
        result = BatchResult()
        if state.pending:
            for raw, ev in await self._release_joined(state, result, state.pending):
                self._learn(state, raw, ev, result)
            self._expire_orphans(state, result)
            self._tally(state, result)
        return result

    async def _drop_duplicates(
        self,
        state: PartitionState,
        decoded: list[tuple[RecordLike, FeedbackEvent]],
        result: BatchResult,
    ) -> list[tuple[RecordLike, FeedbackEvent]]:
        if not decoded:
            return []
        recent = self._recent_ids(state)
        ids = [str(ev.event_id) for _, ev in decoded]
        to_ask = [i for i in dict.fromkeys(ids) if i not in recent]
        known = dict(zip(to_ask, await self.store.seen(state.topic, state.partition, to_ask), strict=True))
        fresh = []
        for (raw, ev), eid in zip(decoded, ids, strict=True):
            if eid in recent or known.get(eid):
                result.duplicates += 1
                continue
            recent.add(eid)
            state.uncommitted_ids.append(eid)
            fresh.append((raw, ev))
        return fresh

    def _recent_ids(self, state: PartitionState) -> set[str]:
        """``state.uncommitted_ids`` as a set, kept from chunk to chunk and batch to batch.

        Rebuilding it for every chunk cost a copy of up to a snapshot's worth of ids each time. It is
        rebuilt only when the list was replaced (a commit takes it, a failed commit gives it back).
        """
        key = (state.topic, state.partition)
        ids, cached = state.uncommitted_ids, self._recent.get(key)
        if cached is None or cached[0] is not ids or len(cached[1]) != len(ids):
            cached = self._recent[key] = (ids, set(ids))
        return cached[1]

    async def _release_joined(
        self, state: PartitionState, result: BatchResult, candidates: Sequence[PendingFeedback]
    ) -> list[tuple[RecordLike, FeedbackEvent]]:
        """Join the ``candidates`` (some of ``state.pending``) whose prediction is stored; they leave ``pending``."""
        ids = [p.event.prediction_id or "" for p in candidates]
        found = await self.joins.get_predictions(ids)
        released: list[tuple[RecordLike, FeedbackEvent]] = []
        done: set[int] = set()
        for p, blob in zip(candidates, found, strict=True):
            if blob is None:
                continue
            done.add(id(p))
            try:
                pred = parse_event(blob, PredictionEvent)
            except InvalidEvent as exc:  # the store only holds validated events; be loud if not
                result.add_deadletter(self.dead_letter(p.record, exc, "join_corrupt"))
                continue
            assert isinstance(pred, PredictionEvent)
            if pred.learner != p.event.learner:
                err = InvalidEvent(
                    f"prediction {pred.prediction_id!r} belongs to learner {pred.learner!r}, "
                    f"feedback names {p.event.learner!r}",
                    reason="join_mismatch",
                )
                result.add_deadletter(self.dead_letter(p.record, err))
                continue
            joined = p.event.model_copy(update={"features": pred.features, "text": pred.text})
            released.append((p.record, joined))
            state.counters["joined"] += 1
        if done:
            state.pending = [p for p in state.pending if id(p) not in done]
        return released

    def _expire_orphans(self, state: PartitionState, result: BatchResult) -> None:
        if not state.pending:
            return
        now = self.clock()
        overflow = max(0, len(state.pending) - self.orphan_max)
        keep: list[PendingFeedback] = []
        for i, p in enumerate(state.pending):
            if i < overflow or p.deadline <= now:
                why = "waited too long" if p.deadline <= now else "too many orphans waiting"
                err = InvalidEvent(
                    f"no prediction {p.event.prediction_id!r} arrived for this feedback ({why})",
                    reason="orphaned",
                )
                result.add_deadletter(self.dead_letter(p.record, err))
            else:
                keep.append(p)
        state.pending = keep

    def _learn(self, state: PartitionState, raw: RecordLike, ev: FeedbackEvent, result: BatchResult) -> None:
        slot = state.slots.get(ev.learner)
        try:
            spec: LearnerSpec = slot.learner.spec if slot is not None else self.learners.resolve(ev.learner)
            target = self._target(ev, spec)
        except InvalidEvent as exc:
            result.add_deadletter(self.dead_letter(raw, exc))
            return
        learner = slot.learner if slot is not None else OnlineLearner(ev.learner, spec)
        try:
            features = with_text(ev.features, ev.text)
            outcome = learner.learn_one(features, target)
        except InvalidEvent as exc:  # a feature the model cannot read; nothing was learned
            result.add_deadletter(self.dead_letter(raw, exc))
            return
        if slot is None:
            # Created by the first event it learns: a record that cannot be learned leaves no empty model
            # whose status would stand beside (or in front of) the real one.
            slot = state.slots[ev.learner] = LearnerSlot(learner)
        slot.last_event_at = ev.occurred_at
        slot.learned_at = self.clock()
        result.learned += 1
        # Only a learner with a heavy model to rebuild needs its samples kept for fine-tuning.
        if self.collect_samples and spec.retrain_model:
            result.samples.append(
                LearnedSample(
                    event_id=str(ev.event_id), learner=ev.learner, subject_id=ev.subject_id, text=ev.text,
                    features=dict(ev.features) if ev.features else None, label=target.y, weight=target.weight,
                    channel=ev.channel, source=ev.source, occurred_at=ev.occurred_at,
                )
            )
        gate = slot.gate
        if spec.retrain_model and gate is None:
            gate = slot.gate = RetrainGate(spec.retrain_policy)
        if outcome.drift is not None:
            result.drifts += 1
            derived = drift_events(learner, outcome.drift, source=self.source, gate=gate, now=self.clock())
            slot.last_drift_at = next(e.detected_at for e in derived if isinstance(e, DriftEvent))
            result.outputs.extend(derived)
        if spec.input_drift is not None or self._served.any:
            self._watch(slot, spec, ev, features, target, gate, result)
        if gate is not None:
            gate.labelled()
            reason = gate.due(n_seen=outcome.n_seen, now=self.clock())
            if reason is not None:
                result.outputs.append(retrain_request(learner, reason, outcome.n_seen, source=self.source))

    def _watch(
        self, slot: LearnerSlot, spec: LearnerSpec, ev: FeedbackEvent, features: dict[str, Any], target: Target,
        gate: RetrainGate | None, result: BatchResult,
    ) -> None:
        """Feed the learner's input monitor and the estimate of its served prediction (configured learners only)."""
        if spec.input_drift is not None and slot.inputs is None:
            slot.inputs = spec.input_drift.build()
        slot.served = self._served.adopt(ev.learner, slot.served, spec)
        derived = watch_learned(
            slot.learner, slot.inputs, slot.served, features, ev.prediction_id, target.y, gate, self.clock(),
            self.source,
        )
        if derived:
            result.drifts += sum(1 for e in derived if isinstance(e, DriftEventV2))
            result.outputs.extend(derived)

    @staticmethod
    def _target(ev: FeedbackEvent, spec: LearnerSpec) -> Target:
        return resolve_target(
            task=spec.task, spec=spec.labels, label=ev.label, rating=ev.rating, signal=ev.signal,
            signal_value=ev.signal_value,
        )  # fmt: skip

    @staticmethod
    def _tally(state: PartitionState, result: BatchResult) -> None:
        state.counters["learned"] += result.learned
        state.counters["duplicates"] += result.duplicates
        state.counters["drifts"] += result.drifts
        state.counters["forwarded"] += len(result.forwards)
        for reason, n in result.deadlettered.items():
            state.counters[f"deadletter:{reason}"] += n

