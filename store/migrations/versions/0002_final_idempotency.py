"""Idempotent final writes: segments.stream_seq, unique per ingest stream.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

Adds a nullable column (no table rebuild on SQLite) and a unique index; existing rows keep NULL,
which the unique index allows any number of times.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("segments", sa.Column("stream_seq", sa.Integer(), nullable=True))
    op.create_index(
        "uq_segments_stream_id_stream_seq",
        "segments",
        ["stream_id", "stream_seq"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_segments_stream_id_stream_seq", table_name="segments")
    with op.batch_alter_table("segments") as batch:
        batch.drop_column("stream_seq")
