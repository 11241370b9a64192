"""A stored final as viewers receive it (history with `since=`, gap repair)."""

from __future__ import annotations

from fanout.messages import TranscriptMessage
from store.base import FinalSegment


def final_message(meeting_id: str, segment: FinalSegment) -> bytes:
    return TranscriptMessage(
        type="transcript.final",
        meeting_id=meeting_id,
        segment_no=segment.segment_no,
        text=segment.text,
        start_ms=segment.start_ms,
        end_ms=segment.end_ms,
        speaker=segment.speaker,
        confidence=segment.confidence,
        source=segment.source,
        ts=segment.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    ).encode()
