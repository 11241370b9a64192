"""The search query language, folding and snippets, with plain values."""

from __future__ import annotations

import pytest

from store.search import (
    MAX_QUERY_CHARS,
    QueryError,
    SearchPosition,
    Term,
    bigram_tsquery,
    fold,
    fts5_query,
    own_score,
    page_after,
    parse_query,
    snippet,
    tokens,
    tsquery,
)


def test_folding_maps_every_turkish_i_to_one_letter() -> None:
    assert fold("İSTANBUL") == "istanbul"
    assert fold("IRMAK") == fold("\u0131rmak") == "irmak"
    assert fold("ŞEKER Çok ĞÜÖ") == "şeker çok ğüö"  # other letters keep their marks


def test_words_phrases_and_prefixes() -> None:
    assert parse_query('budget "Q3 review" thurs*') == [
        Term(("budget",)),
        Term(("q3", "review")),
        Term(("thurs",), prefix=True),
    ]
    # Punctuation splits a word into a phrase of its parts, as the indexes split it.
    assert parse_query("Ahmet'in Q3-budget") == [Term(("ahmet", "in")), Term(("q3", "budget"))]


def test_the_query_strings_hold_only_word_characters_and_operators() -> None:
    terms = parse_query('budget "\'; DROP TABLE segments; --" a:bc* (x) NEAR')
    assert fts5_query(terms) == (
        '"budget" AND "drop table segments" AND "a bc"* AND "x" AND "near"'
    )
    assert tsquery(terms) == "budget & (drop <-> table <-> segments) & (a <-> bc:*) & x & near"


def test_phrases_give_their_adjacent_pairs_for_the_index() -> None:
    terms = parse_query('budget "q3 budget review" q3-budg* x')
    assert bigram_tsquery(terms) == "'~q3 budget' & '~budget review' & '~q3 budg':*"
    assert bigram_tsquery(parse_query("budget thurs*")) is None
    # No pair where the index has none: a token PostgreSQL splits (x²y), a pair too long.
    assert bigram_tsquery(parse_query('"x²y z" "a b"')) == "'~a b'"
    assert bigram_tsquery([Term(("a" * 1100, "b" * 1000))]) is None


@pytest.mark.parametrize("query", ["", "   ", '"" *', "-- ;"])
def test_a_query_without_words_is_refused(query: str) -> None:
    with pytest.raises(QueryError, match="at least one word"):
        parse_query(query)


@pytest.mark.parametrize("query", ["a*", "budget b*", "q3-b*", "İ*"])
def test_a_prefix_of_one_letter_is_refused(query: str) -> None:
    with pytest.raises(QueryError, match="at least 2 letters"):
        parse_query(query)


def test_limits() -> None:
    with pytest.raises(QueryError, match="256 characters"):
        parse_query("a" * (MAX_QUERY_CHARS + 1))
    with pytest.raises(QueryError, match="16 terms"):
        parse_query(" ".join(f"w{n}" for n in range(17)))


def test_snippet_marks_each_matching_word_and_escapes_html() -> None:
    terms = parse_query('istanbul "budget review" thu*')
    found = snippet("<b>İstanbul</b> budget review moved to Thursday.", terms)
    marked = [found.text[a:b] for a, b in found.highlights]
    assert marked == ["İstanbul", "budget", "review", "Thursday"]
    assert found.as_html() == (
        "&lt;b&gt;<mark>İstanbul</mark>&lt;/b&gt; <mark>budget</mark> <mark>review</mark> "
        "moved to <mark>Thursday</mark>."
    )


def test_a_long_text_is_cut_around_the_first_match_at_word_edges() -> None:
    text = (
        " ".join(f"word{n}" for n in range(100)) + " budget " + " ".join("tail" for _ in range(50))
    )
    found = snippet(text, parse_query("budget"), width=80)
    assert found.text.startswith("…word") and found.text.endswith("…")
    assert len(found.text) <= 82
    ((a, b),) = found.highlights
    assert found.text[a:b] == "budget"


def test_a_matching_word_longer_than_the_window_is_shown_cut() -> None:
    text = "long " + "x" * 500 + " end"
    found = snippet(text, parse_query("xxxx*"), width=80)
    assert found.text.endswith("…") and len(found.text) <= 82
    ((a, b),) = found.highlights
    assert found.text[a:b] == "x" * (b - a) and b - a >= 70


def test_a_window_is_not_cut_inside_an_emoji_sequence() -> None:
    """A snippet started with WOMAN + ZWJ: a different, broken family emoji (the multilingual
    tester), and ended between a skin tone and its hand."""
    family, thumb = "👨\u200d👩\u200d👧\u200d👦", "👍🏽"
    text = "intro " + family * 30 + "needle" + thumb * 60
    for width in range(60, 90):
        found = snippet(text, parse_query("needle"), width=width)
        shown = found.text.strip("…")
        assert shown.startswith(("👨", "needle")), (width, shown[:3])
        assert shown.endswith(("🏽", "needle")), (width, shown[-3:])
        ((a, b),) = found.highlights
        assert found.text[a:b] == "needle"


