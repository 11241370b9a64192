"""The durable outbox of numbered finals: on disk before they are published, drained to the store.

A final is numbered (store.numbering), appended here (an SQLite file, committed with
`synchronous=FULL`, so it survives the process being killed and the machine losing power), then
published; `OutboxWriter` copies entries to the transcript store in the order they were appended,
with `store_numbered_final` (idempotent on (stream_id, stream_seq)), and deletes each once the
store has it. While the database is down entries wait here, with backoff between attempts; a
gateway restarted on the same directory finds them and writes them.

Each process owns one file, `outbox-<id>.<slot>.sqlite3` under `OUTBOX_DIR`, where <id> is a hash
of the database the URL names, not of its spelling (gateways writing to different databases never
drain each other's finals, even in one directory, and a rotated password changes nothing; files
named after the whole URL by earlier versions are taken over too) and <slot> the lowest number
whose lock file `outbox-<id>.<slot>.lock` the process could lock (`flock`, held until it closes
the outbox; the kernel drops it when the process dies). So `serve --workers N` gives each worker
its own file and writer, and a restarted worker takes the slot (and the waiting finals) of the one
that died. Files whose lock nobody holds are orphans: an outbox moves their finals into its own
file at start and every `ADOPT_EVERY_S`, in their order (this also takes over the single shared
`outbox-<id>.sqlite3` of earlier versions). Orphans of another database are left alone, with a
warning at start if they hold finals.
Lock files are never deleted: a slot is only ever claimed through its one lock file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from shared.backoff import backoff_delay
from shared.tasks import cancel_and_wait, detach, shared_task
from store.base import FinalSegment, MeetingDeletedSince, NewFinal, TranscriptStore
from store.errors import refused_for_its_values
from store.urls import database_identity

log = logging.getLogger(__name__)


def _stem(key: str) -> str:
    return f"outbox-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def outbox_name(database_url: str) -> str:
    """The stem of the outbox files for finals bound for the database `database_url` names."""
    return _stem(database_identity(database_url))


def outbox_names(database_url: str) -> tuple[str, ...]:
    """Every stem this database's finals may wait under: its own, and the one earlier versions
    gave (a hash of the whole URL, password included), whose files are taken over."""
    return tuple(dict.fromkeys((outbox_name(database_url), _stem(database_url))))


def outbox_file(database_url: str) -> str:
    """The single shared outbox file of earlier versions (now adopted as an orphan)."""
    return f"{_stem(database_url)}.sqlite3"


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive `flock` on `path`, or None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _claim_slot(directory: Path, name: str) -> tuple[Path, int]:
    """This process's outbox file and the descriptor locking it: the lowest free slot."""
    for slot in itertools.count():
        fd = _try_lock(directory / f"{name}.{slot}.lock")
        if fd is not None:
            return directory / f"{name}.{slot}.sqlite3", fd
    raise AssertionError("unreachable")


# How often an outbox looks for files of dead processes to take over.
ADOPT_EVERY_S = 10.0
# A final's words leave the outbox's files (its write-ahead log, freed pages) at most this long
# after it was written to the store while finals keep coming, and ADOPT_EVERY_S after the last.
SCRUB_EVERY_S = 30.0


