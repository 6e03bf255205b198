"""Training jobs in SQL: coalesced retrain requests, claimed by one trainer at a time.

Life of a job::

    request() ──▶ queued ──claim_next()──▶ running ──succeed()──▶ succeeded
                    ▲  │                     │ │ └──fail()─────▶ failed
                    │  └──reject()──────────┐│ └──reject()─────▶ rejected
                    └──recover_stale()──────┘└──recover_stale()─▶ failed (attempts used up)
    queued or running ──cancel()──▶ cancelled (the trainer's next heartbeat is refused: it stops, registers nothing)

A burst of requests for one model becomes one job: while a job for the model
is queued, new requests join it (their ids, drift events, learners and data
windows are merged); once it runs, the next request queues a new job that
will see the newer data. At most one job per model is queued (a partial
unique index guards this against concurrent writers), and a request id is
recorded once, so a redelivered request changes nothing.

A trainer that dies leaves its job ``running`` with a heartbeat that stops;
``recover_stale`` requeues it, or fails it once its attempts are used up.
Transitions are guarded in SQL (``UPDATE ... WHERE status IN (...)``), and
with ``worker_id`` given, only the job's current holder can move it: a
trainer that lost its job to recovery gets ``JobStateError`` from its next
``heartbeat`` and must stop before registering anything. A trainer promotes
a model only after ``succeed`` returned.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from schemas import DataWindow, RetrainRequest
from schemas.envelope import rfc3339, utc_now
from schemas.errors import LearnloopError
from workers.store.engine import available, writer
from workers.store.models import JOB_STATUSES, JobRequest, TrainingJob, TrainingOutcome

__all__ = [
    "DATASET_INVALID_PREFIX", "HANDED_ON", "JobNotFound", "JobStateError", "JobStore", "TrainingJob",
    "TrainingOutcome", "job_as_dict", "job_outcome", "job_window", "merge_windows",
]

T = TypeVar("T")
_CONFLICT_RETRIES = 5  # concurrent writers raced on a unique key: read again and redo


class JobStateError(LearnloopError):
    """A job cannot make this transition: it is in another status or held by another worker."""

    def __init__(self, message: str, *, job_id: str, status: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.status = status


class JobNotFound(JobStateError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no training job {job_id!r}", job_id=job_id)


def merge_windows(a: DataWindow, b: DataWindow) -> DataWindow:
    """The smallest window holding both: an open bound wins, ``last_n`` takes the larger.

    >>> from datetime import datetime, timezone
    >>> t = lambda h: datetime(2026, 1, 1, h, tzinfo=timezone.utc)
    >>> merge_windows(DataWindow(start=t(1), end=t(2)), DataWindow(start=t(3), end=t(4))) == DataWindow(
    ...     start=t(1), end=t(4))
    True
    >>> merge_windows(DataWindow(end=t(2), last_n=10), DataWindow(end=t(4), last_n=50)).last_n
    50
    """
    return DataWindow(
        start=None if a.start is None or b.start is None else min(a.start, b.start),
        end=None if a.end is None or b.end is None else max(a.end, b.end),
        last_n=None if a.last_n is None or b.last_n is None else max(a.last_n, b.last_n),
    )


def job_window(job: TrainingJob) -> DataWindow:
    """The data window a job trains on (``FeedbackStore.window(job.learners, start=..., end=..., last_n=...)``)."""
    return DataWindow.model_validate(job.window)


def _window_json(w: DataWindow) -> dict[str, Any]:
    return w.model_dump(mode="json")


def _iso(dt: datetime | None) -> str | None:
    return rfc3339(dt)  # SQLite gives times back without their zone: they are UTC


DATASET_INVALID_PREFIX = "dataset invalid: "
"""How the error of a job failed for its data begins: what tells ``dataset_invalid`` from ``failed``."""
HANDED_ON = "its requests moved to queued job"
"""In the error of a stale job whose requests went to the model's queued job: not a failure, its run was lost."""


