"""Events the loops derive from what they consume: dead letters, drift alarms, retrain requests.

Their ids are uuid5 of their cause, so a replay after a crash re-emits the
same ids and consumers dedup.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from learners.monitors import DriftSignal
from learners.online import OnlineLearner
from learners.retrain_policy import RetrainGate
from schemas import DataWindow, DeadLetter, DriftEvent, DriftEventV2, Envelope, RetrainRequest, WindowStats
from streams.ports import RecordLike

log = logging.getLogger(__name__)

_NS = uuid.UUID("6f1c9a52-3b7e-4c1d-9a0e-2f4b8d7c6e15")


def derived_id(*parts: object) -> uuid.UUID:
    """Deterministic event id for an event caused by ``parts``.

    >>> derived_id("drift", "sea", 100) == derived_id("drift", "sea", 100)
    True
    """
    return uuid.uuid5(_NS, ":".join(str(p) for p in parts))


@dataclass(frozen=True)
class RawRecord:
    """The bytes and coordinates of a consumed record, kept for dead-lettering."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, r: RecordLike) -> RawRecord:
        return cls(r.topic, r.partition, r.offset, r.key, r.value)


def dead_letter(rec: RecordLike, error: BaseException, *, source: str, reason: str | None = None) -> DeadLetter:
    """The dead letter of ``rec`` (its bytes, topic/partition/offset and the error), id derived from its offset."""
    dl = DeadLetter.from_record(
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key=rec.key,
        value=rec.value,
        error=error,
        source=source,
        reason=reason,
    )
    return dl.model_copy(update={"event_id": derived_id("deadletter", rec.topic, rec.partition, rec.offset)})


def drift_events(learner: OnlineLearner, d: Any, *, source: str, gate: RetrainGate | None = None,
                 now: float = 0.0) -> list[Envelope]:
    """The ``DriftEvent`` of one drift alarm (``d``: the learner's drift outcome), and its ``RetrainRequest``
    when ``gate`` (the learner's retrain policy) lets it ask.

    Only a learner whose spec names a ``retrain_model`` asks for a retrain: for any
    other there is no model to rebuild, and a request would only become a failed job.
    """
    drift = DriftEvent(
        event_id=derived_id("drift", learner.name, d.n_seen),
        source=source,
        learner=learner.name,
        detector=d.detector,
        metric=d.metric,
        n_seen=d.n_seen,
        before=WindowStats(n=d.before_n, mean=d.before_mean),
        after=WindowStats(n=d.after_n, mean=d.after_mean),
        detected_at=datetime.now(UTC),
        delta=d.delta,
    )
    log.warning(
        "drift in learner %s at event %d: error %.3f -> %.3f", learner.name, d.n_seen, d.before_mean, d.after_mean
    )
    if learner.spec.retrain_model is None:
        return [drift]
    if gate is not None and gate.on_drift("error", n_seen=d.n_seen, now=now) is None:
        return [drift]
    return [drift, retrain_request(learner, "drift", d.n_seen, source=source, drift_event_id=drift.event_id)]


def retrain_request(
    learner: OnlineLearner,
    reason: str,
    n_seen: int,
    *,
    source: str,
    drift_event_id: uuid.UUID | None = None,
    kind: str = "error",
) -> RetrainRequest:
    """The request to rebuild ``learner``'s retrain model, saying why (drift of ``kind``, schedule, volume)."""
    model = learner.spec.retrain_model
    assert model is not None, "only a learner with a retrain_model asks for a retrain"
    # An error drift's request keeps the id it always had; the others name their reason and kind.
    cause = (learner.name, n_seen) if (reason, kind) == ("drift", "error") else (learner.name, reason, kind, n_seen)
    return RetrainRequest(
        event_id=derived_id("retrain", *cause),
        request_id=derived_id("retrain-request", *cause),
        source=source,
        model=model,
        reason=reason,  # type: ignore[arg-type]  # the gate answers only drift, schedule or volume
        learner=learner.name,
        drift_event_id=drift_event_id,
        window=DataWindow(),  # the trainer takes the newest samples when the job starts
    )


def monitor_drift_event(learner: str, signal: DriftSignal, *, source: str) -> DriftEventV2:
    """The drift/2 event of a drift an input, prediction or estimate monitor accepted.

    It asks for no retrain: whether one follows is the learner's retrain policy's decision.

    >>> s = DriftSignal(detector="psi", kind="input", feature="age", n_seen=2000, statistic=0.4, threshold=0.25,
    ...                 before={"n": 500.0, "mean": 40.0}, after={"n": 500.0, "mean": 55.0})
    >>> ev = monitor_drift_event("ctr", s, source="feedback-agent")
    >>> ev.SCHEMA_ID, ev.kind, ev.feature, ev.event_id == monitor_drift_event("ctr", s, source="x").event_id
    ('drift/2', 'input', 'age', True)
    """
    log.warning(
        "%s drift in learner %s at event %d (%s%s): %s %.3f > %.3f",
        signal.kind,
        learner,
        signal.n_seen,
        signal.detector,
        f", {signal.feature}" if signal.feature else "",
        signal.detector,
        signal.statistic,
        signal.threshold,
    )
    return DriftEventV2(
        event_id=derived_id("drift/2", learner, signal.kind, signal.detector, signal.feature,
                            signal.model_version, signal.n_seen),
        source=source,
        learner=learner,
        kind=signal.kind,
        detector=signal.detector,
        feature=signal.feature,
        model_version=signal.model_version,
        n_seen=signal.n_seen,
        statistic=signal.statistic,
        threshold=signal.threshold,
        before=signal.before,
        after=signal.after,
        detected_at=datetime.now(UTC),
    )
