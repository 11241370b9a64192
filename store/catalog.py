"""Meetings as resources: the tenant's meeting list, one meeting's summary, search, and the
edits people make (a title, speaker names, corrected finals).

The interface and its records; `store.catalog_sql` implements it over the transcript store's
database. Finals themselves are written by the transcript store only.
"""

from __future__ import annotations

import abc
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime

from store.base import StreamInfo
from store.search import SearchPosition, Term


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
    title: str | None = None
    speaker_names: dict[str, str] = field(default_factory=dict)  # label -> name
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
class RetentionPosition:
    """A meeting on retention's walk, ordered by (created_at, tenant_id, meeting_id)."""

    created_at: datetime
    tenant_id: str
    meeting_id: str


@dataclass(frozen=True, slots=True)
class SearchFilter:
    meeting_id: str | None = None
    speaker: str | None = None
    since: datetime | None = None  # final stored at or after
    until: datetime | None = None  # final stored before
    meeting_ids: frozenset[str] | None = None
    # Finals stored up to this row (a search's `search_horizon` when its first page was read),
    # so finals stored while someone pages through the results do not shift the pages.
    up_to_row: int | None = None


@dataclass(frozen=True, slots=True)
class MeetingLabels:
    """What people named in a meeting: its title and its speakers."""

    title: str | None
    speaker_names: dict[str, str]  # label -> name

    def name(self, speaker: str | None) -> str | None:
        return None if speaker is None else self.speaker_names.get(speaker, speaker)


@dataclass(frozen=True, slots=True)
class CorrectedFinal:
    segment_no: int
    text: str
    original_text: str  # what the engine said, kept across every later correction
    edited_by: str
    edited_at: datetime
    speaker: str | None
    source: str
    start_ms: int
    end_ms: int
    withdrawn_tips: tuple[int, ...] = ()  # tips citing the final, made from the words replaced


# A title left as it is (None clears it).
KEEP = object()


class TooManySpeakerNames(ValueError):
    """An edit would leave a meeting more speaker names than it may hold."""


class FinalChangedMeanwhile(Exception):
    """A correction made from a text the final no longer has (another editor's came first)."""

    def __init__(self, edited_by: str | None) -> None:
        super().__init__(edited_by)
        self.edited_by = edited_by


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
    row_id: int  # the final's row: a page's last hit is where the next page starts


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
        after: SearchPosition | None = None,
        where: SearchFilter = ANY_FINAL,
    ) -> list[SearchHit]:
        """Finals matching every term, best first (ties newest first), after `after` (see
        `store.search.page_after`)."""

    @abc.abstractmethod
    async def search_horizon(self, tenant_id: str) -> int:
        """The tenant's newest final's row: a search's later pages see nothing stored after it.
        The tenant's own, not the whole store's: the cursor carries it, and another tenant's
        activity must not show in it."""

    @abc.abstractmethod
    async def labels(self, tenant_id: str, meeting_id: str) -> MeetingLabels: ...

    @abc.abstractmethod
    async def delete_meeting(
        self, tenant_id: str, meeting_id: str, *, announce: bool = True
    ) -> bool:
        """Delete the meeting and everything it holds (finals, streams, search entries);
        whether there was anything to delete. With `announce`, a meeting.deleted webhook event
        commits with the deletion."""

    async def forget_deleted(self) -> bool:
        """Clear deleted finals' words from where the database keeps them after the delete
        (an index's unmerged entries, a write-ahead log); whether all of it was done (False:
        readers held the log, try again later). After deletions, not per deletion: it may cost
        work in proportion to the whole store."""
        return True

    @abc.abstractmethod
    def exclusive(self, name: str) -> AbstractAsyncContextManager[bool]:
        """Whether this process holds the cluster-wide lock `name` for the block (never waits:
        another holder makes it False)."""

    @abc.abstractmethod
    async def inactive_meetings(
        self, before: datetime, *, limit: int, after: RetentionPosition | None = None
    ) -> list[RetentionPosition]:
        """Meetings whose last activity is older than `before`, oldest first, from just past
        `after` (the last of the previous batch: one kept is not read again)."""

    @abc.abstractmethod
    async def still_inactive(self, tenant_id: str, meeting_id: str, before: datetime) -> bool:
        """Whether the meeting is (still) one `inactive_meetings(before)` would list."""

    @abc.abstractmethod
    async def edit_meeting(
        self,
        tenant_id: str,
        meeting_id: str,
        *,
        title: str | object | None = KEEP,
        speakers: dict[str, str | None] | None = None,
        max_names: int | None = None,
    ) -> MeetingLabels | None:
        """Set the title and merge speaker names (a None name removes the label's name);
        None if the tenant has no such meeting. Raises TooManySpeakerNames (nothing changed)
        when the merge would leave the meeting more than `max_names` names, and more than it
        had."""

    @abc.abstractmethod
    async def correct_final(
        self,
        tenant_id: str,
        meeting_id: str,
        segment_no: int,
        text: str,
        *,
        editor: str,
        previous_text: str | None = None,
    ) -> CorrectedFinal | None:
        """Replace a stored final's text, keeping the engine's original; None if not stored.
        With `previous_text`, only if that is its text now (else FinalChangedMeanwhile)."""
