"""Segment assembly, pure: engine events in, what the gateway publishes and stores out.

Finals are numbered per meeting (1, 2, 3, ...) by the meeting's counter (store/numbering.py,
in Redis or this process), not here and not by the database. A partial is published with the
number its final is expected to take: the meeting's last known segment_no + 1. Every final
numbered in the meeting, whichever stream produced it, must be reported through `observe_final`,
and the gateway should report its own final's number before feeding the next event, so partials
stay in step.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from ingest.engines.base import EngineEvent


@dataclass(frozen=True, slots=True)
class PartialSegment:
    segment_no: int
    text: str
    start_ms: int
    end_ms: int
    speaker: str | None
    confidence: float | None


@dataclass(frozen=True, slots=True)
class PendingFinal:
    """A final before the store gives it its segment_no: a live stream's assembled final or a
    recording's segment (`ingest.files.base.FileSegment`), with audio-time offsets."""

    text: str
    start_ms: int
    end_ms: int
    speaker: str | None = None
    confidence: float | None = None


def normalize_text(text: str) -> str:
    """Collapse runs of whitespace (engines emit double spaces, newlines, trailing blanks) and
    compose accents (NFC): the search indexes split a word at a separate combining mark."""
    return unicodedata.normalize("NFC", " ".join(text.split()))


class SegmentAssembler:
    """Per ingest stream. Not thread-safe: one consumer drives it, in event order."""

    def __init__(self, last_segment_no: int = 0) -> None:
        if last_segment_no < 0:
            raise ValueError("last_segment_no must be >= 0")
        self._last_segment_no = last_segment_no
        self._open_partial: PartialSegment | None = None  # shown to viewers, no final yet

    @property
    def expected_segment_no(self) -> int:
        return self._last_segment_no + 1

    @property
    def open_partial(self) -> PartialSegment | None:
        """The last partial published and not yet closed by a final."""
        return self._open_partial

    def observe_final(self, segment_no: int) -> None:
        """A final of this meeting was numbered (ours or another stream's); numbers only grow."""
        self._last_segment_no = max(self._last_segment_no, segment_no)

    def on_event(self, ev: EngineEvent) -> PartialSegment | PendingFinal | None:
        """What to publish for `ev`: a partial (one with empty text withdraws the open partial),
        a final for the store, or nothing."""
        text = normalize_text(ev.text)
        if not ev.is_final:
            return self._partial(ev, text)
        previous, self._open_partial = self._open_partial, None
        if not text:
            if previous is None:
                return None
            # The engine settled on "nothing" after showing words (Whisper heard no speech in
            # what pocketsphinx guessed at, a cough, music): no final is invented from the guess.
            # The viewers' partial is withdrawn with an empty partial of the same number.
            return PartialSegment(
                segment_no=previous.segment_no,
                text="",
                start_ms=previous.start_ms,
                end_ms=max(previous.end_ms, ev.end_ms),
                speaker=previous.speaker,
                confidence=None,
            )
        return PendingFinal(
            text=text,
            start_ms=ev.start_ms,
            end_ms=ev.end_ms,
            speaker=ev.speaker,
            confidence=ev.confidence,
        )

    def _partial(self, ev: EngineEvent, text: str) -> PartialSegment | None:
        if not text:
            return None
        previous = self._open_partial
        segment_no = self.expected_segment_no
        # Same words under the same number tell a viewer nothing new; a new number (another
        # stream's final took ours) does, so it is republished.
        if previous is not None and previous.text == text and previous.segment_no == segment_no:
            return None
        self._open_partial = PartialSegment(
            segment_no=segment_no,
            text=text,
            start_ms=ev.start_ms,
            end_ms=ev.end_ms,
            speaker=ev.speaker,
            confidence=ev.confidence,
        )
        return self._open_partial
