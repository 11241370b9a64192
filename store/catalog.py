"""Meetings as resources: the tenant's meeting list, one meeting's summary, and search.

The interface and its records; `store.sql_catalog` implements it over the transcript store's
database. Reads only: the transcript store owns every write.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime

from store.base import StreamInfo
from store.search import Term


@dataclass(frozen=True, slots=True)
class MeetingSummary:
    meeting_id: str
    created_at: datetime
    last_activity_at: datetime
    duration_ms: int  # audio time covered: the furthest final's end, or a stream's audio
    final_count: int
    last_segment_no: int
    sources: tuple[str, ...]
    engines: tuple[str, ...]
    speakers: tuple[str, ...]
    live: bool  # a stream is running now
    streams: tuple[StreamInfo, ...] = field(default=())  # filled for a single meeting's read


@dataclass(frozen=True, slots=True)
class MeetingFilter:
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    active: bool | None = None  # only meetings with (True) or without (False) a live stream
    meeting_ids: frozenset[str] | None = None  # the token's `meetings` claim, when present


@dataclass(frozen=True, slots=True)
class MeetingPosition:
    """Where a page of the list ends: the list is ordered by (created_at, meeting_id) newest
    first, so a page continues strictly below it and meetings created meanwhile never shift it."""

    created_at: datetime
    meeting_id: str


@dataclass(frozen=True, slots=True)
class SearchFilter:
    meeting_id: str | None = None
    speaker: str | None = None
    since: datetime | None = None  # final stored at or after
    until: datetime | None = None  # final stored before
    meeting_ids: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class SearchHit:
    meeting_id: str
    segment_no: int
    start_ms: int
    end_ms: int
    speaker: str | None
    source: str
    created_at: datetime
    text: str
    score: float  # higher is better; comparable within one result list only


ANY_MEETING = MeetingFilter()
ANY_FINAL = SearchFilter()


class MeetingCatalog(abc.ABC):
    @abc.abstractmethod
    async def list_meetings(
        self,
        tenant_id: str,
        *,
        limit: int,
        after: MeetingPosition | None = None,
        where: MeetingFilter = ANY_MEETING,
        live_within_s: float,
    ) -> list[MeetingSummary]:
        """Up to `limit` meetings, newest first, strictly after `after`."""

    @abc.abstractmethod
    async def meeting(
        self, tenant_id: str, meeting_id: str, *, live_within_s: float
    ) -> MeetingSummary | None:
        """One meeting with its streams; None if the tenant has no such meeting."""

    @abc.abstractmethod
    async def search(
        self,
        tenant_id: str,
        terms: list[Term],
        *,
        limit: int,
        offset: int = 0,
        where: SearchFilter = ANY_FINAL,
    ) -> list[SearchHit]:
        """Finals matching every term, best first (ties in storage order)."""
