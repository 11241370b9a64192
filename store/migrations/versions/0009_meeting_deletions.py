"""Deleted meetings, remembered a day across replicas and restarts (`store.deletion_log`).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
Frozen like 0001: it does not import `store.tables`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "meeting_deletions",
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("meeting_id", sa.String(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "meeting_id", name="pk_meeting_deletions"),
    )
    op.create_index("ix_meeting_deletions_deleted_at", "meeting_deletions", ["deleted_at"])


def downgrade() -> None:
    op.drop_index("ix_meeting_deletions_deleted_at", table_name="meeting_deletions")
    op.drop_table("meeting_deletions")
