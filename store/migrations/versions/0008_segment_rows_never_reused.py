"""Segment rows are never numbered again: SQLite's `segments.id` becomes AUTOINCREMENT.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

A search's later pages see only finals up to the row the first page saw (`store.search`), which
holds only if a row number once given is never given again. PostgreSQL's sequence never gives
one twice; SQLite's INTEGER PRIMARY KEY gives the highest row's number again once that row is
deleted. The table is rebuilt (about 2 s per 100,000 finals) and the full-text triggers, dropped
with the old table, are created again; the FTS5 index keeps its rows, whose numbers do not change.
Frozen: no import of `store`.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0004's folding (the Turkish i's to `i`), as `store.search.SQLITE_FOLD_SQL` held it then.
_FOLD = "replace(replace(replace({col}, 'İ', 'i'), 'I', 'i'), '\u0131', 'i')"

_TRIGGERS = (
    "CREATE TRIGGER segments_fts_insert AFTER INSERT ON segments BEGIN "
    "INSERT INTO segments_fts(rowid, text) VALUES (new.id, {new}); END",
    "CREATE TRIGGER segments_fts_delete AFTER DELETE ON segments BEGIN "
    "INSERT INTO segments_fts(segments_fts, rowid, text) VALUES ('delete', old.id, {old}); END",
    "CREATE TRIGGER segments_fts_update AFTER UPDATE OF text ON segments BEGIN "
    "INSERT INTO segments_fts(segments_fts, rowid, text) VALUES ('delete', old.id, {old}); "
    "INSERT INTO segments_fts(rowid, text) VALUES (new.id, {new}); END",
)


def _rebuild(*, autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    kwargs = {"sqlite_autoincrement": True} if autoincrement else {}
    with op.batch_alter_table("segments", recreate="always", table_kwargs=kwargs):
        pass
    folded = {"new": _FOLD.format(col="new.text"), "old": _FOLD.format(col="old.text")}
    for trigger in _TRIGGERS:
        op.execute(trigger.format(**folded))


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
