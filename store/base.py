"""The transcript store interface and the records it holds."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

# The largest segment number the store holds: `segment_no` (and a meeting's `last_segment_no`)
# are 32-bit INTEGER columns (store/tables.py). Inputs naming a segment number are bounded by it.
MAX_SEGMENT_NO = 2**31 - 1


@dataclass(frozen=True, slots=True)
class NewFinal:
    """A final segment before the store numbers it."""

    text: str
    start_ms: int
    end_ms: int
    source: str  # "mic" | "system"
    speaker: str | None = None
    confidence: float | None = None
    stream_id: str | None = None
    # With stream_id, identifies the final within its stream: appending the same
    # (stream_id, stream_seq) again returns the stored final instead of numbering a new one.
    stream_seq: int | None = None


@dataclass(frozen=True, slots=True)
class FinalSegment:
    segment_no: int
    text: str
    start_ms: int
    end_ms: int
    source: str
    speaker: str | None
    confidence: float | None
    created_at: datetime
    stream_id: str | None = None  # whose audio time start_ms counts (None: unknown)
    edited_by: str | None = None  # who corrected its text last (None: the engine's words)

    @classmethod
    def numbered(cls, segment_no: int, final: NewFinal, created_at: datetime) -> FinalSegment:
        """`final` as stored under `segment_no`."""
        return cls(
            segment_no=segment_no,
            text=final.text,
            start_ms=final.start_ms,
            end_ms=final.end_ms,
            source=final.source,
            speaker=final.speaker,
            confidence=final.confidence,
            created_at=created_at,
            stream_id=final.stream_id,
        )


# An open stream's row is refreshed every STREAM_REFRESH_EVERY_S (with all of its process's,
# gateway/pipeline/stream_row.py); one not refreshed for STREAM_FRESH_WITHIN_S is dead (its
# replica crashed), whatever its `ended_at` says.
STREAM_REFRESH_EVERY_S = 5.0
STREAM_FRESH_WITHIN_S = 15.0


# A stream row's `engine` column holds every engine that served it, in order (after a failover
# "deepgram,local"); `StreamInfo.engine` is the last of them.
ENGINE_SEPARATOR = ","


@dataclass(frozen=True, slots=True)
class StreamInfo:
    stream_id: str
    source: str
    engine: str  # the one serving it now, or that it ended on
    sample_rate: int
    channels: int
    started_at: datetime
    audio_ms: int
    frames: int
    ended_at: datetime | None
    updated_at: datetime
    # When its audio began, for a stream that resumed another: before `started_at`.
    audio_started_at: datetime | None = None
    engines: tuple[str, ...] = ()  # every engine that served it, in order

    @property
    def audio_began(self) -> datetime:
        """Where the stream's audio begins on the meeting's clock (as exports place it)."""
        return self.audio_started_at or self.started_at

    def lost(self) -> StreamInfo:
        """This stream as ended by its last refresh (its replica died; nobody closed its row)."""
        return replace(self, ended_at=self.updated_at)

    @classmethod
    def from_row(cls, fields: Mapping[str, Any]) -> StreamInfo:
        engines = tuple(str(fields["engine"]).split(ENGINE_SEPARATOR))
        return cls(**{**fields, "engine": engines[-1], "engines": engines})


@dataclass(frozen=True, slots=True)
class StreamProgress:
    """A live stream's counters as its row is refreshed with them."""

    stream_id: str
    audio_ms: int
    frames: int
    engines: tuple[str, ...] = ()  # every engine that served it; empty: the row's are kept


@dataclass(frozen=True, slots=True)
class MeetingStats:
    final_count: int
    last_segment_no: int


class MeetingDeletedSince(Exception):
    """The meeting of a final was deleted after the final was made: it is not stored."""


