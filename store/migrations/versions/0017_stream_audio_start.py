"""When a resumed stream's audio began (`ingest_streams.audio_started_at`): a stream resuming
another (its handshake's `resumes`) re-sends audio spoken before it connected, and exports place
its finals from then. Its `started_at` stays when it connected (the meeting's lifecycle and
stats read that). Nullable: no table rebuild on SQLite.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
Frozen like 0001: it does not import `store.tables`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "ingest_streams", sa.Column("audio_started_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("ingest_streams") as table:
        table.drop_column("audio_started_at")
