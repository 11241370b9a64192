"""The meeting's newest final when a live tip was stored (`meeting_tips.newest_segment_no`), so a
viewer resuming with since= is sent every tip stored after it left, whatever finals it cites.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
Frozen like 0001: it does not import `store.tables`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("meeting_tips", sa.Column("newest_segment_no", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("meeting_tips") as batch:
        batch.drop_column("newest_segment_no")