def test_the_query_limit_counts_composed_letters() -> None:
    # 200 ü: within MAX_QUERY_CHARS however the client encoded them (decomposed: 400 points).
    assert parse_query("u\u0308" * 200) == parse_query("ü" * 200)


def test_separate_combining_accents_are_one_word_with_their_letter() -> None:
    # As a final typed on macOS or pasted from a file name holds them (NFD); stored finals are
    # composed (NFC), and so is the query.
    assert parse_query("cafe\u0301 bu\u0308tc\u0327e") == parse_query("café bütçe")
    assert tokens("bu\u0308tc\u0327e") == ["bütçe"]


def test_combining_marks_stay_in_their_word() -> None:
    """Devanagari, Thai, pointed Hebrew and Arabic with harakat: a vowel sign, virama or point
    cut the word into letters, so "बीत" matched "बात" on SQLite and whole words missed on
    PostgreSQL (the multilingual tester)."""
    assert tokens("बैठक कल होगी और हिन्दी में बात") == [
        "बैठक", "कल", "होगी", "और", "हिन्दी", "में", "बात",
    ]  # fmt: skip
    assert tokens("การประชุม") == ["การประชุม"]
    assert tokens("מֹשֶׁה שָׁלוֹם") == ["מֹשֶׁה", "שָׁלוֹם"]
    assert tokens("مُحَمَّد") == ["مُحَمَّد"]
    assert parse_query("การประชุม*") == [Term(("การประชุม",), prefix=True)]
    assert tokens("👍\ufe0f ok") == ["ok"]  # a mark alone (an emoji's selector) is no word


def test_a_greek_final_sigma_folds_to_sigma() -> None:
    assert fold("ΟΔΥΣΣΕΑΣ") == fold("οδυσσεας") == fold("ΟΔΥΣΣΕΑΣ".lower()) == "οδυσσεασ"


def test_the_marks_table_is_unicode_14s() -> None:
    """Frozen at Unicode 14.0 (the indexes were built with it): exactly that Python's marks,
    and only marks on a later Python (a mark stays a mark)."""
    import unicodedata

    from store.unicode_marks import MARK_RANGES

    marks = {cp for start, end in MARK_RANGES for cp in range(start, end + 1)}
    running = {cp for cp in range(0x110000) if unicodedata.category(chr(cp)).startswith("M")}
    if unicodedata.unidata_version == "14.0.0":
        assert marks == running
    else:
        assert marks <= running


def test_pages_start_where_the_last_one_ended_by_its_last_hits_score_then() -> None:
    window = [(1, 0.5), (2, 0.9), (3, 0.5), (4, 0.7), (5, 0.1)]
    first = page_after(window, None, 2)
    assert first == [(2, 0.9), (4, 0.7)]
    assert page_after(window, SearchPosition((2, 4), 0.7), 2) == [(3, 0.5), (1, 0.5)]
    # The page's last hit deleted: the page goes on after where it was.
    gone = [(row, score) for row, score in window if row != 4]
    assert page_after(gone, SearchPosition((2, 4), 0.7), 10) == [(3, 0.5), (1, 0.5), (5, 0.1)]
    assert page_after([(1, 0.5), (5, 0.1)], SearchPosition((2, 4), 0.7), 10) == [(1, 0.5), (5, 0.1)]
    assert page_after(window, SearchPosition((5,), 0.1), 10) == []


@pytest.mark.parametrize("now", [0.05, 0.95])
def test_a_correction_of_the_pages_last_hit_moves_no_later_page(now: float) -> None:
    """Its score now lower skipped every hit between its two scores (nine of twelve on the
    search tester's SQLite); higher, repeated the page's hits between them. Nor is it shown
    again itself."""
    window = [(1, 0.5), (2, 0.9), (3, 0.5), (4, now), (5, 0.1), (6, 0.8)]
    assert page_after(window, SearchPosition((2, 6, 4), 0.7), 10) == [(3, 0.5), (1, 0.5), (5, 0.1)]


def test_a_finals_own_score_grows_with_its_matches_and_falls_with_its_length() -> None:
    hit = "\x01{}\x02".format
    one_in_short = own_score(f"the {hit('budget')} was set")
    two_in_short = own_score(f"the {hit('budget')} and {hit('budget')} again")
    one_in_long = own_score(f"the {hit('budget')} " + "word " * 40)
    assert two_in_short > one_in_short > one_in_long > 0
    assert own_score("no marks here") == 0