# A final as it waits: the queue's rows, and those set aside, have these columns.
_FINAL_COLUMNS = """
    tenant_id TEXT NOT NULL,
    meeting_id TEXT NOT NULL,
    segment_no INTEGER NOT NULL,
    text TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    speaker TEXT,
    confidence REAL,
    stream_id TEXT,
    stream_seq INTEGER,
    created_at TEXT NOT NULL,
    queued_at REAL NOT NULL"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS finals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,{_FINAL_COLUMNS}
);
CREATE INDEX IF NOT EXISTS ix_finals_meeting ON finals (tenant_id, meeting_id, segment_no);
CREATE UNIQUE INDEX IF NOT EXISTS ix_finals_stream ON finals (stream_id, stream_seq);
-- Finals the store refused for their values (store.errors.refused_for_its_values): kept here
-- for an operator, out of the queue, so the finals after them are written.
CREATE TABLE IF NOT EXISTS unwritable (
    id INTEGER PRIMARY KEY,{_FINAL_COLUMNS},
    error TEXT NOT NULL,
    set_aside_at REAL NOT NULL
);
-- Once each, however often set aside or moved over from a dead process's file.
CREATE UNIQUE INDEX IF NOT EXISTS ix_unwritable_stream ON unwritable (stream_id, stream_seq);
-- One row, written to learn whether the file takes writes again after they failed.
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""
_COLUMNS = (
    "tenant_id, meeting_id, segment_no, text, start_ms, end_ms, source, speaker, confidence, "
    "stream_id, stream_seq, created_at, queued_at"
)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A numbered final waiting for the store."""

    tenant_id: str
    meeting_id: str
    segment_no: int
    final: NewFinal
    created_at: datetime
    queued_at: float  # wall clock (time.time()) when it was appended
    id: int = 0  # assigned by the outbox


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A snapshot for stats endpoints and metrics: plain values, no I/O to read."""

    depth: int  # finals waiting for the store
    oldest_age_s: float  # how long the oldest waiting final has waited (0 when empty)
    written: int  # finals this process wrote to the store from the outbox
    write_failures: int  # failed store attempts (each is retried)
    renumbered: int  # finals stored under another number (numbering state was lost)
    unwritable: int  # finals the store refused for their values, set aside in the outbox file
    store_reachable: bool  # the last store attempt succeeded (True before any attempt)


# What an operation on the outbox's file is, for telling whether the file is failing:
# housekeeping (scrubs) may fail harmlessly.
OpRole = Literal["read", "write", "housekeeping"]


class FinalOutbox:
    """The on-disk queue. Blocking SQLite calls run on one worker thread, in call order."""

    def __init__(self, directory: Path, database_url: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._directory, self._name = directory, outbox_name(database_url)
        self._names = outbox_names(database_url)
        self.path, self._lock_fd = _claim_slot(directory, self._name)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="final-outbox")
        self._local = threading.local()
        self._closed = False
        self._failing_since: float | None = None  # the file's operations failed since then
        self._write_failed = False  # and a write among them (a read since does not clear it)
        # Counted here, not by querying: stats are read often and must be cheap.
        depth, oldest = self._run_sync(self._open)
        self._depth = depth
        self._oldest_queued_at: float | None = oldest
        self.unwritable: int = self._run_sync(self._unwritable_count)  # finals set aside
        self.changed = asyncio.Event()  # set on every append (wakes the writer)
        self._unscrubbed = True  # rows deleted since the last scrub (or a file from before)
        self._scrubbed_at = 0.0

    # -- the worker thread's side ------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # committed means on disk
            # A deleted row's bytes are overwritten, not left in free pages: transcripts.
            conn.execute("PRAGMA secure_delete = ON")
            self._local.conn = conn
        return conn

    def _open(self) -> tuple[int, float | None]:
        conn = self._conn()
        conn.executescript(_SCHEMA)
        self._adopt_orphans(compact=True)
        self._report_foreign_files()
        depth, oldest = conn.execute("SELECT count(*), min(queued_at) FROM finals").fetchone()
        return depth, oldest

    def _report_foreign_files(self) -> None:
        """Warn of finals nobody drains: outbox files of another database, or of this one
        spelt differently (another host name or port), whose process is gone."""
        for path in sorted(self._directory.glob("outbox-*.sqlite3")):
            stem = path.name.removesuffix(".sqlite3")
            if stem.startswith(self._names):
                continue
            fd = _try_lock(self._directory / f"{stem}.lock")
            if fd is None:
                continue  # a live gateway drains it
            try:
                with contextlib.closing(
                    sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
                ) as other:
                    (waiting,) = other.execute("SELECT count(*) FROM finals").fetchone()
            except sqlite3.Error:
                continue
            finally:
                os.close(fd)
            if waiting:
                log.warning(
                    "outbox: %s holds %d finals for a database other than DATABASE_URL's (or "
                    "the same one under another host name or port); a gateway started with "
                    "that DATABASE_URL on this OUTBOX_DIR writes them",
                    path.name,
                    waiting,
                )

    def _orphans(self) -> list[tuple[Path, Path]]:
        """Other outbox files of this database, each with the lock file that guards it."""
        found = []
        paths = {p for name in self._names for p in self._directory.glob(f"{name}*.sqlite3")}
        for path in sorted(paths):
            if path == self.path:
                continue
            stem = path.name.removesuffix(".sqlite3")
            found.append((path, self._directory / f"{stem}.lock"))
        return found

    def _adopt_orphans(self, *, compact: bool = False) -> int:
        """Move the finals of every outbox file no live process owns into this one; how many."""
        moved = 0
        for path, lock in self._orphans():
            fd = _try_lock(lock)
            if fd is None:
                continue  # its process is alive and drains it
            try:
                moved += self._move_rows(path, compact=compact)
            except sqlite3.Error as exc:
                log.warning("outbox: could not take over %s (%s)", path.name, exc)
            finally:
                os.close(fd)
        return moved

    def _move_rows(self, path: Path, *, compact: bool = False) -> int:
        """Move a dead process's finals here; with `compact`, rebuild its file afterwards, also
        when it held none (one written before secure_delete may keep deleted finals' words)."""
        orphan = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            orphan.execute("PRAGMA secure_delete = ON")
            has_table = orphan.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'finals'"
            ).fetchone()
            if not has_table:
                return 0
            try:
                self._move_set_aside(orphan)
            except sqlite3.Error as exc:  # its queued finals still come over
                log.warning("outbox: could not take over set-aside finals of %s (%s)", path, exc)
            rows = orphan.execute(f"SELECT {_COLUMNS} FROM finals ORDER BY id").fetchall()
            if not rows:
                if compact:
                    orphan.execute("VACUUM")
                return 0
            conn = self._conn()
            # Committed here before deleted there: a crash in between leaves a copy, and the
            # unique (stream_id, stream_seq) index and the idempotent store write absorb it.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    f"INSERT OR IGNORE INTO finals ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            orphan.execute("DELETE FROM finals")
            if compact:
                orphan.execute("VACUUM")
            log.warning("outbox: took over %d finals left by a dead process", len(rows))
            return len(rows)
        finally:
            orphan.close()

    def _move_set_aside(self, orphan: sqlite3.Connection) -> None:
        """Keep a dead process's set-aside finals here, where they are counted and seen."""
        has_table = orphan.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'unwritable'"
        ).fetchone()
        if not has_table:
            return
        columns = f"{_COLUMNS}, error, set_aside_at"
        rows = orphan.execute(f"SELECT {columns} FROM unwritable ORDER BY id").fetchall()
        if not rows:
            return
        conn = self._conn()
        with conn:  # committed here before deleted there, as `_move_rows` (kept once each)
            conn.execute("BEGIN IMMEDIATE")
            marks = ",".join("?" * (_COLUMNS.count(",") + 3))
            conn.executemany(f"INSERT OR IGNORE INTO unwritable ({columns}) VALUES ({marks})", rows)
        orphan.execute("DELETE FROM unwritable")

    def _adopt(self) -> tuple[int, int, float | None]:
        moved = self._adopt_orphans()
        depth, oldest = (
            self._conn().execute("SELECT count(*), min(queued_at) FROM finals").fetchone()
        )
        return moved, int(depth), oldest

    def _run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._executor.submit(fn, *args).result()

    async def _run(self, fn: Callable[..., Any], *args: Any, role: OpRole = "read") -> Any:
        """`fn` on the file's thread. Its failures are OutboxFileError, told apart from the
        store's (logs, readiness): a write failing, then a read succeeding, is still failing."""
        if self._closed:
            raise OutboxFileError("outbox is closed")
        try:
            result = await asyncio.wrap_future(self._executor.submit(fn, *args))
        except Exception as exc:
            if role != "housekeeping":
                self._failing_since = self._failing_since or time.monotonic()
                self._write_failed = self._write_failed or role == "write"
            raise OutboxFileError(f"{self.path.name}: {type(exc).__name__}: {exc}") from exc
        if role == "write" or (role == "read" and not self._write_failed):
            self._failing_since, self._write_failed = None, False
        return result

    def failing_for_s(self) -> float:
        """How long the file has failed (0 when its last write, or read since, succeeded)."""
        if self._failing_since is None:
            return 0.0
        return time.monotonic() - self._failing_since

    def _append(self, entry: OutboxEntry) -> tuple[int, int, float | None]:
        """The entry's id, then how many finals wait and when the oldest was queued."""
        f = entry.final
        conn = self._conn()
        # OR IGNORE: an append retried after its first attempt timed out (and committed anyway
        # on this thread) finds its row instead of queueing the final twice.
        cursor = conn.execute(
            f"INSERT OR IGNORE INTO finals ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                entry.tenant_id,
                entry.meeting_id,
                entry.segment_no,
                f.text,
                f.start_ms,
                f.end_ms,
                f.source,
                f.speaker,
                f.confidence,
                f.stream_id,
                f.stream_seq,
                entry.created_at.isoformat(),
                entry.queued_at,
            ),
        )
        entry_id = int(cursor.lastrowid or 0)
        if cursor.rowcount == 0:
            row = conn.execute(
                "SELECT id FROM finals WHERE stream_id = ? AND stream_seq = ?",
                (f.stream_id, f.stream_seq),
            ).fetchone()
            entry_id = int(row[0]) if row else 0
        depth, oldest = conn.execute("SELECT count(*), min(queued_at) FROM finals").fetchone()
        return entry_id, int(depth), oldest

    def _oldest(self, limit: int) -> list[OutboxEntry]:
        rows = self._conn().execute(
            f"SELECT id, {_COLUMNS} FROM finals ORDER BY id LIMIT ?", (limit,)
        )
        return [_entry(row) for row in rows]

    def _delete(self, entry_id: int) -> tuple[int, float | None]:
        """How many finals wait now, and when the oldest was queued (counted: rows adopted from
        dead processes' files arrive without an append)."""
        conn = self._conn()
        conn.execute("DELETE FROM finals WHERE id = ?", (entry_id,))
        depth, oldest = conn.execute("SELECT count(*), min(queued_at) FROM finals").fetchone()
        return int(depth), oldest

    def _set_aside(self, entry_id: int, error: str) -> tuple[int, float | None]:
        conn = self._conn()
        with conn:  # one transaction: the final is in exactly one of the two tables
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                f"INSERT OR IGNORE INTO unwritable ({_COLUMNS}, error, set_aside_at) "
                f"SELECT {_COLUMNS}, ?, ? FROM finals WHERE id = ?",
                (error, time.time(), entry_id),
            )
            conn.execute("DELETE FROM finals WHERE id = ?", (entry_id,))
        depth, oldest = conn.execute("SELECT count(*), min(queued_at) FROM finals").fetchone()
        return int(depth), oldest

    def _forget_set_aside(self, tenant_id: str, meeting_id: str) -> int:
        conn = self._conn()
        conn.execute(
            "DELETE FROM unwritable WHERE tenant_id = ? AND meeting_id = ?", (tenant_id, meeting_id)
        )
        return self._unwritable_count()

    def _unwritable_count(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM unwritable").fetchone()[0])

    def _pending_high(self, tenant_id: str, meeting_id: str) -> int:
        # Set-aside finals too: their numbers were given (viewers hold them), and a counter
        # seeded below one would give it again.
        row = (
            self._conn()
            .execute(
                "SELECT max(n) FROM (SELECT max(segment_no) AS n FROM finals"
                " WHERE tenant_id = ? AND meeting_id = ? UNION ALL SELECT max(segment_no)"
                " FROM unwritable WHERE tenant_id = ? AND meeting_id = ?)",
                (tenant_id, meeting_id, tenant_id, meeting_id),
            )
            .fetchone()
        )
        return int(row[0] or 0)

    def _pending_numbers(self, tenant_id: str, meeting_id: str, after: int) -> list[int]:
        rows = self._conn().execute(
            "SELECT segment_no FROM finals WHERE tenant_id = ? AND meeting_id = ?"
            " AND segment_no > ?",
            (tenant_id, meeting_id, after),
        )
        return [int(row[0]) for row in rows]

    def _tenant_backlog(self, tenant_id: str) -> tuple[int, float | None]:
        """This file's and its siblings' (the other worker processes of `serve --workers`, and
        orphans not adopted yet): the replica's backlog, whichever worker is asked."""
        query = "SELECT count(*), min(queued_at) FROM finals WHERE tenant_id = ?"
        depth, oldest = self._conn().execute(query, (tenant_id,)).fetchone()
        for path, _ in self._orphans():
            try:
                sibling = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
                try:
                    more, since = sibling.execute(query, (tenant_id,)).fetchone()
                finally:
                    sibling.close()
            except sqlite3.Error:  # being created or adopted right now: next time
                continue
            depth += more
            if since is not None and (oldest is None or since < oldest):
                oldest = since
        return depth, oldest

    def _probe(self) -> None:
        self._conn().execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)", (time.time(),))

    def _scrub(self) -> None:
        """Copy the write-ahead log into the file and empty it: the log keeps every row
        written, deleted ones too, until it is reset (secure_delete then zeroes them)."""
        busy, _, _ = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:  # a sibling's read of this file (its backlog): the next scrub
            raise sqlite3.OperationalError("outbox log in use")

    def _close_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- the event loop's side ---------------------------------------------------------------

    async def append(self, entry: OutboxEntry) -> int:
        """Append durably; the entry's id (its place in the order)."""
        entry_id, self._depth, self._oldest_queued_at = await self._run(
            self._append, entry, role="write"
        )
        self.changed.set()
        return entry_id

    async def oldest(self, limit: int = 100) -> list[OutboxEntry]:
        return await self._run(self._oldest, limit)

    async def probe(self) -> None:
        """Write a row of its own: once writes failed and none comes (no stream left to append,
        the replica unready), this is how the file is found to take writes again."""
        await self._run(self._probe, role="write")

    async def adopt_orphans(self) -> int:
        """Take over the finals of outbox files whose process died; how many were moved."""
        # Housekeeping: with no orphan it writes nothing, and must not say the file takes writes.
        moved, self._depth, self._oldest_queued_at = await self._run(
            self._adopt, role="housekeeping"
        )
        self.unwritable = await self._run(self._unwritable_count)
        if moved:
            self.changed.set()
        return moved

    async def remove(self, entry_id: int) -> None:
        self._depth, self._oldest_queued_at = await self._run(self._delete, entry_id, role="write")
        self._unscrubbed = True

    async def set_aside(self, entry_id: int, error: str) -> None:
        """Move a final the store refused for its values out of the queue (into the file's
        `unwritable` table, with `error`: what the store said, without the values)."""
        self._depth, self._oldest_queued_at = await self._run(
            self._set_aside, entry_id, error, role="write"
        )
        self.unwritable = await self._run(self._unwritable_count)

    def forget_meeting(self, tenant_id: str, meeting_id: str) -> None:
        """The meeting was deleted: its set-aside finals' words go with it (an erasure), and
        its id used again is numbered from 1 (they no longer seed its counter)."""
        if self.unwritable:
            detach(self._forget(tenant_id, meeting_id), name="outbox-forget")

    async def _forget(self, tenant_id: str, meeting_id: str) -> None:
        try:
            self.unwritable = await self._run(
                self._forget_set_aside, tenant_id, meeting_id, role="write"
            )
        except Exception as exc:  # a full disk, say: the next deletion's forget tries again
            log.warning("outbox: could not forget a deleted meeting's set-aside finals: %s", exc)

    async def scrub(self, *, every_s: float = 0.0) -> None:
        """Remove the words of finals written to the store from the outbox's files, if any were
        since the last scrub and it was `every_s` ago or longer."""
        now = time.monotonic()
        if self._unscrubbed and now - self._scrubbed_at >= every_s:
            self._scrubbed_at = now
            self._unscrubbed = False
            try:
                await self._run(self._scrub, role="housekeeping")
            except BaseException:
                self._unscrubbed = True
                raise

    async def pending_high(self, tenant_id: str, meeting_id: str) -> int:
        """The highest segment_no waiting here for the meeting (0 when none)."""
        return await self._run(self._pending_high, tenant_id, meeting_id)

    async def pending_numbers(self, tenant_id: str, meeting_id: str, after: int) -> list[int]:
        """The segment_nos above `after` waiting here for the meeting."""
        return await self._run(self._pending_numbers, tenant_id, meeting_id, after)

    async def tenant_backlog(self, tenant_id: str) -> dict[str, float]:
        """One tenant's finals waiting in this replica's outbox files: `depth` and
        `oldest_age_s` (for its ops' stats)."""
        depth, oldest = await self._run(self._tenant_backlog, tenant_id)
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        return {"depth": int(depth), "oldest_age_s": round(age, 3)}

    @property
    def depth(self) -> int:
        return self._depth

    def oldest_age_s(self, now: float | None = None) -> float:
        if self._oldest_queued_at is None or self._depth == 0:
            return 0.0
        return max(0.0, (now or time.time()) - self._oldest_queued_at)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.wrap_future(self._executor.submit(self._close_conn))
        self._executor.shutdown(wait=True)
        os.close(self._lock_fd)  # the slot is free for the next process


