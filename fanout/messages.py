"""Server-to-subscriber messages: the pinned wire envelope, encoded once per publish.

Every message carries the same keys (null where they do not apply) so clients can rely on them:
`type, meeting_id, segment_no, text, start_ms, end_ms, speaker, confidence, source, ts`.
`status` and `error` messages add their own fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    meeting_id: str | None = None
    segment_no: int | None = None
    text: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    speaker: str | None = None
    confidence: float | None = None
    source: str | None = None
    ts: str = Field(default_factory=utc_now_iso)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


class TranscriptMessage(Envelope):
    """A partial or a final. A final names the ingest stream whose audio it transcribes
    (`stream_id`, after every envelope key), so a reconnecting client knows which of its
    streams a final covers even when it missed that stream's `stream.started`."""

    type: Literal["transcript.partial", "transcript.final"]
    meeting_id: str
    segment_no: int
    text: str
    start_ms: int
    end_ms: int
    stream_id: str | None = None

    def encode(self) -> bytes:
        return self.model_dump_json(exclude=self._absent()).encode()

    def _absent(self) -> set[str] | None:
        return None if self.stream_id is not None else {"stream_id"}


class StoredFinalMessage(TranscriptMessage):
    """A final read back from the store (history with `since=`, gap repair): `edited_by` is
    added when someone corrected its text, so a viewer joining later marks it as one watching
    did."""

    type: Literal["transcript.final"] = "transcript.final"
    edited_by: str | None = None

    def _absent(self) -> set[str] | None:
        absent = {"stream_id"} if self.stream_id is None else set()
        if not self.edited_by:
            absent.add("edited_by")
        return absent or None


class StatusMessage(Envelope):
    """Published to a meeting when an ingest stream starts or ends, or switches engines
    (`engine.switched`: `engine` is the new one, `previous_engine` and `reason` say why)."""

    type: Literal["status"] = "status"
    # "language.unsupported": a `language: auto` stream on an English-only engine sounds like
    # another language (reason "not_english").
    event: Literal["stream.started", "stream.ended", "engine.switched", "language.unsupported"]
    stream_id: str
    engine: str | None = None
    previous_engine: str | None = None
    reason: str | None = None


class SinceBeyondMessage(Envelope):
    """Sent to one viewer, first, when its `since=N` is above every number the meeting has
    handed out: the meeting it followed was deleted and its id used again (or N is another
    meeting's). The finals it holds are not this meeting's: it should drop them and subscribe
    again with since=0 (what follows here are the finals after `last_segment_no`)."""

    type: Literal["status"] = "status"
    event: Literal["since.beyond"] = "since.beyond"
    meeting_id: str
    since: int
    last_segment_no: int


class MeetingUpdatedMessage(Envelope):
    """Published when a meeting's title or speaker names change: viewers relabel in place."""

    type: Literal["status"] = "status"
    event: Literal["meeting.updated"] = "meeting.updated"
    meeting_id: str
    title: str | None = None
    speaker_names: dict[str, str]


class SegmentCorrectedMessage(Envelope):
    """Published when a stored final's text is corrected: viewers replace that line's text. With
    `edited_by` "gateway" it is the whole final the store keeps under a number handed out twice
    (it replaces the line, or is the final for a viewer that does not hold the number)."""

    type: Literal["status"] = "status"
    event: Literal["segment.corrected"] = "segment.corrected"
    meeting_id: str
    segment_no: int
    text: str
    edited_by: str
    # Live tips citing the final, withdrawn with the words they were made from: drop them.
    withdrawn_tips: list[int] = Field(default_factory=list)


class TipMessage(Envelope):
    """A live tip (`ai.tip`): a decision, action item, question or summary found in the meeting's
    finals, with the finals it comes from (`segment_nos`). Numbered per meeting (`tip_no`):
    a viewer may receive one twice (a resume with since=), and keeps it once."""

    type: Literal["ai.tip"] = "ai.tip"
    meeting_id: str
    tip_no: int
    kind: Literal["decision", "action_item", "question", "summary"]
    text: str
    owner: str | None = None
    due: str | None = None
    segment_nos: list[int]


class NotesReadyMessage(Envelope):
    """Published when a meeting's post-meeting notes are stored: viewers (and apps) fetch them
    from `GET /api/v1/meetings/{id}/notes`. Ids and counts only, no notes text."""

    type: Literal["status"] = "status"
    event: Literal["notes.ready"] = "notes.ready"
    meeting_id: str
    backend: str
    finals: int


class RecordingStatusMessage(Envelope):
    """Published to a meeting as a recording job moves (stage, progress, the end), so viewers
    can show a progress bar per job (docs/protocol.md, "Recording status")."""

    type: Literal["status"] = "status"
    kind: Literal["recording"] = "recording"
    job_id: str
    status: str  # queued | running | succeeded | failed | cancelled
    stage: str
    progress: float  # 0..1 of the audio
    audio_ms_done: int
    audio_ms_total: int
    engine: str | None = None
    error: str | None = None


class ErrorMessage(Envelope):
    type: Literal["error"] = "error"
    code: int
    message: str
    reason: str | None = None  # a machine-readable cause where one is defined: "engine_unavailable"


class PongMessage(Envelope):
    type: Literal["pong"] = "pong"


class RefreshedMessage(Envelope):
    """The answer to `{"type": "refresh", "token": ...}`: the connection's new expiry."""

    type: Literal["refreshed"] = "refreshed"
    exp: int  # seconds since the epoch
