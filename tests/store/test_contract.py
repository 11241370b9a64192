"""The `TranscriptStore` contract, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC

import pytest
from sqlalchemy.exc import IntegrityError

from store.base import FinalSegment, NewFinal, StreamProgress
from store.sql import SqlTranscriptStore

from .conftest import FakeClock


def final(n: int, **kw: object) -> NewFinal:
    fields: dict[str, object] = {
        "text": f"line {n}",
        "start_ms": n * 1000,
        "end_ms": n * 1000 + 900,
        "source": "mic",
    }
    fields.update(kw)
    return NewFinal(**fields)  # type: ignore[arg-type]


async def test_claim_meeting_is_idempotent(store: SqlTranscriptStore) -> None:
    assert not await store.meeting_exists("t1", "m1")
    await store.claim_meeting("t1", "m1")
    await store.claim_meeting("t1", "m1")
    assert await store.meeting_exists("t1", "m1")
    assert not await store.meeting_exists("t2", "m1")
    assert await store.last_segment_no("t1", "m1") == 0


async def test_append_numbers_from_one_and_round_trips(store: SqlTranscriptStore) -> None:
    written = [
        await store.append_final(
            "t1",
            "m1",
            final(i, speaker="Ada", confidence=0.5, stream_id="s1", source="system"),
        )
        for i in range(3)
    ]
    assert [f.segment_no for f in written] == [1, 2, 3]
    assert written[0] == FinalSegment(
        segment_no=1,
        text="line 0",
        start_ms=0,
        end_ms=900,
        source="system",
        speaker="Ada",
        confidence=0.5,
        created_at=written[0].created_at,
        stream_id="s1",
    )
    read = await store.finals_after("t1", "m1")
    assert read == written  # including created_at, to the microsecond
    assert all(f.created_at.tzinfo is UTC for f in read)
    assert await store.meeting_exists("t1", "m1")  # appending claims the meeting


async def test_optional_fields_may_be_absent(store: SqlTranscriptStore) -> None:
    await store.append_final("t1", "m1", final(1))
    [seg] = await store.finals_after("t1", "m1")
    assert (seg.speaker, seg.confidence) == (None, None)


async def test_numbering_is_per_meeting_and_per_tenant(store: SqlTranscriptStore) -> None:
    for _ in range(3):
        await store.append_final("tenant-a", "m1", final(0))
    await store.append_final("tenant-b", "m1", final(0, text="b says"))
    await store.append_final("tenant-a", "m2", final(0))

    assert await store.last_segment_no("tenant-a", "m1") == 3
    assert await store.last_segment_no("tenant-b", "m1") == 1
    assert await store.last_segment_no("tenant-a", "m2") == 1
    b_finals = await store.finals_after("tenant-b", "m1")
    assert [(f.segment_no, f.text) for f in b_finals] == [(1, "b says")]
    assert await store.finals_after("tenant-c", "m1") == []


async def test_finals_after_with_after_and_limit(store: SqlTranscriptStore) -> None:
    for i in range(10):
        await store.append_final("t1", "m1", final(i))

    def numbers(finals: list[FinalSegment]) -> list[int]:
        return [f.segment_no for f in finals]

    assert numbers(await store.finals_after("t1", "m1")) == list(range(1, 11))
    assert numbers(await store.finals_after("t1", "m1", after=7)) == [8, 9, 10]
    assert numbers(await store.finals_after("t1", "m1", after=2, limit=3)) == [3, 4, 5]
    assert numbers(await store.finals_after("t1", "m1", limit=1)) == [1]
    assert await store.finals_after("t1", "m1", after=10) == []


async def test_append_with_the_same_stream_position_is_idempotent(
    store: SqlTranscriptStore,
) -> None:
    """A retry after an ambiguous commit returns the stored final instead of a second copy."""
    first = NewFinal("hello", 0, 900, "mic", stream_id="s1", stream_seq=1)
    stored = await store.append_final("acme", "m1", first)
    again = await store.append_final("acme", "m1", first)
    assert again.segment_no == stored.segment_no == 1 and again.text == "hello"
    second = await store.append_final(
        "acme", "m1", NewFinal("world", 1000, 1900, "mic", stream_id="s1", stream_seq=2)
    )
    other_stream = await store.append_final(
        "acme", "m1", NewFinal("hi", 0, 500, "system", stream_id="s2", stream_seq=1)
    )
    assert (second.segment_no, other_stream.segment_no) == (2, 3)
    assert [f.text for f in await store.finals_after("acme", "m1")] == ["hello", "world", "hi"]
    assert (await store.meeting_stats("acme", "m1")).last_segment_no == 3


async def test_failed_append_leaves_no_gap(store: SqlTranscriptStore) -> None:
    await store.append_final("t1", "m1", final(1))
    with pytest.raises(IntegrityError):
        await store.append_final("t1", "m1", final(2, text=None))  # NOT NULL violation
    second = await store.append_final("t1", "m1", final(3))
    assert second.segment_no == 2
    assert (await store.meeting_stats("t1", "m1")).last_segment_no == 2


async def test_meeting_stats(store: SqlTranscriptStore) -> None:
    stats = await store.meeting_stats("t1", "nope")
    assert (stats.final_count, stats.last_segment_no) == (0, 0)
    await store.claim_meeting("t1", "m1")
    assert (await store.meeting_stats("t1", "m1")).final_count == 0
    for i in range(4):
        await store.append_final("t1", "m1", final(i))
    await store.append_final("t2", "m1", final(0))
    stats = await store.meeting_stats("t1", "m1")
    assert (stats.final_count, stats.last_segment_no) == (4, 4)


async def test_last_segment_no_unknown_meeting_is_zero(store: SqlTranscriptStore) -> None:
    assert await store.last_segment_no("t1", "never") == 0


async def open_stream(store: SqlTranscriptStore, stream_id: str, meeting_id: str = "m1") -> None:
    await store.open_stream(
        "t1",
        meeting_id,
        stream_id=stream_id,
        source="mic",
        engine="local",
        sample_rate=16000,
        channels=1,
    )


async def test_stream_starts_place_each_stream_of_a_meeting(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    store = clocked_store
    first = clock.now
    await open_stream(store, "s1")
    clock.advance(2.5)
    await open_stream(store, "s2")
    await store.close_stream("s1", audio_ms=1000, frames=50)  # ended streams count too
    await open_stream(store, "elsewhere", meeting_id="m2")
    assert await store.stream_starts("t1", "m1") == {"s1": first, "s2": clock.now}
    assert await store.stream_starts("t2", "m1") == {}


async def test_a_resumed_stream_is_placed_from_when_its_audio_began(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    """Its row keeps when it connected (the lifecycle reads that); exports place it from when
    its audio began, and one stream is read alone (not the meeting's every stream)."""
    store = clocked_store
    began = clock.now
    clock.advance(40)
    await store.open_stream(
        "t1", "m1", stream_id="s2", source="mic", engine="local", sample_rate=16000,
        channels=1, audio_started_at=began,
    )  # fmt: skip
    assert await store.stream_starts("t1", "m1") == {"s2": began}
    assert await store.stream_start("t1", "m1", "s2", "mic") == began
    assert await store.stream_start("t1", "m1", "nope", "mic") is None
    assert await store.stream_start("t2", "m1", "s2", "mic") is None  # another tenant's meeting
    assert await store.stream_start("t1", "m1", "s2", "system") is None  # another source's
    (live,) = await store.active_streams("t1", "m1", fresh_within_s=60)
    assert live.started_at == clock.now


async def test_final_sources_are_the_meetings_own(store: SqlTranscriptStore) -> None:
    assert await store.final_sources("acme", "m1") == set()
    for source in ("mic", "system", "mic"):
        await store.append_final("acme", "m1", NewFinal("words", 0, 900, source))
    await store.append_final("acme", "m2", NewFinal("words", 0, 900, "upload"))
    await store.append_final("other", "m1", NewFinal("words", 0, 900, "upload"))
    assert await store.final_sources("acme", "m1") == {"mic", "system"}


async def test_stream_lifecycle(clocked_store: SqlTranscriptStore, clock: FakeClock) -> None:
    store = clocked_store
    opened_at = clock.now
    await open_stream(store, "s1")
    assert await store.meeting_exists("t1", "m1")  # opening a stream claims the meeting

    [info] = await store.active_streams("t1", "m1", fresh_within_s=30)
    assert (info.stream_id, info.source, info.engine, info.sample_rate, info.channels) == (
        "s1",
        "mic",
        "local",
        16000,
        1,
    )
    assert (info.audio_ms, info.frames, info.ended_at) == (0, 0, None)
    assert info.started_at == info.updated_at == opened_at
    assert info.started_at.tzinfo is UTC

    clock.advance(10)
    await store.update_streams([StreamProgress("s1", 10_000, 500)])
    [info] = await store.active_streams("t1", "m1", fresh_within_s=30)
    assert (info.audio_ms, info.frames, info.updated_at) == (10_000, 500, clock.now)
    assert info.started_at == opened_at
    assert (info.engine, info.engines) == ("local", ("local",))

    # A failover: the row names the engine serving now, and every engine that served.
    await store.update_streams([StreamProgress("s1", 12_000, 600, ("local", "deepgram"))])
    [info] = await store.active_streams("t1", "m1", fresh_within_s=30)
    assert (info.engine, info.engines, info.audio_ms) == ("deepgram", ("local", "deepgram"), 12_000)
    await store.update_streams([StreamProgress("s1", 13_000, 650)])  # engines not given: kept
    [info] = await store.active_streams("t1", "m1", fresh_within_s=30)
    assert info.engines == ("local", "deepgram")

    clock.advance(5)
    await store.close_stream("s1", audio_ms=15_000, frames=750)
    assert await store.active_streams("t1", "m1", fresh_within_s=3600) == []

    # Late updates after close neither revive the stream nor change its final counters.
    await store.update_streams([StreamProgress("s1", 99, 99)])
    assert await store.active_streams("t1", "m1", fresh_within_s=3600) == []


async def test_active_streams_freshness(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    store = clocked_store
    await open_stream(store, "old")
    clock.advance(20)
    await open_stream(store, "new")
    await open_stream(store, "elsewhere", meeting_id="m2")

    ids = [s.stream_id for s in await store.active_streams("t1", "m1", fresh_within_s=30)]
    assert ids == ["old", "new"]

    clock.advance(15)  # "old" last heard 35 s ago: its replica is presumed dead
    ids = [s.stream_id for s in await store.active_streams("t1", "m1", fresh_within_s=30)]
    assert ids == ["new"]

    await store.update_streams([StreamProgress("old", 1, 1)])  # heard from again
    ids = [s.stream_id for s in await store.active_streams("t1", "m1", fresh_within_s=30)]
    assert ids == ["old", "new"]
    assert await store.active_streams("t2", "m1", fresh_within_s=30) == []


async def test_a_process_refreshes_all_its_streams_in_one_write(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:

    store = clocked_store
    for stream_id in ("a", "b", "c", "ended"):
        await open_stream(store, stream_id)
    await store.close_stream("ended", audio_ms=1, frames=1)
    clock.advance(10)
    await store.update_streams(
        [
            StreamProgress("a", 10_000, 500),
            StreamProgress("b", 9_000, 450, ("local", "deepgram")),  # failed over
            StreamProgress("ended", 99, 99),  # late: left as it is
        ]
    )
    infos = {s.stream_id: s for s in await store.active_streams("t1", "m1", fresh_within_s=30)}
    assert set(infos) == {"a", "b", "c"}
    assert (infos["a"].audio_ms, infos["a"].engines, infos["a"].updated_at) == (
        10_000,
        ("local",),
        clock.now,
    )
    assert (infos["b"].frames, infos["b"].engine, infos["b"].updated_at) == (
        450,
        "deepgram",
        clock.now,
    )
    assert infos["c"].audio_ms == 0 and infos["c"].updated_at < clock.now  # not in the batch
    await store.update_streams([])  # nothing to write: no transaction either


async def test_reopening_a_stream_id_is_a_no_op(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    await open_stream(clocked_store, "s1")
    started = clock.now
    clock.advance(1)
    await open_stream(clocked_store, "s1")
    [info] = await clocked_store.active_streams("t1", "m1", fresh_within_s=30)
    assert info.started_at == started


async def test_healthy(store: SqlTranscriptStore) -> None:
    assert await store.healthy()


async def test_unreachable_database_is_unhealthy_without_raising() -> None:
    store = SqlTranscriptStore("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    try:
        assert await store.healthy() is False
    finally:
        await store.aclose()