def job_outcome(job: TrainingJob) -> TrainingOutcome | None:
    """How ``job`` ended; None while it is queued or running.

    >>> job_outcome(TrainingJob(status="failed", error="dataset invalid: only 40 samples (need 200)")).value
    'dataset_invalid'
    >>> job_outcome(TrainingJob(status="failed", error=f"trainer stopped ...; {HANDED_ON} 42")).value
    'lost'
    >>> job_outcome(TrainingJob(status="queued")) is None
    True
    """
    if job.status == "failed":
        error = job.error or ""
        if error.startswith(DATASET_INVALID_PREFIX):
            return TrainingOutcome.DATASET_INVALID
        return TrainingOutcome.LOST if HANDED_ON in error else TrainingOutcome.FAILED
    if job.status in ("succeeded", "rejected", "cancelled"):
        return TrainingOutcome(job.status)
    return None


def job_as_dict(job: TrainingJob) -> dict[str, Any]:
    """Every field of ``job``, JSON-ready (times as ISO 8601 strings in UTC)."""
    outcome = job_outcome(job)
    return {
        "id": job.id,
        "model": job.model,
        "status": job.status,
        "outcome": None if outcome is None else outcome.value,
        "reason": job.reason,
        "request_ids": list(job.request_ids),
        "drift_event_ids": list(job.drift_event_ids),
        "learners": list(job.learners),
        "window": dict(job.window),
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "requested_at": _iso(job.requested_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "heartbeat_at": _iso(job.heartbeat_at),
        "worker_id": job.worker_id,
        "attempts": job.attempts,
        "error": job.error,
        "progress": job.progress,
        "result": job.result,
        "kind": job.kind,
        "params": job.params,
    }


def _uniq(*lists: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(x for xs in lists for x in xs))


class JobStore:
    """Training job records on one engine (SQLite or PostgreSQL); every method is one transaction."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self.clock = clock
        self._reads = sessionmaker(engine, expire_on_commit=False)
        self._writes = sessionmaker(writer(engine), expire_on_commit=False)

    @contextmanager
    def _tx(self, what: str, *, write: bool = True) -> Iterator[Session]:
        with available(what), (self._writes if write else self._reads).begin() as session:
            yield session

    def _retrying(self, what: str, fn: Callable[[Session], T]) -> T:
        for attempt in range(_CONFLICT_RETRIES):
            try:
                with self._tx(what) as s:
                    return fn(s)
            except IntegrityError:
                if attempt == _CONFLICT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- requests ------------------------------------------------------------------

    def request(
        self, req: RetrainRequest, *, learners: Sequence[str], params: dict[str, Any] | None = None
    ) -> tuple[TrainingJob, bool]:
        """Queue ``req``: join the model's queued job, or create one. True when a job was created.

        ``learners`` are the learners whose feedback trains the model. A request
        id seen before returns its job unchanged, whatever that job's status.
        ``params`` (fine-tuning settings to override) go to a new job only: a
        request with params that differ from the queued job's raises ``JobStateError``.
        """
        return self._retrying("retrain request", lambda s: self._request(s, req, learners, params or None))

    def _request(
        self, s: Session, req: RetrainRequest, learners: Sequence[str], params: dict[str, Any] | None
    ) -> tuple[TrainingJob, bool]:
        rid = str(req.request_id)
        known = s.get(JobRequest, rid)
        if known is not None:
            return s.get_one(TrainingJob, known.job_id), False
        now = self.clock()
        drift = [str(req.drift_event_id)] if req.drift_event_id is not None else []
        job = s.scalars(
            select(TrainingJob).where(TrainingJob.model == req.model, TrainingJob.status == "queued").with_for_update()
        ).first()
        created = job is None
        if job is None:
            job = TrainingJob(
                id=str(uuid.uuid4()), model=req.model, status="queued", reason=req.reason, request_ids=[rid],
                drift_event_ids=drift, learners=_uniq(learners), window=_window_json(req.window),
                created_at=now, updated_at=now, requested_at=now, attempts=0, kind="classifier", params=params,
            )  # fmt: skip
            s.add(job)
        else:
            if params is not None and params != job.params:
                raise JobStateError(f"job {job.id} for {req.model} is already queued with other parameters "
                                    f"({job.params or {}}): cancel it first", job_id=job.id, status=job.status)
            # New lists, not appends: the JSON columns notice assignment, not mutation.
            job.request_ids = _uniq(job.request_ids, [rid])
            job.drift_event_ids = _uniq(job.drift_event_ids, drift)
            job.learners = _uniq(job.learners, learners)
            job.window = _window_json(merge_windows(job_window(job), req.window))
            job.requested_at = job.updated_at = now
        s.flush()  # the job row first: the request row refers to it
        s.add(JobRequest(request_id=rid, job_id=job.id, requested_at=now))
        s.flush()
        return job, created

    # -- the trainer's side ----------------------------------------------------------

    def claim_next(self, worker_id: str, *, settle_s: float = 0.0) -> TrainingJob | None:
        """Move the oldest queued job whose last request is ``settle_s`` old to running; None if there is none.

        Concurrent claimers never get the same job: PostgreSQL skips rows another
        claimer has locked (``FOR UPDATE SKIP LOCKED``); SQLite serialises writers,
        and the guarded ``UPDATE ... WHERE status = 'queued'`` checks the row count.
        """
        now = self.clock()
        ready = now - timedelta(seconds=settle_s)
        waiting = TrainingJob.status == "queued", TrainingJob.requested_at <= ready
        # An idle trainer polls every second: look in a read transaction first, so that an empty queue
        # never takes SQLite's write lock from the feedback worker's sample writes.
        with self._tx("job claim", write=False) as s:
            if s.scalars(select(TrainingJob.id).where(*waiting).limit(1)).first() is None:
                return None
        with self._tx("job claim") as s:
            for _ in range(_CONFLICT_RETRIES):
                job_id = s.scalars(
                    select(TrainingJob.id)
                    .where(*waiting)
                    .order_by(TrainingJob.created_at, TrainingJob.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if job_id is None:
                    return None
                claimed = self._update(
                    s, job_id, ("queued",), None,
                    status="running", started_at=now, heartbeat_at=now, finished_at=None, worker_id=worker_id,
                    attempts=TrainingJob.attempts + 1, updated_at=now,
                )  # fmt: skip
                if claimed:
                    return s.get_one(TrainingJob, job_id, populate_existing=True)
        return None

    def heartbeat(self, job_id: str, progress: dict[str, Any], *, worker_id: str | None = None) -> TrainingJob:
        """Record that the job is alive and how far it got (e.g. ``{"stage": "training", "epoch": 1}``)."""
        now = self.clock()
        return self._transition("heartbeat", job_id, ("running",), worker_id, progress=progress, heartbeat_at=now)

    def succeed(self, job_id: str, result: dict[str, Any], *, worker_id: str | None = None) -> TrainingJob:
        """Finish a running job; ``result`` holds metrics, the registered version, alias, grade..."""
        now = self.clock()
        return self._transition(
            "succeed", job_id, ("running",), worker_id, status="succeeded", result=result, error=None, finished_at=now
        )

    def fail(self, job_id: str, error: str, *, worker_id: str | None = None) -> TrainingJob:
        """Fail a queued or running job; ``error`` is the human-readable reason."""
        now = self.clock()
        return self._transition(
            "fail", job_id, ("queued", "running"), worker_id, status="failed", error=error, finished_at=now
        )

    def reject(self, job_id: str, reason: str, *, worker_id: str | None = None) -> TrainingJob:
        """Refuse a job that retrying will not fix (e.g. the model is not trainable)."""
        now = self.clock()
        return self._transition(
            "reject", job_id, ("queued", "running"), worker_id, status="rejected", error=reason, finished_at=now
        )

    def cancel(self, job_id: str) -> TrainingJob:
        """Cancel a queued job (it never starts) or a running one (its trainer stops at its next heartbeat)."""
        now = self.clock()
        return self._transition("cancel", job_id, ("queued", "running"), None, status="cancelled",
                                error="cancelled on request", finished_at=now)

    def recover_stale(self, *, stale_after_s: float, max_attempts: int = 3) -> builtins.list[TrainingJob]:
        """Requeue running jobs silent for ``stale_after_s``, or fail those that used ``max_attempts``.

        When the model already has another queued job, the stale job's requests
        move into it and the stale job fails, saying where they went.
        """
        return self._retrying("job recovery", lambda s: self._recover(s, stale_after_s, max_attempts))

    def _recover(self, s: Session, stale_after_s: float, max_attempts: int) -> builtins.list[TrainingJob]:
        now = self.clock()
        stale = s.scalars(
            select(TrainingJob)
            .where(TrainingJob.status == "running", TrainingJob.heartbeat_at < now - timedelta(seconds=stale_after_s))
            .order_by(TrainingJob.created_at)
            .with_for_update(skip_locked=True)
        ).all()
        for job in stale:
            silent = int((now - (job.heartbeat_at or now)).total_seconds())
            stopped = f"trainer stopped while running (no heartbeat for {silent} s)"
            job.updated_at = now
            if job.attempts >= max_attempts:
                job.status, job.finished_at = "failed", now
                job.error = f"{stopped} after {job.attempts} attempts"
                continue
            queued = s.scalars(
                select(TrainingJob)
                .where(TrainingJob.model == job.model, TrainingJob.status == "queued")
                .with_for_update()
            ).first()
            if queued is None:
                job.status, job.worker_id, job.heartbeat_at = "queued", None, None
                job.error = f"{stopped} on attempt {job.attempts}; requeued"
                s.flush()
                continue
            queued.request_ids = _uniq(job.request_ids, queued.request_ids)
            queued.drift_event_ids = _uniq(job.drift_event_ids, queued.drift_event_ids)
            queued.learners = _uniq(job.learners, queued.learners)
            queued.window = _window_json(merge_windows(job_window(job), job_window(queued)))
            queued.updated_at = now
            s.execute(update(JobRequest).where(JobRequest.job_id == job.id).values(job_id=queued.id))
            job.status, job.finished_at = "failed", now
            job.error = f"{stopped} on attempt {job.attempts}; {HANDED_ON} {queued.id}"
        s.flush()
        return list(stale)

    # -- reads ---------------------------------------------------------------------

    def get(self, job_id: str) -> TrainingJob | None:
        with self._tx("job lookup", write=False) as s:
            return s.get(TrainingJob, job_id)

    def list(
        self, limit: int = 50, model: str | None = None, status: str | None = None
    ) -> builtins.list[TrainingJob]:
        """The newest jobs first (of one model and/or in one status, or all)."""
        q = select(TrainingJob).order_by(TrainingJob.created_at.desc(), TrainingJob.id.desc()).limit(limit)
        if model is not None:
            q = q.where(TrainingJob.model == model)
        if status is not None:
            q = q.where(TrainingJob.status == status)
        with self._tx("job listing", write=False) as s:
            return builtins.list(s.scalars(q).all())

    # -- guarded updates -------------------------------------------------------------

    @staticmethod
    def _update(s: Session, job_id: str, allowed: tuple[str, ...], holder: str | None, **values: Any) -> bool:
        q = update(TrainingJob).where(TrainingJob.id == job_id, TrainingJob.status.in_(allowed))
        if holder is not None:
            q = q.where(TrainingJob.worker_id == holder)
        result = cast(CursorResult[Any], s.execute(q.values(**values).execution_options(synchronize_session=False)))
        return result.rowcount == 1

    def _transition(
        self, what: str, job_id: str, allowed: tuple[str, ...], worker_id: str | None, **values: Any
    ) -> TrainingJob:
        assert set(allowed) <= set(JOB_STATUSES)
        with self._tx(f"job {what}") as s:
            done = self._update(s, job_id, allowed, worker_id, updated_at=self.clock(), **values)
            job = s.get(TrainingJob, job_id, populate_existing=True)
            if job is None:
                raise JobNotFound(job_id)
            if not done:
                if job.status not in allowed:
                    why = f"it is {job.status}, not {' or '.join(allowed)}"
                else:
                    why = f"it is held by worker {job.worker_id!r}, not {worker_id!r}"
                raise JobStateError(f"cannot {what} job {job_id}: {why}", job_id=job_id, status=job.status)
            return job
