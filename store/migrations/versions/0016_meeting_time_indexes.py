"""Meetings indexed by time: a tenant's list (newest first) and retention's walk (oldest first)
read a page from an index instead of sorting every meeting for each page.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
Frozen like 0001: it does not import `store.tables`.

Without them a page of `GET /api/v1/meetings` sorted all of the tenant's meetings, and each of
retention's batches all meetings older than the horizon, including those kept (still active):
a round grew with the square of the meetings it had to pass.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TENANT_LIST = ("tenant_id", "created_at", "meeting_id")
_RETENTION_WALK = ("created_at", "tenant_id", "meeting_id")


def _name(columns: tuple[str, ...]) -> str:
    return "ix_meetings_" + "_".join(columns)


def upgrade() -> None:
    for columns in (_TENANT_LIST, _RETENTION_WALK):
        op.create_index(_name(columns), "meetings", list(columns))


def downgrade() -> None:
    for columns in (_TENANT_LIST, _RETENTION_WALK):
        op.drop_index(_name(columns), table_name="meetings")
