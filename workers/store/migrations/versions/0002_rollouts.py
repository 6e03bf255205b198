"""Rollouts of challengers, their steps, decisions, manual commands and the controller's positions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID_LEN = 36
NAME_LEN = 128


def _at(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(ID_LEN), primary_key=True),
        sa.Column("model", sa.String(NAME_LEN), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("champion_version", sa.String(NAME_LEN), nullable=True),
        sa.Column("challenger_version", sa.String(NAME_LEN), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        _at("started_at"),
        _at("step_started_at"),
        _at("updated_at"),
        _at("ended_at", nullable=True),
        sa.Column("previous_champion", sa.String(NAME_LEN), nullable=True),
    )
    op.create_index("ix_rollouts_model_state", "rollouts", ["model", "state"])
    op.create_table(
        "rollout_steps",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.String(ID_LEN), sa.ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        _at("started_at"),
        _at("ended_at", nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
    )
    op.create_index("ix_rollout_steps_rollout_id", "rollout_steps", ["rollout_id"])
    op.create_table(
        "rollout_decisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.String(ID_LEN), sa.ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("manual", sa.Boolean(), nullable=False),
        sa.Column("statistics", sa.JSON(), nullable=False),
        _at("decided_at"),
    )
    op.create_index("ix_rollout_decisions_rollout_id", "rollout_decisions", ["rollout_id"])
    op.create_table(
        "rollout_commands",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(NAME_LEN), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        _at("requested_at"),
        _at("done_at", nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
    )
    op.create_index("ix_rollout_commands_model", "rollout_commands", ["model"])
    op.create_table(
        "rollout_offsets",
        sa.Column("topic", sa.String(NAME_LEN), primary_key=True),
        sa.Column("partition", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollout_offsets")
    op.drop_table("rollout_commands")
    op.drop_table("rollout_decisions")
    op.drop_table("rollout_steps")
    op.drop_index("ix_rollouts_model_state", table_name="rollouts")
    op.drop_table("rollouts")
