"""The English-only model's verdict on an `auto` stream, with values (measured: see the module)."""

from __future__ import annotations

from ingest.engines.local.language_check import EnglishCheck


def test_english_speech_is_never_reported() -> None:
    check = EnglishCheck()
    # Read and synthetic English, whole and cut mid-word: -0.08 to -0.31.
    assert not any(check.observe(lp, 3000) for lp in (-0.11, -0.27, -0.24, -0.08, -0.31) * 4)


def test_other_speech_is_reported_once_after_two_doubtful_utterances() -> None:
    check = EnglishCheck()
    assert not check.observe(-1.53, 4000)  # one could be a mumble
    assert not check.observe(-0.68, 3000)  # German that happened to score well
    assert check.observe(-1.47, 4000)
    assert not check.observe(-1.75, 4000)  # said once


def test_short_sounds_and_a_mostly_english_stream_do_not_count() -> None:
    check = EnglishCheck()
    assert not check.observe(-2.0, 600)  # under a second of speech: no evidence
    assert not check.observe(-2.0, 700)
    for _ in range(4):
        assert not check.observe(-0.2, 3000)
    assert not check.observe(-1.4, 3000)
    assert not check.observe(-1.4, 3000)  # 2 doubtful of 6 heard: not half
