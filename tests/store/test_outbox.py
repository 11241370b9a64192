"""The durable outbox: survives reopening, drains in order and idempotently, waits out outages.

Real SQLite files and a throwaway PostgreSQL server that is stopped and started again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from store.base import FinalSegment, NewFinal
from store.deletion_log import DeletionLog
from store.migrate import open_store, upgrade
from store.outbox import FinalOutbox, OutboxEntry, OutboxWriter, outbox_file
from store.sql import SqlTranscriptStore
from tests.private_pg import PrivatePostgres
from tests.util import eventually

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def entry(n: int, meeting: str = "m", stream: str = "s1") -> OutboxEntry:
    final = NewFinal(f"line {n}", n * 1000, n * 1000 + 900, "mic", None, 0.5, stream, n)
    return OutboxEntry("t", meeting, n, final, AT, queued_at=time.time())


@pytest.fixture
async def outbox(tmp_path: Path, sqlite_url: str) -> AsyncIterator[FinalOutbox]:
    box = FinalOutbox(tmp_path / "outbox", sqlite_url)
    yield box
    await box.aclose()


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[SqlTranscriptStore]:
    s = await open_store(sqlite_url)
    yield s
    await s.aclose()


async def test_entries_survive_reopening_and_keep_their_order(
    tmp_path: Path, sqlite_url: str
) -> None:
    box = FinalOutbox(tmp_path / "outbox", sqlite_url)
    for n in (1, 2, 3):
        await box.append(entry(n))
    await box.append(entry(9, meeting="other"))
    assert box.depth == 4 and box.oldest_age_s() >= 0
    await box.aclose()  # as a killed process would leave it: nothing was drained

    again = FinalOutbox(tmp_path / "outbox", sqlite_url)
    try:
        assert again.depth == 4
        waiting = await again.oldest()
        assert [(e.meeting_id, e.segment_no) for e in waiting] == [
            ("m", 1),
            ("m", 2),
            ("m", 3),
            ("other", 9),
        ]
        assert waiting[0].final == entry(1).final and waiting[0].created_at == AT
        assert await again.pending_high("t", "m") == 3
        assert await again.pending_high("t", "nothing") == 0
    finally:
        await again.aclose()


async def test_another_database_gets_another_file(tmp_path: Path, sqlite_url: str) -> None:
    box = FinalOutbox(tmp_path / "outbox", sqlite_url)
    await box.append(entry(1))
    other = FinalOutbox(tmp_path / "outbox", "sqlite+aiosqlite:///elsewhere.db")
    try:
        assert other.depth == 0 and other.path != box.path
    finally:
        await box.aclose()
        await other.aclose()


async def test_writer_drains_in_order_and_a_replayed_entry_is_stored_once(
    outbox: FinalOutbox, store: SqlTranscriptStore
) -> None:
    # Entry 1 reached the store before the process died, but was not removed from the outbox.
    await store.store_numbered_final("t", "m", 1, entry(1).final, AT)
    for n in (1, 2, 3):
        await outbox.append(entry(n))
    writer = OutboxWriter(outbox, store)
    writer.start()
    try:
        await eventually(lambda: outbox.depth == 0, within=10, what="outbox drained")
        assert writer.stats().written == 3 and writer.stats().oldest_age_s == 0
        stored = await store.finals_after("t", "m")
        assert [(s.segment_no, s.text) for s in stored] == [
            (1, "line 1"),
            (2, "line 2"),
            (3, "line 3"),
        ]
        last = await outbox.append(entry(4))
        assert await writer.wait_written(last, timeout_s=10)
        assert await store.last_segment_no("t", "m") == 4
    finally:
        await writer.aclose()


async def test_written_finals_leave_no_words_in_the_outbox_files(
    tmp_path: Path, sqlite_url: str, store: SqlTranscriptStore
) -> None:
    """The privacy tester found a deleted meeting's finals, the engine's words before a
    correction too, in the outbox's write-ahead log 15 minutes later (on a volume that outlives
    the pod): the log keeps what was deleted until it is reset."""
    outbox = FinalOutbox(tmp_path / "outbox", sqlite_url)
    writer = OutboxWriter(outbox, store, idle_s=0.2)
    secret = "quixotic zebracorn"
    for n in (1, 2, 3):
        final = NewFinal(f"{secret} {n}", n * 1000, n * 1000 + 900, "mic", None, 0.5, "s1", n)
        await outbox.append(OutboxEntry("t", "m", n, final, AT, queued_at=time.time()))

    def words_on_disk() -> list[str]:
        files = (tmp_path / "outbox").iterdir()
        return [f.name for f in files if secret.encode() in f.read_bytes()]

    assert words_on_disk()  # before they are written, they are on disk: that is the point
    writer.start()
    try:
        await eventually(lambda: outbox.depth == 0, within=10, what="outbox drained")
        await eventually(lambda: not words_on_disk(), within=30, what="words cleared")
    finally:
        await writer.aclose()
        await outbox.aclose()


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    yield server
    server.destroy()


@contextlib.asynccontextmanager
async def writing_to(
    private_pg: PrivatePostgres, directory: Path
) -> AsyncIterator[tuple[SqlTranscriptStore, FinalOutbox, OutboxWriter]]:
    """A migrated throwaway PostgreSQL's store, an outbox for it and its running writer (which
    retries fast); all closed at the end."""
    await upgrade(private_pg.url)
    store = await open_store(private_pg.url)
    outbox = FinalOutbox(directory, private_pg.url)
    writer = OutboxWriter(outbox, store, attempt_timeout_s=2, retry_cap_s=0.5)
    writer.start()
    try:
        yield store, outbox, writer
    finally:
        await writer.aclose()
        await outbox.aclose()
        await store.aclose()


async def test_writer_waits_out_a_database_outage(
    tmp_path: Path, private_pg: PrivatePostgres
) -> None:
    async with writing_to(private_pg, tmp_path / "outbox") as (store, outbox, writer):
        await outbox.append(entry(1))
        await eventually(lambda: outbox.depth == 0, within=10, what="first final stored")
        private_pg.stop()
        for n in (2, 3, 4):
            await outbox.append(entry(n))
        await eventually(lambda: writer.write_failures > 0, within=20, what="a failed write")
        assert not writer.stats().store_reachable and outbox.depth == 3
        private_pg.start()
        await eventually(lambda: outbox.depth == 0, within=30, what="outbox drained after outage")
        stored = await store.finals_after("t", "m")
        assert [s.segment_no for s in stored] == [1, 2, 3, 4]
        assert writer.stats().store_reachable


async def test_finals_left_at_shutdown_are_reported(
    tmp_path: Path, private_pg: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    # On a pod's emptyDir there is no next start to report them: the shutdown says so.
    async with writing_to(private_pg, tmp_path / "outbox") as (_, outbox, writer):
        private_pg.stop()
        for n in (1, 2):
            await outbox.append(entry(n))
        await eventually(lambda: writer.write_failures > 0, within=20, what="a failed write")
        with caplog.at_level(logging.WARNING, logger="store.outbox"):
            await writer.aclose(drain_timeout_s=0.5)
        assert "outbox: 2 finals left on disk for the next start" in caplog.text


async def test_a_final_whose_number_was_taken_is_renumbered_and_reported(
    outbox: FinalOutbox, store: SqlTranscriptStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Another replica's final already holds number 2 (numbering lost its state meanwhile).
    await store.store_numbered_final("t", "m", 2, entry(2, stream="other").final, AT)
    reported: list[tuple[int, int]] = []

    async def on_renumbered(waiting: OutboxEntry, stored: FinalSegment) -> None:
        reported.append((waiting.segment_no, stored.segment_no))

    writer = OutboxWriter(outbox, store, on_renumbered=on_renumbered)
    writer.start()
    try:
        await outbox.append(entry(2))
        await eventually(lambda: outbox.depth == 0, within=10, what="outbox drained")
        assert reported == [(2, 3)] and writer.stats().renumbered == 1
        assert [s.segment_no for s in await store.finals_after("t", "m")] == [2, 3]
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert said == [
            "outbox: segment_no 2 of meeting m (tenant t) was already taken; stored as 3"
        ]
    finally:
        await writer.aclose()


async def test_a_final_kept_through_its_meetings_deletion_is_dropped(
    outbox: FinalOutbox, store: SqlTranscriptStore
) -> None:
    """The database was away (or this replica dead) while the meeting was deleted, and its id
    used again since: the old final neither comes back nor joins the new meeting."""
    await DeletionLog(store.engine).record(
        "t", "m", AT + timedelta(seconds=5), keep_after=AT - timedelta(days=1)
    )
    await store.store_numbered_final(
        "t", "m", 1, entry(1, stream="new").final, AT + timedelta(minutes=3)
    )
    writer = OutboxWriter(outbox, store)
    writer.store_reachable = False  # as an outage that held the final left it
    writer.start()
    try:
        dropped = await outbox.append(entry(2))  # made at AT, before the deletion
        assert await writer.wait_written(dropped, timeout_s=10)
        assert writer.stats().store_reachable  # the store answered the drop
        kept = await outbox.append(entry(7, meeting="other"))
        assert await writer.wait_written(kept, timeout_s=10)
        assert outbox.depth == 0 and writer.dropped_deleted == 1
        assert [s.stream_id for s in await store.finals_after("t", "m")] == ["new"]
        assert [s.segment_no for s in await store.finals_after("t", "other")] == [7]
    finally:
        await writer.aclose()


async def test_a_retried_append_queues_the_final_once(outbox: FinalOutbox) -> None:
    """An append whose first attempt timed out on the event loop but committed on the outbox's
    thread is retried by the pipeline: the retry finds the row."""
    first = await outbox.append(entry(1))
    again = await outbox.append(entry(1))
    assert again == first and outbox.depth == 1
    assert [e.segment_no for e in await outbox.oldest()] == [1]


async def test_each_process_gets_its_own_file_and_a_dead_ones_finals_are_taken_over(
    tmp_path: Path, sqlite_url: str
) -> None:
    """`serve --workers N`: one file per process (slot locks); a file whose process is gone is
    adopted by a live one (periodically) or by the next process to start."""
    directory = tmp_path / "outbox"
    first = FinalOutbox(directory, sqlite_url)
    second = FinalOutbox(directory, sqlite_url)
    try:
        assert first.path != second.path
        await second.append(entry(1))
        await second.append(entry(2))
        assert first.depth == 0 and second.depth == 2
        assert await first.adopt_orphans() == 0  # its owner is alive: not an orphan
    finally:
        await second.aclose()  # as a dead worker leaves it: its lock is released

    try:
        assert await first.adopt_orphans() == 2
        assert first.depth == 2
        assert [e.segment_no for e in await first.oldest()] == [1, 2]
        assert await first.adopt_orphans() == 0  # moved once
    finally:
        await first.aclose()

    # A process starting after a crash takes the lowest free slot and any orphan's finals, the
    # single shared file of earlier versions included.
    legacy = FinalOutbox(directory, sqlite_url)
    await legacy.append(entry(3, stream="s2"))
    await legacy.aclose()
    legacy.path.rename(directory / outbox_file(sqlite_url))
    again = FinalOutbox(directory, sqlite_url)
    try:
        assert again.path == first.path
        assert sorted(e.segment_no for e in await again.oldest()) == [1, 2, 3]
    finally:
        await again.aclose()


async def test_finals_queued_before_a_password_rotation_are_written_after_it(
    tmp_path: Path,
) -> None:
    """The files are named after the database, not the URL's spelling: a gateway restarted with
    a rotated password (or another user) takes over what waited for the database meanwhile."""
    directory = tmp_path / "outbox"
    before = FinalOutbox(directory, "postgresql+asyncpg://gw:old-secret@db.internal:5432/meetings")
    await before.append(entry(1))
    await before.aclose()
    after = FinalOutbox(directory, "postgres://gw2:new-secret@db.internal:5432/meetings")
    try:
        assert [e.segment_no for e in await after.oldest()] == [1]
    finally:
        await after.aclose()


async def test_files_named_after_the_whole_url_by_earlier_versions_are_taken_over(
    tmp_path: Path, sqlite_url: str
) -> None:
    directory = tmp_path / "outbox"
    old = FinalOutbox(directory, sqlite_url)
    await old.append(entry(1))
    await old.aclose()
    earlier_name = outbox_file(sqlite_url).removesuffix(".sqlite3") + ".0.sqlite3"
    old.path.rename(directory / earlier_name)
    assert not old.path.exists()
    again = FinalOutbox(directory, sqlite_url)
    try:
        assert [e.segment_no for e in await again.oldest()] == [1]
    finally:
        await again.aclose()


async def test_finals_left_for_another_database_are_reported_not_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "outbox"
    other = FinalOutbox(directory, "postgresql+asyncpg://gw@127.0.0.1:5432/meetings")
    await other.append(entry(1))
    await other.aclose()
    with caplog.at_level("WARNING", logger="store.outbox"):
        mine = FinalOutbox(directory, "postgresql+asyncpg://gw@localhost:5432/meetings")
    try:
        assert mine.depth == 0
        assert f"{other.path.name} holds 1 finals for a database other than" in caplog.text
    finally:
        await mine.aclose()


async def test_a_final_the_store_refuses_for_its_values_is_set_aside_not_blocking(
    tmp_path: Path, migrated_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Values the database will never take (each dialect's own; half a surrogate pair cannot
    reach the outbox, whose SQLite refuses it too) are set aside in the outbox file with what
    the store said; the finals after them are written."""
    refused = [NewFinal("sure", 0, 900, "mic", None, "high", "s1", 1)]  # type: ignore[arg-type]
    if migrated_url.startswith("postgresql"):
        refused += [
            NewFinal("nul \x00 in it", 0, 900, "mic", None, None, "s1", 2),
            NewFinal("far", 3_000_000_000, 3_000_000_001, "mic", None, None, "s1", 3),
        ]
    box = FinalOutbox(tmp_path / "outbox", migrated_url)
    store = await open_store(migrated_url)
    writer = OutboxWriter(box, store, retry_base_s=0.01, retry_cap_s=0.05)
    try:
        for n, final in enumerate(refused, start=1):
            await box.append(OutboxEntry("t", "m", n, final, AT, queued_at=time.time()))
        last = await box.append(entry(len(refused) + 1))
        writer.start()
        assert await writer.wait_written(last, timeout_s=30)
        stored = await store.finals_after("t", "m")
        good = len(refused) + 1
        assert [(s.segment_no, s.text) for s in stored] == [(good, f"line {good}")]
        assert box.depth == 0 and box.unwritable == writer.stats().unwritable == len(refused)
        assert writer.store_reachable
        # Their numbers were given: a counter seeded from the outbox does not give them again.
        assert await box.pending_high("t", "m") == len(refused)
    finally:
        await writer.aclose()
        await box.aclose()
        await store.aclose()
    again = FinalOutbox(tmp_path / "outbox", migrated_url)  # kept on disk, counted at start
    beside = FinalOutbox(tmp_path / "outbox", migrated_url)  # another process's slot
    try:
        assert again.unwritable == len(refused) and again.depth == 0
        await again.aclose()  # its process gone: the other takes its set-aside finals over
        await beside.adopt_orphans()
        # This process's own first final, set aside after: its queue id is an adopted row's.
        own = await beside.append(entry(1, meeting="other", stream="s2"))
        await beside.set_aside(own, "refused")
        await beside.adopt_orphans()  # nothing twice
        await beside.aclose()
        beside = FinalOutbox(tmp_path / "outbox", migrated_url)  # counted from the file
        assert beside.unwritable == len(refused) + 1  # nothing overwritten
        # A deleted meeting's set-aside finals go with it, another meeting's stay.
        beside.forget_meeting("t", "m")
        await eventually(lambda: beside.unwritable == 1, within=30, what="m's forgotten")
        assert await beside.pending_high("t", "m") == 0
    finally:
        await again.aclose()
        await beside.aclose()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert logged.count("cannot be stored") == len(refused)
    assert "sure" not in logged and "nul" not in logged and "far" not in logged
