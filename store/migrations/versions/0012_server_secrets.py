"""Secrets every replica shares, made once with the schema: `cursor`, the key that seals page
cursors (`store.server_secrets`).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
Frozen like 0001: it does not import `store.tables`.
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_server_secrets"),
    )
    op.bulk_insert(table, [{"name": "cursor", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("server_secrets")
