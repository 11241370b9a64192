"""Search keeps a word's combining marks in the word, and a Greek word's final sigma is a sigma.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

Both indexes cut words at every combining mark (a Devanagari vowel sign or virama, Thai vowels,
Hebrew points, Arabic harakat), and differently: on SQLite "बैठक" was the letters ब ठ क and a
search for "बीत" found "बात"; on PostgreSQL the query's pieces missed its whole words. FTS5 now
tokenizes with `categories 'L* N* Co M*'` (the index is rebuilt from `segments`), and
PostgreSQL's vector function keeps marks in words and folds the final sigma (U+03C2) to sigma
(as FTS5 does; the query side's `lower()` writes a word's last sigma final), so "ΟΔΥΣΣΕΑΣ" is
found on both. Rebuilding the PostgreSQL column rewrites `segments` (about a minute per million
finals). The marks are `store.unicode_marks`' table (Unicode 14.0), which the query side reads
too: it changes only with a migration that rebuilds both indexes.
"""

from collections.abc import Sequence

from alembic import op

# The query side's table (Unicode 14.0), frozen there: the index and the queries must agree.
from store.unicode_marks import MARK_RANGES

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _escape(cp: int) -> str:
    return f"\\u{cp:04X}" if cp <= 0xFFFF else f"\\U{cp:08X}"


# 0007's function with the marks kept in words and the final sigma folded to sigma.
_FUNCTION = """
CREATE FUNCTION segment_search_words(doc text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  WITH folded AS (
    SELECT pg_catalog.to_tsvector('pg_catalog.simple', pg_catalog.regexp_replace(
      pg_catalog.translate(doc, 'İI\u0131\u03c2', 'iii\u03c3'), '[^[:alnum:]MARKS]+', ' ', 'g'
    )) AS v
  ), words AS (
    SELECT w.lexeme, pg_catalog.unnest(w.positions) AS pos
    FROM folded, pg_catalog.unnest(folded.v) AS w
  )
  SELECT folded.v || pg_catalog.array_to_tsvector(ARRAY(
    SELECT DISTINCT '~' || a.lexeme || ' ' || b.lexeme
    FROM words AS a JOIN words AS b ON b.pos = a.pos + 1
    WHERE pg_catalog.octet_length(a.lexeme) + pg_catalog.octet_length(b.lexeme) <= 2045
  ))
  FROM folded
$$
"""

# 0004's folding of the Turkish i's, as 0008 froze it.
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


def _rebuild_postgres(expression: str) -> None:
    op.execute("ALTER TABLE segments DROP COLUMN search_vector")  # drops its index
    op.execute(
        "ALTER TABLE segments ADD COLUMN search_vector tsvector "
        f"GENERATED ALWAYS AS ({expression}) STORED"
    )
    op.execute("CREATE INDEX ix_segments_search_vector ON segments USING gin (search_vector)")


def _rebuild_sqlite(tokenizer: str) -> None:
    for trigger in ("segments_fts_insert", "segments_fts_delete", "segments_fts_update"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS segments_fts")
    op.execute(
        "CREATE VIRTUAL TABLE segments_fts USING fts5("
        f"text, content='segments', content_rowid='id', tokenize=\"{tokenizer}\")"
    )
    folded = {"new": _FOLD.format(col="new.text"), "old": _FOLD.format(col="old.text")}
    for trigger in _TRIGGERS:
        op.execute(trigger.format(**folded))
    op.execute(
        f"INSERT INTO segments_fts(rowid, text) SELECT id, {_FOLD.format(col='text')} FROM segments"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        marks = "".join(f"{_escape(a)}-{_escape(b)}" for a, b in MARK_RANGES)
        op.execute(_FUNCTION.replace("MARKS", marks))
        _rebuild_postgres("segment_search_words(text)")
    else:
        _rebuild_sqlite("unicode61 remove_diacritics 0 categories 'L* N* Co M*'")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _rebuild_postgres("segment_search_vector(text)")
        op.execute("DROP FUNCTION segment_search_words(text)")
    else:
        _rebuild_sqlite("unicode61 remove_diacritics 0")
