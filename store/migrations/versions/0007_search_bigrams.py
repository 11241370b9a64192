"""Phrase search at index speed on PostgreSQL: each final's vector also holds its adjacent word
pairs as lexemes of their own ("~budget review"), so a phrase of common words reads only the
finals holding the pair from the GIN index (`store.search.bigram_tsquery`).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

PostgreSQL only (FTS5 keeps positions and answers phrases from its own index). The generated
column is computed by an IMMUTABLE SQL function over the same folded words as SQLite's FTS5
index, and the pairs are taken from the vector's own positions, so they are exactly the pairs a
phrase query (`<->`) matches; phrases across a hyphen or an apostrophe now match on PostgreSQL as
they always did on SQLite. Rebuilding the column rewrites `segments` (about a minute per million
finals on the 2-core development machine). Frozen: no import of `store`.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0004's vector (Turkish i's folded to `i`, the `simple` configuration) of the text's words as
# `store.search` and FTS5 split them (letters and digits; PostgreSQL's parser alone would keep
# "q3-budget", "3.5" or an e-mail address whole beside their parts, which puts a phrase's words
# at positions that are not adjacent), plus every pair of lexemes at adjacent positions as
# "~first second": the `~` keeps a word's prefix query (`budg:*`) off the pairs, which have no
# positions and would make a phrase ending in a prefix fail. A pair longer than a lexeme may be
# (2,047 bytes) is left out, as `store.search.bigram_tsquery` leaves it out of a query.
_FUNCTION = """
CREATE FUNCTION segment_search_vector(doc text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  WITH folded AS (
    SELECT pg_catalog.to_tsvector('pg_catalog.simple', pg_catalog.regexp_replace(
      pg_catalog.translate(doc, 'İI\u0131', 'iii'), '[^[:alnum:]]+', ' ', 'g'
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


def _rebuild(expression: str) -> None:
    op.execute("ALTER TABLE segments DROP COLUMN search_vector")  # drops its index
    op.execute(
        "ALTER TABLE segments ADD COLUMN search_vector tsvector "
        f"GENERATED ALWAYS AS ({expression}) STORED"
    )
    op.execute("CREATE INDEX ix_segments_search_vector ON segments USING gin (search_vector)")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_FUNCTION)
    _rebuild("segment_search_vector(text)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _rebuild("to_tsvector('simple', translate(text, 'İI\u0131', 'iii'))")
    op.execute("DROP FUNCTION segment_search_vector(text)")
