"""`store_numbered_final`: finals numbered before they reach the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from store.base import MeetingDeletedSince, NewFinal
from store.deletion_log import DeletionLog
from store.sql import DELETION_FENCE_S, SqlTranscriptStore

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def final(n: int, stream: str = "s1") -> NewFinal:
    return NewFinal(f"line {n}", n * 1000, n * 1000 + 900, "mic", stream_id=stream, stream_seq=n)


async def test_stores_under_the_given_number_and_raises_the_counter(
    store: SqlTranscriptStore,
) -> None:
    stored = await store.store_numbered_final("t", "m", 1, final(1), AT)
    assert stored.segment_no == 1 and stored.created_at == AT
    await store.store_numbered_final("t", "m", 3, final(3), AT)
    await store.store_numbered_final("t", "m", 2, final(2), AT)  # late: counter stays at 3
    assert await store.last_segment_no("t", "m") == 3
    assert [s.segment_no for s in await store.finals_after("t", "m")] == [1, 2, 3]
    assert [s.text for s in await store.finals_after("t", "m")] == ["line 1", "line 2", "line 3"]


async def test_writing_the_same_final_again_stores_it_once(store: SqlTranscriptStore) -> None:
    first = await store.store_numbered_final("t", "m", 1, final(1), AT)
    again = await store.store_numbered_final("t", "m", 1, final(1), AT)
    assert again == first
    stats = await store.meeting_stats("t", "m")
    assert (stats.final_count, stats.last_segment_no) == (1, 1)


async def test_a_number_handed_out_twice_keeps_both_finals(store: SqlTranscriptStore) -> None:
    await store.store_numbered_final("t", "m", 1, final(1, "a"), AT)
    await store.store_numbered_final("t", "m", 2, final(2, "a"), AT)
    # Another stream's final was given number 2 as well (numbering state lost): not overwritten.
    moved = await store.store_numbered_final("t", "m", 2, final(7, "b"), AT)
    assert moved.segment_no == 3 and moved.text == "line 7"
    assert [s.text for s in await store.finals_after("t", "m")] == ["line 1", "line 2", "line 7"]
    assert await store.last_segment_no("t", "m") == 3
    # Its retry finds it under its new number.
    assert (await store.store_numbered_final("t", "m", 2, final(7, "b"), AT)).segment_no == 3


async def test_concurrent_writers_of_one_meeting_never_collide(store: SqlTranscriptStore) -> None:
    async def write(n: int) -> int:
        stored = await store.store_numbered_final("t", "m", n, final(n, f"s{n % 3}"), AT)
        return stored.segment_no

    numbers = await asyncio.gather(*(write(n) for n in range(1, 21)))
    assert sorted(numbers) == list(range(1, 21))
    assert await store.last_segment_no("t", "m") == 20


async def test_legacy_appends_continue_after_numbered_finals(store: SqlTranscriptStore) -> None:
    await store.store_numbered_final("t", "m", 5, final(5), AT)
    appended = await store.append_final("t", "m", NewFinal("next", 0, 1, "mic"))
    assert appended.segment_no == 6


async def test_a_final_made_before_its_meetings_deletion_is_not_stored(
    store: SqlTranscriptStore,
) -> None:
    """A dead replica's outbox kept it through the deletion: it must not bring the meeting
    back, nor join the meeting later made under the same id (as number 1, 2, ...)."""
    log = DeletionLog(store.engine)
    await log.record("t", "gone", AT + timedelta(seconds=1), keep_after=AT - timedelta(days=1))
    with pytest.raises(MeetingDeletedSince):
        await store.store_numbered_final("t", "gone", 2, final(2), AT)
    assert await store.last_segment_no("t", "gone") == 0  # no meeting row made either
    # Made just after the deletion by a replica that heard of it late: the deleted meeting's
    # too (no new connection is let in for 2 minutes), up to DELETION_FENCE_S after it.
    late = AT + timedelta(seconds=1 + DELETION_FENCE_S - 1)
    with pytest.raises(MeetingDeletedSince):
        await store.store_numbered_final("t", "gone", 3, final(3, "late"), late)
    # From the fence on, a final is the new meeting's (its connections are let in by then).
    fence = AT + timedelta(seconds=1 + DELETION_FENCE_S)
    await store.store_numbered_final("t", "gone", 9, final(9, "at-fence"), fence)
    # Made under the id after the deletion (a new meeting): stored.
    await store.store_numbered_final("t", "gone", 1, final(1, "new"), AT + timedelta(minutes=3))
    assert [s.segment_no for s in await store.finals_after("t", "gone")] == [1, 9]
    with pytest.raises(MeetingDeletedSince):
        await store.store_numbered_final("t", "gone", 3, final(3), AT)
    assert [s.segment_no for s in await store.finals_after("t", "gone")] == [1, 9]
    # Another meeting, or another tenant's of that id, is not touched.
    await store.store_numbered_final("t2", "gone", 1, final(1), AT)
    await store.store_numbered_final("t", "kept", 1, final(1), AT)
