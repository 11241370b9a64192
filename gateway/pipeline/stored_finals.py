"""A final as the store takes it from an engine, and a stored final as viewers receive it
(history with `since=`, gap repair)."""

from __future__ import annotations

from fanout.messages import SegmentCorrectedMessage, StoredFinalMessage
from ingest.segments import PendingFinal
from store.base import FinalSegment, NewFinal
from store.catalog import CorrectedFinal


def new_final(
    final: PendingFinal, *, text: str, source: str, stream_id: str, stream_seq: int
) -> NewFinal:
    """`final` for the store: (stream_id, stream_seq) is its idempotency key, so numbering and
    the store give a retried final the same number."""
    return NewFinal(
        text=text,
        start_ms=final.start_ms,
        end_ms=final.end_ms,
        source=source,
        speaker=final.speaker,
        confidence=final.confidence,
        stream_id=stream_id,
        stream_seq=stream_seq,
    )


def final_message(meeting_id: str, segment: FinalSegment) -> bytes:
    return StoredFinalMessage(
        meeting_id=meeting_id,
        segment_no=segment.segment_no,
        text=segment.text,
        start_ms=segment.start_ms,
        end_ms=segment.end_ms,
        speaker=segment.speaker,
        confidence=segment.confidence,
        source=segment.source,
        ts=segment.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        stream_id=segment.stream_id,
        edited_by=segment.edited_by,
    ).encode()


def correction_message(
    meeting_id: str, final: FinalSegment | CorrectedFinal, edited_by: str
) -> bytes:
    """`segment.corrected` for a stored final (an editor's correction, or the final the store
    keeps under a number handed out twice)."""
    return SegmentCorrectedMessage(
        meeting_id=meeting_id,
        segment_no=final.segment_no,
        text=final.text,
        start_ms=final.start_ms,
        end_ms=final.end_ms,
        speaker=final.speaker,
        source=final.source,
        edited_by=edited_by,
        withdrawn_tips=list(final.withdrawn_tips) if isinstance(final, CorrectedFinal) else [],
    ).encode()
