from __future__ import annotations

import pytest

from ingest.engines.base import EngineEvent
from ingest.segments import PartialSegment, PendingFinal, SegmentAssembler, normalize_text


def event(
    is_final: bool, text: str, start: int, end: int, speaker: str | None, confidence: float | None
) -> EngineEvent:
    return EngineEvent(
        is_final=is_final,
        text=text,
        start_ms=start,
        end_ms=end,
        speaker=speaker,
        confidence=confidence,
    )


def partial(
    text: str,
    start: int = 0,
    end: int = 500,
    speaker: str | None = None,
    confidence: float | None = None,
) -> EngineEvent:
    return event(False, text, start, end, speaker, confidence)


def final(
    text: str,
    start: int = 0,
    end: int = 900,
    speaker: str | None = None,
    confidence: float | None = None,
) -> EngineEvent:
    return event(True, text, start, end, speaker, confidence)


def test_partials_carry_the_number_their_final_is_expected_to_take() -> None:
    asm = SegmentAssembler(last_segment_no=41)
    assert asm.expected_segment_no == 42
    out = asm.on_event(partial("hello", 100, 400, speaker="A", confidence=0.5))
    assert out == PartialSegment(
        segment_no=42, text="hello", start_ms=100, end_ms=400, speaker="A", confidence=0.5
    )


def test_a_final_becomes_a_pending_final_and_the_store_number_advances_partials() -> None:
    asm = SegmentAssembler()
    assert isinstance(asm.on_event(partial("hello")), PartialSegment)
    out = asm.on_event(final("hello world", 100, 900, speaker="A", confidence=0.8))
    assert out == PendingFinal(
        text="hello world", start_ms=100, end_ms=900, speaker="A", confidence=0.8
    )
    assert asm.expected_segment_no == 1  # unchanged until the store has numbered it
    asm.observe_final(1)
    nxt = asm.on_event(partial("next"))
    assert isinstance(nxt, PartialSegment)
    assert nxt.segment_no == 2


def test_identical_partials_are_dropped() -> None:
    asm = SegmentAssembler()
    assert asm.on_event(partial("one two")) is not None
    assert asm.on_event(partial("one two", end=800)) is None
    assert asm.on_event(partial("  one   two ")) is None  # same after whitespace normalisation
    changed = asm.on_event(partial("one two three"))
    assert isinstance(changed, PartialSegment)
    assert changed.text == "one two three"


def test_a_repeated_partial_after_a_final_is_new() -> None:
    asm = SegmentAssembler()
    asm.on_event(partial("yes"))
    asm.on_event(final("yes"))
    asm.observe_final(1)
    again = asm.on_event(partial("yes"))
    assert isinstance(again, PartialSegment)
    assert again.segment_no == 2


def test_empty_partials_are_dropped_and_do_not_reset_dedupe() -> None:
    asm = SegmentAssembler()
    assert asm.on_event(partial("   ")) is None
    asm.on_event(partial("hi"))
    assert asm.on_event(partial("")) is None
    assert asm.on_event(partial("hi")) is None
    assert asm.open_partial is not None
    assert asm.open_partial.text == "hi"


def test_whitespace_is_normalised() -> None:
    asm = SegmentAssembler()
    out = asm.on_event(final("  so\tmany \n  spaces  "))
    assert isinstance(out, PendingFinal)
    assert out.text == "so many spaces"
    assert normalize_text(" a  b\n") == "a b"
    assert normalize_text("cafe\u0301") == "caf\u00e9"  # composed, as the search indexes need


def test_an_empty_final_without_a_partial_is_dropped() -> None:
    asm = SegmentAssembler()
    assert asm.on_event(final("")) is None
    assert asm.on_event(final(" \n ")) is None


def test_an_empty_final_withdraws_the_open_partial_instead_of_inventing_a_final() -> None:
    asm = SegmentAssembler()
    asm.on_event(partial("half a", 200, 700, speaker="B", confidence=0.4))
    shown = asm.on_event(partial("half a sentence", 200, 1200, speaker="B", confidence=0.4))
    assert isinstance(shown, PartialSegment)
    out = asm.on_event(final("", 0, 1500))
    assert out == PartialSegment(
        segment_no=shown.segment_no, text="", start_ms=200, end_ms=1500, speaker="B",
        confidence=None,
    )  # fmt: skip
    assert asm.open_partial is None
    assert asm.on_event(final("")) is None  # the partial is withdrawn: nothing left to close
    # The next utterance's partial takes the same number: none was used.
    assert asm.on_event(partial("next")).segment_no == shown.segment_no  # type: ignore[union-attr]


def test_a_final_closes_the_open_partial() -> None:
    asm = SegmentAssembler()
    asm.on_event(partial("open"))
    asm.on_event(final("open and shut"))
    assert asm.open_partial is None


def test_another_streams_final_moves_the_expected_number() -> None:
    asm = SegmentAssembler(last_segment_no=3)
    first = asm.on_event(partial("we"))
    assert isinstance(first, PartialSegment)
    assert first.segment_no == 4
    asm.observe_final(4)  # the other source's final took number 4
    # Same words, but under a new number: viewers must learn it, so it is republished.
    moved = asm.on_event(partial("we"))
    assert isinstance(moved, PartialSegment)
    assert moved.segment_no == 5
    assert asm.on_event(partial("we")) is None


def test_observe_final_keeps_the_maximum() -> None:
    asm = SegmentAssembler(last_segment_no=10)
    asm.observe_final(7)  # a late, older notification
    assert asm.expected_segment_no == 11
    asm.observe_final(12)
    asm.observe_final(11)
    assert asm.expected_segment_no == 13


def test_negative_start_is_rejected() -> None:
    with pytest.raises(ValueError):
        SegmentAssembler(last_segment_no=-1)
