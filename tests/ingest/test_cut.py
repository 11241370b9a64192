"""A final made of speech the stream was cut in keeps no word that ran into the cut."""

from __future__ import annotations

from ingest.cut import CUT_GUARD_MS, before_cut
from ingest.engines.base import EngineEvent, Word

WORDS = (
    Word("please", 0, 400),
    Word("call", 450, 700),
    Word("me", 750, 900),
    Word("back", 950, 1200),
)


def final(text: str, end_ms: int, words: tuple[Word, ...] = WORDS) -> EngineEvent:
    return EngineEvent(True, text, 0, end_ms, words, "S0", 0.9)


def test_the_word_running_into_the_cut_is_left_for_the_client_to_resend() -> None:
    kept = before_cut(final("Please call me back.", 1200), cut_ms=1210)
    assert (kept.text, kept.end_ms, [w.text for w in kept.words]) == (
        "Please call me",
        900,
        ["please", "call", "me"],
    )
    assert (kept.start_ms, kept.speaker, kept.confidence) == (0, "S0", 0.9)


def test_every_word_within_the_margin_goes() -> None:
    kept = before_cut(final("Please call me back.", 1200), cut_ms=900 + CUT_GUARD_MS - 1)
    assert (kept.text, kept.end_ms) == ("Please call", 700)


def test_speech_that_ended_before_the_margin_is_kept_as_it_is() -> None:
    event = final("Please call me back.", 1500)
    assert before_cut(event, cut_ms=1200 + CUT_GUARD_MS) is event
    assert before_cut(event, cut_ms=5000) is event


def test_a_final_all_in_the_margin_is_emptied() -> None:
    kept = before_cut(final("Please call me back.", 1200), cut_ms=300)
    assert (kept.text, kept.words, kept.is_final) == ("", (), True)


def test_words_that_do_not_match_the_transcript_give_the_text() -> None:
    kept = before_cut(
        final(
            "Please call me back, now.",
            1200,
            (*WORDS[:3], Word("back,", 950, 1100), Word("now.", 1150, 1200)),
        ),
        cut_ms=1450,
    )
    assert kept.text == "Please call me back, now."  # all clear: unchanged
    odd = final("PLEASE CALL ME BACK SOON", 1200)  # five tokens, four words: the words' text
    assert before_cut(odd, cut_ms=1000).text == "please call"


def test_a_final_without_word_timings_is_kept_whole_or_not_at_all() -> None:
    event = final("please call me back", 1200, words=())
    assert before_cut(event, cut_ms=1200 + CUT_GUARD_MS) is event
    assert before_cut(event, cut_ms=1200 + CUT_GUARD_MS - 1).text == ""


def test_partials_and_empty_finals_pass() -> None:
    partial = EngineEvent(False, "please call", 0, 1200, WORDS[:2])
    empty = EngineEvent(True, "", 0, 1200)
    assert before_cut(partial, cut_ms=1200) is partial
    assert before_cut(empty, cut_ms=1200) is empty
