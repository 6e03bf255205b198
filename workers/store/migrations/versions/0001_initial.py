"""Feedback samples, training jobs and the requests they answer.

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported from models.py: a migration is a frozen record of one schema.
ID_LEN = 36
NAME_LEN = 128
QUEUED = sa.text("status = 'queued'")


def _at(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "feedback_samples",
        sa.Column("event_id", sa.String(ID_LEN), primary_key=True),
        sa.Column("learner", sa.String(NAME_LEN), nullable=False),
        sa.Column("subject_id", sa.String(NAME_LEN), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("features", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("label", sa.JSON(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("source", sa.String(NAME_LEN), nullable=False),
        _at("occurred_at"),
        _at("stored_at"),
    )
    op.create_index("ix_feedback_samples_learner_occurred_at", "feedback_samples", ["learner", "occurred_at"])
    op.create_index("ix_feedback_samples_occurred_at", "feedback_samples", ["occurred_at"])

    op.create_table(
        "training_jobs",
        sa.Column("id", sa.String(ID_LEN), primary_key=True),
        sa.Column("model", sa.String(NAME_LEN), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("request_ids", sa.JSON(), nullable=False),
        sa.Column("drift_event_ids", sa.JSON(), nullable=False),
        sa.Column("learners", sa.JSON(), nullable=False),
        sa.Column("window", sa.JSON(), nullable=False),
        _at("created_at"),
        _at("updated_at"),
        _at("requested_at"),
        _at("started_at", nullable=True),
        _at("finished_at", nullable=True),
        _at("heartbeat_at", nullable=True),
        sa.Column("worker_id", sa.String(NAME_LEN), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("progress", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("result", sa.JSON(none_as_null=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'rejected')", name="ck_training_jobs_status"
        ),
    )
    op.create_index("ix_training_jobs_model", "training_jobs", ["model"])
    op.create_index("ix_training_jobs_status_created_at", "training_jobs", ["status", "created_at"])
    op.create_index(
        "uq_training_jobs_queued_model",
        "training_jobs",
        ["model"],
        unique=True,
        sqlite_where=QUEUED,
        postgresql_where=QUEUED,
    )

    op.create_table(
        "training_job_requests",
        sa.Column("request_id", sa.String(ID_LEN), primary_key=True),
        sa.Column(
            "job_id",
            sa.String(ID_LEN),
            sa.ForeignKey("training_jobs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        _at("requested_at"),
    )
    op.create_index("ix_training_job_requests_job_id", "training_job_requests", ["job_id"])


def downgrade() -> None:
    op.drop_table("training_job_requests")
    op.drop_table("training_jobs")
    op.drop_table("feedback_samples")
