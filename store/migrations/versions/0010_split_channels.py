"""Recording jobs whose file's channels are transcribed apart (`split_channels`).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
Frozen like 0001: it does not import `store.tables`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A default, so replicas of the previous release still insert jobs during a rolling deploy.
    op.add_column(
        "recording_jobs",
        sa.Column("split_channels", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("recording_jobs") as batch:
        batch.drop_column("split_channels")
