"""A webhook endpoint's previous secrets, which sign beside the new one for a while after a
rotation (`webhook_endpoints.previous_secrets`: JSON [[secret, until], ...]).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
Frozen like 0001: it does not import `store.tables`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("webhook_endpoints", sa.Column("previous_secrets", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.drop_column("previous_secrets")
