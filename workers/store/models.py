"""The SQL tables: feedback samples, training jobs and the retrain requests each job answers.

The schema itself is created by the Alembic migrations in ``migrations/``;
these models must stay in step with them (a test compares the two).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.envelope import MAX_NAME, as_utc
from workers.store.samples import LabelValue

JobStatus = Literal["queued", "running", "succeeded", "failed", "rejected", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "running", "succeeded", "failed", "rejected", "cancelled")
JobKind = Literal["classifier"]


class TrainingOutcome(StrEnum):
    """How a training job ended, or one run of it: the one vocabulary of `learnloop jobs` (its OUTCOME
    column), the ``outcome`` label of ``learnloop_training_jobs_total``, the training dashboard and the
    alerts (``infra/``, checked against this by ``tests/unit/test_infra.py``).

    A finished job's outcome follows from its record (:func:`workers.store.jobs.job_outcome`);
    ``cancelled`` and ``lost`` end a run only, and the job goes on in another run.
    """

    SUCCEEDED = "succeeded"  # a version was registered and announced
    FAILED = "failed"  # the run broke (the job's error says how), or its trainer died too often
    DATASET_INVALID = "dataset_invalid"  # the window's data cannot train a model: too few samples, one class...
    REJECTED = "rejected"  # the request cannot be served: no learner names the model
    # The trainer stopped mid-run (the job is requeued for the next trainer), or the job was cancelled on
    # request (its status is then ``cancelled`` and nothing was registered).
    CANCELLED = "cancelled"
    LOST = "lost"  # the run was declared dead (no heartbeat) and its job handed on


# The outcomes someone has to act on: the training-failure alert fires on these.
FAILED_OUTCOMES = frozenset({TrainingOutcome.FAILED, TrainingOutcome.DATASET_INVALID, TrainingOutcome.REJECTED})
JobReason = Literal["drift", "schedule", "manual", "volume"]

ID_LEN = 36  # a UUID's text form
NAME_LEN = MAX_NAME


def aware_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused rather than guessed."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()}: the store needs timezone-aware times")
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime in, an aware UTC datetime out, on every engine.

    PostgreSQL keeps ``timestamptz``. SQLite has no time zones: values are
    stored as naive UTC text (so they sort and compare correctly) and come
    back with ``tzinfo=UTC``. Naive input is refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = aware_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return as_utc(value)


class Base(DeclarativeBase):
    pass


class FeedbackSample(Base):
    """One labelled feedback event, as the trainer will read it (after the prediction join)."""

    __tablename__ = "feedback_samples"
    __table_args__ = (
        Index("ix_feedback_samples_learner_occurred_at", "learner", "occurred_at"),
        Index("ix_feedback_samples_occurred_at", "occurred_at"),
    )

    event_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    learner: Mapped[str] = mapped_column(String(NAME_LEN))
    subject_id: Mapped[str | None] = mapped_column(String(NAME_LEN))
    text: Mapped[str | None] = mapped_column(Text)
    features: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    label: Mapped[LabelValue] = mapped_column(JSON)
    weight: Mapped[float] = mapped_column(Float)
    channel: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(NAME_LEN))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime)


_QUEUED = text("status = 'queued'")


class TrainingJob(Base):
    """A fine-tuning job: the retrain requests it coalesces and how its run went.

    ``requested_at`` is the time of its latest coalesced request (the trainer
    lets a burst settle before claiming). At most one job per model is queued,
    enforced by a partial unique index, so concurrent requests cannot fork it.
    """

    __tablename__ = "training_jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'rejected', 'cancelled')",
            name="ck_training_jobs_status",
        ),
        Index("ix_training_jobs_model", "model"),
        Index("ix_training_jobs_status_created_at", "status", "created_at"),
        Index("uq_training_jobs_queued_model", "model", unique=True, sqlite_where=_QUEUED, postgresql_where=_QUEUED),
    )

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True, default=lambda: str(uuid.uuid4()))
    model: Mapped[str] = mapped_column(String(NAME_LEN))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(16))
    request_ids: Mapped[list[str]] = mapped_column(JSON)
    drift_event_ids: Mapped[list[str]] = mapped_column(JSON)
    learners: Mapped[list[str]] = mapped_column(JSON)
    window: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker_id: Mapped[str | None] = mapped_column(String(NAME_LEN))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    kind: Mapped[str] = mapped_column(String(16), default="classifier", server_default="classifier")
    # Fine-tuning settings this job overrides (``training.*`` names), from the jobs API.
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))

    def __repr__(self) -> str:
        return f"TrainingJob(id={self.id!r}, model={self.model!r}, status={self.status!r}, attempts={self.attempts})"


class JobRequest(Base):
    """Which job answers a retrain request: the idempotency key of ``JobStore.request``."""

    __tablename__ = "training_job_requests"

    request_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("training_jobs.id", ondelete="CASCADE"), index=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)


ROLLOUT_STATES = ("running", "paused", "promoted", "rolled_back", "aborted", "inconclusive")
ACTIVE_ROLLOUT_STATES = ("running", "paused")


class Rollout(Base):
    """One challenger rolled out against a champion, with the live statistics it is decided on.

    ``stats`` is :meth:`learners.rollout.RolloutStats.to_state`, saved with the controller's
    consumer positions (:class:`RolloutOffset`) in one transaction: a controller killed at any
    point resumes from both and counts no prediction or label twice.
    """

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_model_state", "model", "state"),)

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    model: Mapped[str] = mapped_column(String(NAME_LEN))
    state: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(16))
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    champion_version: Mapped[str | None] = mapped_column(String(NAME_LEN))
    challenger_version: Mapped[str] = mapped_column(String(NAME_LEN))
    step: Mapped[int] = mapped_column(Integer)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    step_started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The champion before a promotion (what a person would move the alias back to).
    previous_champion: Mapped[str | None] = mapped_column(String(NAME_LEN))


class RolloutStep(Base):
    """One traffic step of a rollout: its share, when it ran, how it ended."""

    __tablename__ = "rollout_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    share: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(16))


class RolloutDecision(Base):
    """Every decision that changed a rollout, with the numbers it was taken on (metrics, counts, interval)."""

    __tablename__ = "rollout_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    manual: Mapped[bool] = mapped_column(Boolean, default=False)
    statistics: Mapped[dict[str, Any]] = mapped_column(JSON)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RolloutCommand(Base):
    """A person's override (``learnloop rollout promote|abort|pause|resume``), applied by the controller."""

    __tablename__ = "rollout_commands"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(NAME_LEN), index=True)
    action: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result: Mapped[str | None] = mapped_column(Text)


class RolloutOffset(Base):
    """Where the rollout controller resumes reading, saved with the rollout statistics."""

    __tablename__ = "rollout_offsets"

    topic: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    offset: Mapped[int] = mapped_column(BigInteger)
