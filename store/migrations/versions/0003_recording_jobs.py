"""Recording jobs: durable transcription jobs for uploaded files (issue 15).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
Frozen like 0001: it does not import `store.tables`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "recording_jobs",
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("meeting_id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("audio_ms_done", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("audio_ms_total", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("engine", sa.String(), nullable=True),
        sa.Column("engines_used", sa.Text(), server_default="{}", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("file_path", sa.Text(), nullable=False),
        sa.Column("file_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("language", sa.String(), nullable=False),
        sa.Column("diarize", sa.Integer(), server_default="1", nullable=False),
        sa.Column("lease_owner", sa.String(), nullable=True),
        sa.Column("lease_expires_at", _utc(), nullable=True),
        sa.Column("cancel_requested", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_chunk", sa.Integer(), server_default="0", nullable=False),
        sa.Column("finals", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_segment_no", sa.Integer(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("started_at", _utc(), nullable=True),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name="pk_recording_jobs"),
        sa.UniqueConstraint(
            "tenant_id", "idempotency_key", name="uq_recording_jobs_tenant_id_idempotency_key"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "meeting_id"],
            ["meetings.tenant_id", "meetings.meeting_id"],
            name="fk_recording_jobs_tenant_id_meeting_id_meetings",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_recording_jobs_tenant_id_meeting_id_created_at",
        "recording_jobs",
        ["tenant_id", "meeting_id", "created_at"],
    )
    op.create_index(
        "ix_recording_jobs_status_created_at", "recording_jobs", ["status", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_recording_jobs_status_created_at", table_name="recording_jobs")
    op.drop_index("ix_recording_jobs_tenant_id_meeting_id_created_at", table_name="recording_jobs")
    op.drop_table("recording_jobs")
