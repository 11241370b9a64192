"""Engine results checked before they become segments (ingest.engines.results), with plain
values."""

from __future__ import annotations

import math

import pytest

from ingest.engines.base import EngineError, EngineEvent, Word
from ingest.engines.results import (
    MAX_MS,
    bounded_ms,
    checked_event,
    checked_final,
    clean_confidence,
    clean_label,
    clean_text,
)
from ingest.segments import PendingFinal


def test_text_keeps_what_every_store_and_viewer_can_hold() -> None:
    assert clean_text("caf\u00e9 \u0928\u092e\u0938\u094d\u0924\u0947 \U0001f600") == (
        "caf\u00e9 \u0928\u092e\u0938\u094d\u0924\u0947 \U0001f600"
    )
    assert clean_text("a\x00b\x1bc\x7fd\x85e\tf") == "abcde\tf"
    assert clean_text("half \ud83d pair \ude00") == "half \ufffd pair \ufffd"
    clean_text("x\ud800").encode("utf-8")  # no longer raises


@pytest.mark.parametrize("value", [None, 12345, ["a"], {"t": "a"}])
def test_a_transcript_that_is_not_text_is_a_malformed_result(value: object) -> None:
    with pytest.raises(EngineError) as caught:
        clean_text(value)
    assert caught.value.reason == "malformed"


def test_labels_and_confidences_of_another_kind_are_left_out() -> None:
    assert clean_label("S1") == "S1" and clean_label(3) is None and clean_label(None) is None
    assert clean_confidence(0.5) == 0.5 and clean_confidence(1) == 1.0
    for value in ("high", 1.5, -0.1, math.nan, True, None):
        assert clean_confidence(value) is None


def test_times_are_whole_milliseconds_within_the_audio() -> None:
    assert bounded_ms(1500.7, 10_000) == 1500
    assert bounded_ms(-20, 10_000) == 0
    assert bounded_ms(3_000_000_000, 10_000) == 10_000
    for value in (math.nan, math.inf, "12", None, True):
        with pytest.raises(EngineError):
            bounded_ms(value, 10_000)


def test_an_event_is_cleaned_whole() -> None:
    event = EngineEvent(
        is_final=True,
        text="he\x00llo",
        start_ms=-5,
        end_ms=3_000_000_000,
        words=(Word("he\x00llo", 10, 99_999_999, confidence=7.0, speaker=2),),  # type: ignore[arg-type]
        speaker="S\x001",
        confidence=math.nan,
    )
    checked = checked_event(event, heard_ms=4000)
    assert checked == EngineEvent(
        is_final=True,
        text="hello",
        start_ms=0,
        end_ms=4000,
        words=(Word("hello", 10, 4000, confidence=None, speaker=None),),
        speaker="S1",
        confidence=None,
    )
    notice = EngineEvent(False, "", 0, 0, notice="language.unsupported")
    assert checked_event(notice) is notice


def test_a_recordings_segment_is_cleaned_within_its_chunk() -> None:
    segment = PendingFinal("a\x00b", start_ms=500, end_ms=MAX_MS * 2, speaker="S0", confidence=2)
    assert checked_final(segment, low_ms=1000, high_ms=9000) == PendingFinal(
        "ab", start_ms=1000, end_ms=9000, speaker="S0", confidence=None
    )
