"""Full-text search over finals: the query language, case folding, pages of ranked matches and
snippets. Pure: no I/O.

Both stores index the same folded text, so a query means the same on either: SQLite through
FTS5 (`unicode61`, diacritics kept, combining marks part of words) and PostgreSQL through a
`tsvector` of the `simple` configuration. Folding lowercases and maps the four Turkish i's
(dotted and dotless, upper and lower case) to one `i`, which `lower()` alone gets wrong in every
locale but Turkish: "İSTANBUL" finds "istanbul", and "IRMAK" finds the word spelled with a
lowercase dotless i; a Greek word's final sigma is a sigma. Text without spaces between words
(Chinese, Japanese, Thai) is one word per run: found whole or by a prefix.

A query is words, "quoted phrases" and prefixes (`budg*`); every term must match. The query is
never put into SQL text: `fts5_query` and `tsquery` build strings that are bound as parameters,
from tokens that hold letters and digits only.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from store.unicode_marks import MARK_RANGES

MAX_QUERY_CHARS = 256
# A pair lexeme ("~first second") fits PostgreSQL's 2,047-byte limit (migration 0007).
MAX_PAIR_BYTES = 2045
MAX_TERMS = 16
# A prefix term's letters before its `*`: one letter matched a good part of the whole index's
# words (every tenant's: the index is shared), and sixteen of them took half a second a query.
MIN_PREFIX_CHARS = 2
# A search cursor holds this many of the last hits shown, its page's and those before (see
# `page_after`).
POSITION_ROWS = 20

# A token: a letter or digit, then letters, digits and combining marks (a Devanagari vowel sign
# or virama, Hebrew points, Arabic harakat are part of their word), as the indexes split words:
# FTS5's unicode61 with categories L* N* Co M*, PostgreSQL's function of migration 0015.
MARKS = "".join(f"{chr(start)}-{chr(end)}" for start, end in MARK_RANGES)
_TOKEN = re.compile(rf"[^\W_](?:[^\W_]|[{MARKS}])*")
_TERM = re.compile(r'"([^"]*)"|(\S+)')
DOTLESS_I = "\u0131"
_TURKISH_I = str.maketrans({"I": "i", "İ": "i", DOTLESS_I: "i"})
FINAL_SIGMA, SIGMA = "\u03c2", "\u03c3"  # Greek: a word's last sigma is a sigma (FTS5 folds so)

# The same mapping in SQL, for the index side (a trigger on SQLite, a generated column on
# PostgreSQL); the store's migration uses these.
SQLITE_FOLD_SQL = "replace(replace(replace({col}, 'İ', 'i'), 'I', 'i'), '" + DOTLESS_I + "', 'i')"
POSTGRES_FOLD_SQL = "translate({col}, 'İI" + DOTLESS_I + "', 'iii')"


class QueryError(ValueError):
    """A search query that cannot be run (empty, too long, too many terms)."""


@dataclass(frozen=True, slots=True)
class Term:
    tokens: tuple[str, ...]  # folded; more than one is a phrase
    prefix: bool = False  # the last token matches as a prefix


def fold(text: str) -> str:
    # Composed (NFC) as stored finals are: "cafe" + U+0301 is the word "café", not "cafe".
    # Greek: lower() writes a word's last sigma as the final form, which the indexes do not.
    folded = unicodedata.normalize("NFC", text).translate(_TURKISH_I).lower()
    return folded.replace(FINAL_SIGMA, SIGMA)


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(fold(text))


def parse_query(query: str) -> list[Term]:
    query = unicodedata.normalize("NFC", query)  # the limit counts letters, however encoded
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"q is limited to {MAX_QUERY_CHARS} characters")
    terms: list[Term] = []
    for match in _TERM.finditer(query):
        phrase, word = match.groups()
        raw = phrase if phrase is not None else word
        prefix = phrase is None and raw.endswith("*")
        found = tokens(raw)
        if not found:
            continue
        if prefix and len(found[-1]) < MIN_PREFIX_CHARS:
            raise QueryError(f"a prefix needs at least {MIN_PREFIX_CHARS} letters before its *")
        # A word like "Q3-budget" or "Ahmet'in" is a phrase of its parts, as the indexes hold it.
        terms.append(Term(tuple(found), prefix))
    if not terms:
        raise QueryError("q must contain at least one word")
    if len(terms) > MAX_TERMS:
        raise QueryError(f"q may hold at most {MAX_TERMS} terms")
    return terms


def fts5_query(terms: list[Term]) -> str:
    """An FTS5 MATCH expression: each term a quoted phrase, `*` after a prefix term."""
    parts = []
    for term in terms:
        phrase = '"' + " ".join(term.tokens) + '"'
        parts.append(phrase + ("*" if term.prefix else ""))
    return " AND ".join(parts)


def tsquery(terms: list[Term]) -> str:
    """A `to_tsquery('simple', ...)` expression: `<->` joins a phrase, `:*` marks a prefix."""
    parts = []
    for term in terms:
        words = list(term.tokens)
        if term.prefix:
            words[-1] += ":*"
        parts.append("(" + " <-> ".join(words) + ")" if len(words) > 1 else words[0])
    return " & ".join(parts)


def bigram_tsquery(terms: list[Term]) -> str | None:
    """The adjacent word pairs of the query's phrases, as a tsquery of bigram lexemes.

    PostgreSQL's index holds each final's adjacent pairs as lexemes of their own ("~budget
    review", migration 0007), so a phrase of two common words reads only the finals that hold
    the pair from the GIN index, not every final holding both words. Every pair of a matching
    phrase is in a matching final's vector, so AND-ing this to `tsquery` changes no result. A
    prefix phrase's last pair matches as a prefix. None when the query has no phrase."""
    pairs = []
    for term in terms:
        for at in range(len(term.tokens) - 1):
            first, second = term.tokens[at], term.tokens[at + 1]
            if not (_indexed_whole(first) and _indexed_whole(second)):
                continue  # no pair for it in the index: the phrase test alone decides
            if len(first.encode()) + len(second.encode()) > MAX_PAIR_BYTES:
                continue
            # Tokens hold letters and digits only: nothing in them needs escaping.
            last = at == len(term.tokens) - 2
            pairs.append(f"'~{first} {second}'" + (":*" if term.prefix and last else ""))
    return " & ".join(pairs) or None


def _indexed_whole(token: str) -> bool:
    """Whether PostgreSQL's index holds `token` as one word: letters and decimal digits only.
    Python counts `²` or `½` as part of a word, PostgreSQL splits there (migration 0007)."""
    return all(ch.isalpha() or ch.isdecimal() for ch in token)


# SQLite scores each final from itself alone (`own_score`): FTS5's bm25 weighs words by the
# whole index, which holds every tenant's finals, so a tenant could count another's words.
MATCH_MARK = "\x01"  # FTS5 `highlight()` opens each match with it (and closes with \x02)
TYPICAL_FINAL_WORDS = 12.0  # the length a final's score is normalised against


def own_score(marked: str) -> float:
    """A final's score from its own text: its matches (marked by FTS5's `highlight()`) against
    its length, as BM25's term-frequency part with every word weighed alike (k1 1.2, b 0.75)."""
    matches = marked.count(MATCH_MARK)
    words = max(1, len(marked.split()))
    norm = 1.2 * (0.25 + 0.75 * words / TYPICAL_FINAL_WORDS)
    return round(matches * 2.2 / (matches + norm), 6)


@dataclass(frozen=True, slots=True)
class SearchPosition:
    """Where a page of search results ended: the last hits' rows shown (this page's and the
    pages' before it), in page order, and the very last one's score."""

    rows: tuple[int, ...]
    score: float


def page_after(
    window: Sequence[tuple[int, float]], after: SearchPosition | None, limit: int
) -> list[tuple[int, float]]:
    """The `limit` best of `window`'s `(row, score)` matches (ties newest row first) ranked after
    `after`.

    The next page starts where the previous one ended, by the score its last hit had then: a
    score is the final's own (nothing else moves it), and a correction of that hit since, which
    scores it anew, would otherwise move the start and skip or repeat every hit between its two
    scores. A hit deleted since leaves no hole; the position's rows (the last hits shown, over
    pages), are not shown again, whatever a correction made of their scores."""
    ranked = sorted(window, key=lambda hit: (hit[1], hit[0]), reverse=True)
    if after is not None and after.rows:
        start, shown = (after.score, after.rows[-1]), set(after.rows)
        ranked = [(row, score) for row, score in ranked if (score, row) < start]
        ranked = [(row, score) for row, score in ranked if row not in shown]
    return ranked[:limit]


@dataclass(frozen=True, slots=True)
class Snippet:
    text: str
    highlights: tuple[tuple[int, int], ...]  # [start, end) character offsets in `text`

    def as_html(self) -> str:
        """`text` escaped, each highlight in <mark>: safe to put into a page as is."""
        out, last = [], 0
        for start, end in self.highlights:
            out.append(html.escape(self.text[last:start]))
            out.append(f"<mark>{html.escape(self.text[start:end])}</mark>")
            last = end
        out.append(html.escape(self.text[last:]))
        return "".join(out)


def _continues(text: str, at: int) -> bool:
    """Whether `text[at]` belongs to the character drawn with the one before it: a combining
    mark, a joiner or what follows one, a variation selector, a skin tone, an emoji tag."""
    char, code = text[at], ord(text[at])
    return (
        unicodedata.category(char).startswith("M")
        or char == "\u200d"
        or text[at - 1] == "\u200d"
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
    )


def snippet(text: str, terms: list[Term], *, width: int = 160) -> Snippet:
    """A window of `text` around its first match, with every matching word marked.

    Matching is word by word on folded text (a prefix term's last token as a prefix), which is
    what both indexes do; a phrase's words are each marked."""
    wanted = {(tok, False) for term in terms for tok in term.tokens[:-1]}
    for term in terms:
        wanted.add((term.tokens[-1], term.prefix))
    spans: list[tuple[int, int]] = []
    for match in _TOKEN.finditer(text):
        word = fold(match.group())
        if any(word == tok or (prefix and word.startswith(tok)) for tok, prefix in wanted):
            spans.append(match.span())
    if len(text) <= width:
        return Snippet(text, tuple(spans))
    first = spans[0][0] if spans else 0
    start = max(0, min(first - width // 4, len(text) - width))
    # Whole words at the window's edges.
    if start > 0:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < first else start
    end = min(len(text), start + width)
    if end < len(text):
        space = text.rfind(" ", start, end)
        # Not before the first match: a matching word longer than the window is cut instead.
        end = space if space > max(start, first) else end
    # Nor inside a character as it is drawn: an emoji sequence, a letter and its marks.
    while 0 < start < first and _continues(text, start):
        start += 1
    while start < end < len(text) and _continues(text, end):
        end += 1
    prefix = "…" if start > 0 else ""
    suffix = "…" if end < len(text) else ""
    window = prefix + text[start:end] + suffix
    shift = len(prefix) - start
    # A match cut by the window's edge is marked as far as it shows.
    inside = tuple(
        (max(a, start) + shift, min(b, end) + shift) for a, b in spans if a < end and b > start
    )
    return Snippet(window, inside)