class TranscriptStore(abc.ABC):
    """Meetings are keyed by (tenant_id, meeting_id): tenants never see each other's meetings."""

    @abc.abstractmethod
    async def claim_meeting(self, tenant_id: str, meeting_id: str) -> None:
        """Create the meeting if it does not exist yet (idempotent)."""

    @abc.abstractmethod
    async def meeting_exists(self, tenant_id: str, meeting_id: str) -> bool: ...

    @abc.abstractmethod
    async def open_stream(
        self,
        tenant_id: str,
        meeting_id: str,
        *,
        stream_id: str,
        source: str,
        engine: str,
        sample_rate: int,
        channels: int,
        started_at: datetime | None = None,
        audio_started_at: datetime | None = None,
    ) -> None:
        """Record the start of an ingest stream (claims the meeting too). `started_at`: when it
        started, if not now (a row written after a database outage: exports place the stream's
        audio from it); `audio_started_at`: when its audio began, if before it started (a
        stream resuming another: exports place it from then)."""

    @abc.abstractmethod
    async def update_streams(self, progress: Sequence[StreamProgress]) -> None:
        """Refresh live streams' counters (and their liveness timestamps), and the engines that
        have served each when given (a failover adds one), in one write: a process refreshes
        all of its streams at once. Rows of ended streams are left as they are."""

    @abc.abstractmethod
    async def close_stream(
        self, stream_id: str, *, audio_ms: int, frames: int, engines: Sequence[str] = ()
    ) -> None: ...

    @abc.abstractmethod
    async def active_streams(
        self, tenant_id: str, meeting_id: str, *, fresh_within_s: float
    ) -> list[StreamInfo]:
        """Streams not ended and updated within `fresh_within_s`.

        Older unended ones died with their replica.
        """

    @abc.abstractmethod
    async def stream_starts(self, tenant_id: str, meeting_id: str) -> dict[str, datetime]:
        """When each of the meeting's ingest streams' audio began, by stream id: where exports
        place them on the meeting's clock."""

    @abc.abstractmethod
    async def stream_start(
        self, tenant_id: str, meeting_id: str, stream_id: str, source: str
    ) -> datetime | None:
        """When one stream of the meeting's audio began (as `stream_starts`), None if the
        meeting has no such stream of `source`."""

    @abc.abstractmethod
    async def append_final(self, tenant_id: str, meeting_id: str, final: NewFinal) -> FinalSegment:
        """Persist a final and number it: 1, 2, 3, ... per meeting, gap-free, atomically."""

    @abc.abstractmethod
    async def store_numbered_final(
        self,
        tenant_id: str,
        meeting_id: str,
        segment_no: int,
        final: NewFinal,
        created_at: datetime,
    ) -> FinalSegment:
        """Persist a final numbered elsewhere (store.numbering), idempotently.

        Appending the same (stream_id, stream_seq) again returns the stored final. If another
        final already holds `segment_no` (only after numbering state was lost, see the README),
        nothing is overwritten: this final is stored under the next free number, which the
        returned segment carries. The meeting's last_segment_no never goes backwards.

        Raises MeetingDeletedSince, storing nothing, for a final made before the meeting's
        deletion (store.deletion_log) or within DELETION_FENCE_S after it (store.sql): a final
        an outbox kept through the deletion must not bring the meeting back, nor join the one
        later made under its id.
        """

    @abc.abstractmethod
    async def finals_after(
        self, tenant_id: str, meeting_id: str, after: int = 0, limit: int | None = None
    ) -> list[FinalSegment]:
        """Finals with segment_no > after, ascending."""

    @abc.abstractmethod
    async def final_streams(
        self, tenant_id: str, meeting_id: str
    ) -> list[tuple[str | None, int, int]]:
        """The streams the meeting's finals came from (None: finals stored without one), each
        with the numbers of its first and last final."""

    @abc.abstractmethod
    async def final_sources(self, tenant_id: str, meeting_id: str) -> set[str]:
        """The sources (`mic`, `system`, ...) the meeting's finals came from."""

    @abc.abstractmethod
    async def stream_finals_after(
        self,
        tenant_id: str,
        meeting_id: str,
        stream_id: str | None,
        after: int,
        limit: int,
        through: int,
    ) -> list[FinalSegment]:
        """One stream's finals with after < segment_no <= through (its last: the read walks
        no further), ascending; within a stream that is also start order."""

    @abc.abstractmethod
    def numbered_meetings(self, batch: int = 1000) -> AsyncIterator[list[tuple[str, str]]]:
        """Every (tenant, meeting) with finals stored, `batch` at a time."""

    @abc.abstractmethod
    async def last_segment_no(
        self, tenant_id: str, meeting_id: str, *, live_path: bool = False
    ) -> int:
        """0 when the meeting has no finals (or does not exist). `live_path`: read on the
        connections kept for the live path (a counter's seed, which a final waits on)."""

    @abc.abstractmethod
    async def meeting_stats(self, tenant_id: str, meeting_id: str) -> MeetingStats: ...

    @abc.abstractmethod
    async def healthy(self) -> bool: ...

    @property
    def schema_checked(self) -> bool:
        """Whether the database's schema was found current since this process started (false
        only for a store opened while its database was unreachable, until `healthy` reaches it)."""
        return True

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
