"""Meetings as resources: a title and speaker names per meeting, corrections of a final that
keep the original, and full-text search over finals: FTS5 on SQLite, a generated tsvector with a
GIN index on PostgreSQL, both over the folded text of `store.search` (so a query means the same
on either). New columns are nullable: no table rebuild on SQLite.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

These objects are not in `store.tables` (they differ by dialect and SQLAlchemy cannot describe an
FTS5 table); `store.tables.include_object` keeps schema comparisons off them. On SQLite, triggers
keep the index in step with `segments`; a later migration that rebuilds `segments` in batch mode
must create them again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.search import POSTGRES_FOLD_SQL, SQLITE_FOLD_SQL

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _sqlite_fold(column: str) -> str:
    return SQLITE_FOLD_SQL.format(col=column)


def upgrade() -> None:
    op.add_column("meetings", sa.Column("title", sa.String(), nullable=True))
    op.add_column("meetings", sa.Column("speaker_names", sa.Text(), nullable=True))
    op.add_column("segments", sa.Column("original_text", sa.Text(), nullable=True))
    op.add_column("segments", sa.Column("edited_by", sa.String(), nullable=True))
    op.add_column("segments", sa.Column("edited_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_segments_tenant_id_id", "segments", ["tenant_id", "id"])
    if op.get_bind().dialect.name == "postgresql":
        fold = POSTGRES_FOLD_SQL.format(col="text")
        op.execute(
            "ALTER TABLE segments ADD COLUMN search_vector tsvector "
            f"GENERATED ALWAYS AS (to_tsvector('simple', {fold})) STORED"
        )
        op.execute("CREATE INDEX ix_segments_search_vector ON segments USING gin (search_vector)")
        return
    op.execute(
        "CREATE VIRTUAL TABLE segments_fts USING fts5("
        "text, content='segments', content_rowid='id', "
        "tokenize='unicode61 remove_diacritics 0')"
    )
    op.execute(
        "CREATE TRIGGER segments_fts_insert AFTER INSERT ON segments BEGIN "
        f"INSERT INTO segments_fts(rowid, text) VALUES (new.id, {_sqlite_fold('new.text')}); "
        "END"
    )
    op.execute(
        "CREATE TRIGGER segments_fts_delete AFTER DELETE ON segments BEGIN "
        "INSERT INTO segments_fts(segments_fts, rowid, text) "
        f"VALUES ('delete', old.id, {_sqlite_fold('old.text')}); "
        "END"
    )
    op.execute(
        "CREATE TRIGGER segments_fts_update AFTER UPDATE OF text ON segments BEGIN "
        "INSERT INTO segments_fts(segments_fts, rowid, text) "
        f"VALUES ('delete', old.id, {_sqlite_fold('old.text')}); "
        f"INSERT INTO segments_fts(rowid, text) VALUES (new.id, {_sqlite_fold('new.text')}); "
        "END"
    )
    op.execute(
        f"INSERT INTO segments_fts(rowid, text) SELECT id, {_sqlite_fold('text')} FROM segments"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_segments_search_vector")
        op.execute("ALTER TABLE segments DROP COLUMN IF EXISTS search_vector")
    else:
        for trigger in ("segments_fts_insert", "segments_fts_delete", "segments_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS segments_fts")
    op.drop_index("ix_segments_tenant_id_id", table_name="segments")
    with op.batch_alter_table("segments") as batch:
        for column in ("edited_at", "edited_by", "original_text"):
            batch.drop_column(column)
    with op.batch_alter_table("meetings") as batch:
        for column in ("speaker_names", "title"):
            batch.drop_column(column)