class OutboxFileError(Exception):
    """The outbox's own file failed (its disk, a lock held elsewhere), not the store."""


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    (
        entry_id,
        tenant_id,
        meeting_id,
        segment_no,
        text,
        start_ms,
        end_ms,
        source,
        speaker,
        confidence,
        stream_id,
        stream_seq,
        created_at,
        queued_at,
    ) = row
    final = NewFinal(
        text=text,
        start_ms=start_ms,
        end_ms=end_ms,
        source=source,
        speaker=speaker,
        confidence=confidence,
        stream_id=stream_id,
        stream_seq=stream_seq,
    )
    created = datetime.fromisoformat(created_at)
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return OutboxEntry(
        tenant_id, meeting_id, segment_no, final, created, queued_at=queued_at, id=entry_id
    )


Renumbered = Callable[[OutboxEntry, FinalSegment], Awaitable[None] | None]


def _error_without_values(exc: BaseException) -> str:
    """The refusal's kind and SQLSTATE: its message may quote the text."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "pgcode", None)
    return f"{type(exc).__name__}, SQLSTATE {code}" if code else type(exc).__name__


ATTEMPT_TIMEOUT_S = 10.0
RETRY_BASE_S = 0.2
RETRY_CAP_S = 5.0
FAILURE_LOG_EVERY_S = 30.0


class OutboxWriter:
    """Copies the outbox to the store in append order, one final at a time, until closed."""

    def __init__(
        self,
        outbox: FinalOutbox,
        store: TranscriptStore,
        *,
        on_renumbered: Renumbered | None = None,
        on_store_write: Callable[[float], None] | None = None,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        retry_base_s: float = RETRY_BASE_S,
        retry_cap_s: float = RETRY_CAP_S,
        idle_s: float = ADOPT_EVERY_S,
    ) -> None:
        self.outbox, self.store = outbox, store
        self._idle_s = idle_s  # quiet this long: look for orphans, scrub
        self._on_renumbered = on_renumbered
        self._on_store_write = on_store_write  # seconds each successful write took (metrics)
        self._attempt_timeout_s = attempt_timeout_s
        self._retry_base_s, self._retry_cap_s = retry_base_s, retry_cap_s
        self._task: asyncio.Task[None] | None = None
        self._written_up_to = 0  # highest entry id known to be in the store
        self._progress = asyncio.Event()
        self.written = 0
        self.write_failures = 0
        self.renumbered = 0
        self.dropped_deleted = 0  # finals whose meeting was deleted after they were made
        self.store_reachable = True
        self._failing_since: float | None = None  # every store write failed since then
        self._last_failure_log = 0.0
        self._last_file_failure_log = -FAILURE_LOG_EVERY_S

    def start(self) -> None:
        if self._task is None:
            self._task = shared_task(self._run(), name="outbox-writer")

    def stats(self) -> OutboxStats:
        return OutboxStats(
            depth=self.outbox.depth,
            oldest_age_s=round(self.outbox.oldest_age_s(), 3),
            written=self.written,
            write_failures=self.write_failures,
            renumbered=self.renumbered,
            unwritable=self.outbox.unwritable,
            store_reachable=self.store_reachable,
        )

    async def wait_written(self, entry_id: int, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for entry `entry_id` to reach the store (or to be dropped, its
        meeting deleted since: nothing is left to wait for); whether it did."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._written_up_to < entry_id:
                    progress = self._progress
                    await progress.wait()
        return self._written_up_to >= entry_id

    def _advance(self, entry_id: int) -> None:
        self._written_up_to = max(self._written_up_to, entry_id)
        self._progress.set()
        self._progress = asyncio.Event()

    async def _run(self) -> None:
        attempt = 0
        while True:
            self.outbox.changed.clear()
            try:
                entries = await self.outbox.oldest()
                for entry in entries:
                    try:
                        await self._write(entry)
                    except Exception as exc:
                        if not refused_for_its_values(exc):
                            raise
                        await self._set_aside(entry, exc)
                    attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
                delay = backoff_delay(attempt, self._retry_base_s, self._retry_cap_s)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            if entries:
                await self._scrub(every_s=SCRUB_EVERY_S)
            else:
                # Idle: now and then, take over what dead processes left (see FinalOutbox), and
                # clear the words of what was written from the files.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_s):
                        await self.outbox.changed.wait()
                if not self.outbox.changed.is_set():
                    with contextlib.suppress(Exception):
                        await self.outbox.adopt_orphans()
                    if self.outbox.failing_for_s() > 0:
                        with contextlib.suppress(Exception):
                            await self.outbox.probe()
                    await self._scrub()

    async def _scrub(self, every_s: float = 0.0) -> None:
        try:
            await self.outbox.scrub(every_s=every_s)
        except Exception as exc:  # a full disk, say: the next scrub tries again
            log.warning("outbox: could not clear written finals from its files: %s", exc)

    async def _write(self, entry: OutboxEntry) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._attempt_timeout_s):
                stored = await self.store.store_numbered_final(
                    entry.tenant_id,
                    entry.meeting_id,
                    entry.segment_no,
                    entry.final,
                    entry.created_at,
                )
        except MeetingDeletedSince:
            # Kept here through the meeting's deletion (a database outage, a replica that
            # died): dropped, or it would bring the meeting back, or join the one later made
            # under its id. The store answered: it is reachable.
            self._reached()
            await self.outbox.remove(entry.id)
            self.dropped_deleted += 1
            self._advance(entry.id)
            log.info(
                "outbox: final %d of meeting %s (tenant %s), made %s, dropped: the meeting was "
                "deleted since",
                entry.segment_no,
                entry.meeting_id,
                entry.tenant_id,
                entry.created_at.isoformat(),
            )
            return
        if self._on_store_write is not None:
            self._on_store_write(time.monotonic() - started)
        self._reached()
        await self.outbox.remove(entry.id)
        self.written += 1
        self._advance(entry.id)
        if stored.segment_no != entry.segment_no:
            self.renumbered += 1
            log.error(
                "outbox: segment_no %d of meeting %s (tenant %s) was already taken; stored as %d",
                entry.segment_no,
                entry.meeting_id,
                entry.tenant_id,
                stored.segment_no,
            )
            if self._on_renumbered is not None:
                result = self._on_renumbered(entry, stored)
                if result is not None:
                    await result

    async def _set_aside(self, entry: OutboxEntry, exc: Exception) -> None:
        """The store answered, refusing this final's values: retrying cannot help, and every
        final after it would wait behind it. Kept in the outbox file for an operator."""
        self._reached()
        error = _error_without_values(exc)
        await self.outbox.set_aside(entry.id, error)
        self._advance(entry.id)
        log.error(
            "outbox: final %d of meeting %s (tenant %s) cannot be stored (%s); set aside in %s, "
            "table unwritable",
            entry.segment_no,
            entry.meeting_id,
            entry.tenant_id,
            error,
            self.outbox.path.name,
        )

    def failing_for_s(self) -> float:
        """How long every attempt to write to the store has failed (0 while the last one
        succeeded)."""
        if self._failing_since is None:
            return 0.0
        return time.monotonic() - self._failing_since

    def _reached(self) -> None:
        if not self.store_reachable:
            log.warning(
                "outbox: store reachable again; writing %d waiting finals", self.outbox.depth
            )
        self.store_reachable, self._failing_since = True, None

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if isinstance(exc, OutboxFileError):  # the store is not to blame
            if now - self._last_file_failure_log >= FAILURE_LOG_EVERY_S:
                self._last_file_failure_log = now
                log.warning("outbox: its file failed (%s); retrying", exc)
            return
        self.write_failures += 1
        self.store_reachable = False
        if self._failing_since is None:
            self._failing_since = now
        # One line when the outage starts, then one every FAILURE_LOG_EVERY_S: no flood, no trace.
        if now - self._last_failure_log >= FAILURE_LOG_EVERY_S or self._failing_since == now:
            self._last_failure_log = now
            log.warning(
                "outbox: store write failed (%s); %d finals waiting, retrying",
                type(exc).__name__,
                self.outbox.depth,
            )

    async def aclose(self, drain_timeout_s: float = 5.0) -> None:
        """Give waiting finals a bounded last chance to reach the store, then stop. Whatever is
        left stays on disk for the next start."""
        if self._task is not None and self.outbox.depth and self.store_reachable:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout_s):
                    while self.outbox.depth and not self._task.done():
                        progress = self._progress
                        await progress.wait()
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if left := self.outbox.depth:
            # Said at the end too, not only at the next start: an outbox on a pod's emptyDir
            # has no next start, and its finals went with the pod unnoticed.
            log.warning(
                "outbox: %d finals left on disk for the next start on this OUTBOX_DIR "
                "(the database did not take them)",
                left,
            )
