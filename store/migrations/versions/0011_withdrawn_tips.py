"""Live tips withdrawn by a correction of a final they cite (`meeting_tips.withdrawn_at`).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
Frozen like 0001: it does not import `store.tables`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "meeting_tips", sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("meeting_tips") as batch:
        batch.drop_column("withdrawn_at")
