"""Insights: post-meeting notes (one row per meeting, made by one replica at a time) and live
tips (numbered per meeting).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
Frozen like 0001: it does not import `store.tables`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "meeting_notes",
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("meeting_id", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("generation", sa.Integer(), server_default="1", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", _utc(), nullable=False),
        sa.Column("lease_owner", sa.String(), nullable=True),
        sa.Column("lease_expires_at", _utc(), nullable=True),
        sa.Column("backend", sa.String(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("finals", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requested_at", _utc(), nullable=False),
        sa.Column("generated_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "meeting_id", name="pk_meeting_notes"),
    )
    op.create_index(
        "ix_meeting_notes_state_next_attempt_at", "meeting_notes", ["state", "next_attempt_at"]
    )
    op.create_table(
        "meeting_tips",
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("meeting_id", sa.String(), nullable=False),
        sa.Column("tip_no", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("due", sa.String(), nullable=True),
        sa.Column("segment_nos", sa.Text(), nullable=False),
        sa.Column("segment_no_high", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "meeting_id", "tip_no", name="pk_meeting_tips"),
    )


def downgrade() -> None:
    op.drop_table("meeting_tips")
    op.drop_index("ix_meeting_notes_state_next_attempt_at", table_name="meeting_notes")
    op.drop_table("meeting_notes")
