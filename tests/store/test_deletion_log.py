"""The shared deletion log: what one replica writes, another reads; old rows are forgotten."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from store.deletion_log import DeletionLog, LoggedDeletion
from store.sql import SqlTranscriptStore


async def test_deletions_are_read_back_in_order_and_forgotten_when_old(
    store: SqlTranscriptStore,
) -> None:
    deletions = DeletionLog(store.engine)
    t0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    day_before = t0 - timedelta(days=1)
    await deletions.record("acme", "old", day_before, keep_after=day_before - timedelta(days=1))
    await deletions.record("acme", "m2", t0 + timedelta(seconds=2), keep_after=day_before)
    await deletions.record("other", "m1", t0 + timedelta(seconds=1), keep_after=day_before)
    assert await deletions.after(day_before) == [
        LoggedDeletion("acme", "old", day_before),
        LoggedDeletion("other", "m1", t0 + timedelta(seconds=1)),
        LoggedDeletion("acme", "m2", t0 + timedelta(seconds=2)),
    ]
    assert [d.meeting_id for d in await deletions.after(t0 + timedelta(seconds=2))] == ["m2"]

    # A meeting deleted again moves to its new time; rows before `keep_after` go.
    await deletions.record("other", "m1", t0 + timedelta(seconds=3), keep_after=t0)
    assert await deletions.after(day_before) == [
        LoggedDeletion("acme", "m2", t0 + timedelta(seconds=2)),
        LoggedDeletion("other", "m1", t0 + timedelta(seconds=3)),
    ]
    # A sweep's retry of an older deletion does not move the time back.
    await deletions.record("other", "m1", t0 + timedelta(seconds=1), keep_after=t0)
    assert (await deletions.after(t0 + timedelta(seconds=3)))[0].deleted_at == t0 + timedelta(
        seconds=3
    )
