"""Initial schema: meetings, segments, ingest_streams.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written by hand and frozen: it must not import `store.tables`, whose later edits would otherwise
silently change what this revision creates.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "meetings",
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("meeting_id", sa.String(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("last_segment_no", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("tenant_id", "meeting_id", name="pk_meetings"),
    )
    op.create_table(
        "segments",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("meeting_id", sa.String(), nullable=False),
        sa.Column("segment_no", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("start_ms", sa.Integer(), nullable=False),
        sa.Column("end_ms", sa.Integer(), nullable=False),
        sa.Column("speaker", sa.String(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("stream_id", sa.String(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_segments"),
        sa.UniqueConstraint(
            "tenant_id",
            "meeting_id",
            "segment_no",
            name="uq_segments_tenant_id_meeting_id_segment_no",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "meeting_id"],
            ["meetings.tenant_id", "meetings.meeting_id"],
            name="fk_segments_tenant_id_meeting_id_meetings",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "ingest_streams",
        sa.Column("stream_id", sa.String(), nullable=False),
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("meeting_id", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("engine", sa.String(), nullable=False),
        sa.Column("sample_rate", sa.Integer(), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("ended_at", _utc(), nullable=True),
        sa.Column("audio_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("frames", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("stream_id", name="pk_ingest_streams"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "meeting_id"],
            ["meetings.tenant_id", "meetings.meeting_id"],
            name="fk_ingest_streams_tenant_id_meeting_id_meetings",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_ingest_streams_tenant_id_meeting_id_ended_at",
        "ingest_streams",
        ["tenant_id", "meeting_id", "ended_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_ingest_streams_tenant_id_meeting_id_ended_at", table_name="ingest_streams")
    op.drop_table("ingest_streams")
    op.drop_table("segments")
    op.drop_table("meetings")
