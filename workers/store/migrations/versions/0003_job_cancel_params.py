"""Jobs can be cancelled on request, and carry their kind and training parameters (the jobs API).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "status IN ('queued', 'running', 'succeeded', 'failed', 'rejected')"
NEW = "status IN ('queued', 'running', 'succeeded', 'failed', 'rejected', 'cancelled')"


def upgrade() -> None:
    # SQLite cannot alter a CHECK constraint in place: batch mode copies the table (a no-op elsewhere).
    with op.batch_alter_table("training_jobs", recreate="auto") as batch:
        batch.drop_constraint("ck_training_jobs_status", type_="check")
        batch.create_check_constraint("ck_training_jobs_status", sa.text(NEW))
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="classifier"))
        batch.add_column(sa.Column("params", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    op.execute("UPDATE training_jobs SET status = 'failed', error = 'cancelled' WHERE status = 'cancelled'")
    with op.batch_alter_table("training_jobs", recreate="auto") as batch:
        batch.drop_column("params")
        batch.drop_column("kind")
        batch.drop_constraint("ck_training_jobs_status", type_="check")
        batch.create_check_constraint("ck_training_jobs_status", sa.text(OLD))
