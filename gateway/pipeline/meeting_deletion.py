"""Deleting a meeting everywhere, on request or by retention.

A deletion is announced on the bus's control topic, so every replica ends the meeting's open
sockets (viewers and ingest streams: close 4404) and refuses new ones for `TOMBSTONE_S` (and an
upload that began before the deletion, however long its body took). The
replica that deletes then waits for its own streams to finish, deletes the rows (the meeting,
its finals, streams and search index entries: foreign keys cascade) and the meeting's Redis keys,
and sweeps once more after `SWEEP_S`, when every other replica's streams have flushed what they
held. Pub/sub is at-most-once (a replica reconnecting misses what is published meanwhile), so
the sweeps announce the deletion again before deleting: a replica that missed one notice ends
its sockets at the next, and the pass after it deletes what they flushed. A replica that ends
sockets of the meeting on hearing the notice also deletes once they have finished, so what they
flushed goes even if the deleting replica stops before its sweeps. Deleting is idempotent.

The deletion is also written to the shared deletion log (store.deletion_log), which every replica
reads at start and every `LOG_POLL_S`: one that started after the notices, or whose bus link was
down through all of them, refuses the meeting's new connections (and ends any it let in) too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from fanout.bus import Bus, BusUnavailable
from gateway.close_codes import CloseCode
from gateway.observability.logs import get_logger
from gateway.ws.live import ConnectionRegistry
from shared.backoff import backoff_delay
from shared.outage_log import OutageLog
from shared.tasks import cancel_and_wait
from store.deletion_log import DeletionLog, LoggedDeletion

log = get_logger("gateway.pipeline.meeting_deletion")

CONTROL_TOPIC = "control:meetings"
DELETED = "meeting deleted"
TOMBSTONE_S = 120.0  # new connections to a deleted meeting are refused this long
SWEEP_S = 10.0  # a second pass catches finals other replicas flushed while closing
# The sweeps' delays, in SWEEP_S, from the pass before: at 10, 30 and 60 s. All but the last
# announce the deletion again (for a replica that missed the notice) before they delete.
SWEEP_DELAYS = (1, 2, 3)
LOCAL_WAIT_S = 15.0  # this replica's streams of the meeting flush their finals first
# How long a deletion is remembered, for work that began before it and ends after the sweeps
# (an upload whose body took minutes must not bring the meeting back), and how many at most.
REMEMBERED_S = 24 * 3600.0
REMEMBERED_MAX = 100_000
LOG_POLL_S = 10.0  # how often the shared log is read for deletions no notice brought
# How long the shared log keeps a deletion: a final an outbox kept through it (a database
# outage, a replica down) is checked against it when written (store.sql), so it neither brings
# the meeting back nor joins the one later made under its id.
LOG_KEEP_S = 7 * 24 * 3600.0
LOG_PRUNE_S = 600.0  # how often a replica removes the log's rows older than LOG_KEEP_S
LOG_RETRY_CAP_S = 300.0  # a deletion the log did not take is written again at most this far apart
# Each read looks back this far: a row committed well after its time (a deletion logged only at
# its last sweep, 75 s on), or by a replica whose clock is a little behind, is still seen.
LOG_OVERLAP_S = 180.0
LOG_READ_TIMEOUT_S = 10.0  # a read the database does not answer is given up (the next covers it)
# A logged deletion this close to one already heard of is the same one.
SAME_DELETION_S = 5.0
LOG_FIRST_READ_S = 5.0  # at start, the wait for the log before serving without it

Delete = Callable[[str, str], Awaitable[bool]]
# (tenant, meeting, first): the first pass announces the deletion (meeting.deleted webhook).
DeleteRows = Callable[[str, str, bool], Awaitable[bool]]


class MeetingDeletion:
    def __init__(
        self,
        bus: Bus,
        connections: ConnectionRegistry,
        delete_rows: DeleteRows,
        delete_keys: Delete | None = None,
        *,
        sweep_s: float = SWEEP_S,
        local_wait_s: float = LOCAL_WAIT_S,
        deletion_log: DeletionLog | None = None,
        log_poll_s: float = LOG_POLL_S,
    ) -> None:
        self._bus = bus
        self._deletion_log = deletion_log
        self._log_poll_s = log_poll_s
        self._log_outage = OutageLog(log, "deletion log unreadable", "deletion log read again")
        self._connections = connections
        self._delete_rows = delete_rows
        self._delete_keys = delete_keys
        self._sweep_s = sweep_s
        self._local_wait_s = local_wait_s
        self._deleting: set[tuple[str, str]] = set()  # deletions this replica is making
        # Deletions here whose first pass (the one announcing meeting.deleted) has not succeeded.
        self._first_pass_owed: set[tuple[str, str]] = set()
        # When each deletion was last heard of (monotonic), oldest first.
        self._deleted_at: dict[tuple[str, str], float] = {}
        self._sweeps: set[asyncio.Task[None]] = set()
        # Told (tenant, meeting) when a deletion here or on another replica is heard of: work
        # of the meeting that is not a connection (live tips) stops writing it.
        self._listeners: list[Callable[[str, str], None]] = []

    def on_deleted(self, listener: Callable[[str, str], None]) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        """Hear other replicas' deletions, and read those of the last REMEMBERED_S from the log.
        A bus that is down at start (Redis unreachable) does not stop the gateway starting: the
        subscription is retried until it holds; nor does a database that does not answer."""
        try:
            await self._bus.subscribe(CONTROL_TOPIC, self._on_control)
        except BusUnavailable as exc:
            log.warning("other replicas' deletions not heard until the bus is back", error=str(exc))
            self._track(self._subscribe_when_back())
        if self._deletion_log is not None:
            await self._follow_log(self._deletion_log)

    async def _subscribe_when_back(self) -> None:
        for attempt in itertools.count():
            # Short: until it holds, this replica is ready but deaf to other replicas' deletions.
            await asyncio.sleep(backoff_delay(attempt, 0.25, 2.0))
            try:
                await self._bus.subscribe(CONTROL_TOPIC, self._on_control)
            except BusUnavailable:
                continue
            except Exception as exc:  # whatever it is, keep trying: the notices matter
                log.warning("deletion notices not subscribed", error=type(exc).__name__)
                continue
            log.info("other replicas' deletions heard again")
            return

    async def aclose(self) -> None:
        await cancel_and_wait(*self._sweeps)

    def is_deleted(self, tenant_id: str, meeting_id: str) -> bool:
        """Whether the meeting was deleted in the last TOMBSTONE_S (new connections refused)."""
        return self.refused_for_s(tenant_id, meeting_id) > 0

    def refused_for_s(self, tenant_id: str, meeting_id: str) -> float:
        """How much longer new connections to the meeting are refused (0: not deleted lately)."""
        deleted = self._deleted_at.get((tenant_id, meeting_id))
        if deleted is None:
            return 0.0
        return max(0.0, TOMBSTONE_S - (time.monotonic() - deleted))

    def deleted_since(self, tenant_id: str, meeting_id: str, since: float) -> bool:
        """Whether the meeting was deleted at or after `since` (time.monotonic()), up to
        REMEMBERED_S ago."""
        deleted = self._deleted_at.get((tenant_id, meeting_id))
        return deleted is not None and deleted >= since

    async def delete(self, tenant_id: str, meeting_id: str) -> bool:
        """End the meeting's sockets everywhere, then delete what it left; whether rows were
        there to delete."""
        key = (tenant_id, meeting_id)
        self._deleting.add(key)  # its own notice, heard back, schedules no sweep of its own
        try:
            at = datetime.now(UTC)
            self._end_locally(tenant_id, meeting_id)
            await self._announce(tenant_id, meeting_id, at)
            logged = await self._log_deletion(tenant_id, meeting_id, at)
            await self._local_streams_finished(tenant_id, meeting_id)
            # Scheduled before the first pass, so a pass that fails (the client is answered 503
            # and may retry) still leaves the sweeps to announce and delete.
            self._track(self._sweep(tenant_id, meeting_id, at, logged=logged))
            self._first_pass_owed.add(key)
            return await self._delete_everything(tenant_id, meeting_id, first=True)
        finally:
            self._deleting.discard(key)

    def _track(self, sweep: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(sweep)
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    async def _announce(self, tenant_id: str, meeting_id: str, at: datetime) -> None:
        # `deleted_at`: a notice heard again (the sweeps') is the same deletion, and its refusal
        # runs TOMBSTONE_S from then, not from each hearing.
        notice = {
            "event": "meeting.deleted",
            "tenant_id": tenant_id,
            "meeting_id": meeting_id,
            "deleted_at": at.timestamp(),
        }
        try:
            await self._bus.publish(CONTROL_TOPIC, json.dumps(notice).encode())
        except Exception as exc:  # the next sweep announces it again
            log.warning("deletion not announced to other replicas", error=type(exc).__name__)

    def _on_control(self, data: bytes) -> None:
        try:
            notice = json.loads(data)
            tenant_id, meeting_id = notice["tenant_id"], notice["meeting_id"]
        except (ValueError, KeyError, TypeError):
            return
        if notice.get("event") == "meeting.deleted":
            deleted_at = notice.get("deleted_at")
            at = None  # an older replica's notice: deleted now
            if isinstance(deleted_at, int | float) and math.isfinite(deleted_at):
                age = max(0.0, datetime.now(UTC).timestamp() - deleted_at)
                at = time.monotonic() - age
            self._heard_of(str(tenant_id), str(meeting_id), at)

    def _heard_of(self, tenant_id: str, meeting_id: str, at: float | None = None) -> None:
        """Another replica's deletion, by its notice or the log (`at`: when, monotonic)."""
        had_connections = bool(self._connections.of_meeting(tenant_id, meeting_id))
        self._end_locally(tenant_id, meeting_id, at)
        if had_connections and (tenant_id, meeting_id) not in self._deleting:
            # What this replica's own streams flush while they end is deleted here too, so
            # it goes even if the deleting replica stops before its sweeps.
            self._track(self._sweep_own(tenant_id, meeting_id))

    async def _follow_log(self, deletion_log: DeletionLog) -> None:
        since = datetime.now(UTC) - timedelta(seconds=REMEMBERED_S)
        with contextlib.suppress(TimeoutError):
            # Before the replica serves, what was deleted lately is known (a database that does
            # not answer soon is read again in the background).
            async with asyncio.timeout(LOG_FIRST_READ_S):
                since = await self._read_log(deletion_log, since)
        self._track(self._keep_reading_log(deletion_log, since))

    async def _keep_reading_log(self, deletion_log: DeletionLog, since: datetime) -> None:
        pruned_at = -math.inf
        while True:
            if time.monotonic() - pruned_at >= LOG_PRUNE_S:
                try:
                    await deletion_log.forget_before(
                        datetime.now(UTC) - timedelta(seconds=LOG_KEEP_S)
                    )
                    pruned_at = time.monotonic()
                except Exception as exc:  # the database is down: the reads report it
                    log.debug("deletion log not pruned", error=type(exc).__name__)
            await asyncio.sleep(self._log_poll_s)
            since = await self._read_log(deletion_log, since)

    async def _read_log(self, deletion_log: DeletionLog, since: datetime) -> datetime:
        """Act on the deletions logged since `since`; where the next read starts."""
        read_at = datetime.now(UTC)
        try:
            async with asyncio.timeout(LOG_READ_TIMEOUT_S):
                logged = await deletion_log.after(since)
        except Exception as exc:  # the database is down: the next read covers the gap
            self._log_outage.failed(exc)
            return since
        self._log_outage.succeeded()
        for deletion in logged:
            self._read_from_log(deletion, read_at)
        return read_at - timedelta(seconds=LOG_OVERLAP_S)

    def _read_from_log(self, deletion: LoggedDeletion, read_at: datetime) -> None:
        age = max(0.0, (read_at - deletion.deleted_at).total_seconds())
        if age >= REMEMBERED_S:
            return
        at = time.monotonic() - age
        key = (deletion.tenant_id, deletion.meeting_id)
        known = self._deleted_at.get(key)
        if known is not None and known >= at - SAME_DELETION_S:
            return  # heard of already (its notice, or an earlier read)
        if age >= TOMBSTONE_S:
            # Only remembered (an upload begun before it must not bring the meeting back): the
            # meeting's connections now may be of the meeting started again under its id.
            self._remember(*key, at)
            return
        self._heard_of(deletion.tenant_id, deletion.meeting_id, at)

    async def _log_deletion(self, tenant_id: str, meeting_id: str, at: datetime) -> bool:
        """Write the deletion to the shared log; whether it is there (or there is no log)."""
        if self._deletion_log is None:
            return True
        try:
            keep_after = at - timedelta(seconds=LOG_KEEP_S)
            await self._deletion_log.record(tenant_id, meeting_id, at, keep_after=keep_after)
        except Exception as exc:  # the sweeps write it again
            log.warning("deletion not logged", error=type(exc).__name__)
            return False
        return True

    def _end_locally(self, tenant_id: str, meeting_id: str, at: float | None = None) -> None:
        self._remember(tenant_id, meeting_id, at)
        for connection in self._connections.of_meeting(tenant_id, meeting_id):
            connection.end(CloseCode.MEETING_DELETED, DELETED)
        for listener in self._listeners:
            listener(tenant_id, meeting_id)

    def _remember(self, tenant_id: str, meeting_id: str, at: float | None = None) -> None:
        now = time.monotonic()
        known = self._deleted_at.pop((tenant_id, meeting_id), None)  # to the end: oldest first
        at = now if at is None else at  # may be negative: monotonic time starts at boot
        self._deleted_at[(tenant_id, meeting_id)] = at if known is None else max(known, at)
        while self._deleted_at:
            oldest = next(iter(self._deleted_at.items()))
            if now - oldest[1] < REMEMBERED_S and len(self._deleted_at) <= REMEMBERED_MAX:
                break
            del self._deleted_at[oldest[0]]

    async def _local_streams_finished(self, tenant_id: str, meeting_id: str) -> None:
        waiting = [c.finished.wait() for c in self._connections.of_meeting(tenant_id, meeting_id)]
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._local_wait_s):
                    await asyncio.gather(*waiting)

    async def _delete_everything(self, tenant_id: str, meeting_id: str, *, first: bool) -> bool:
        deleted = await self._delete_rows(tenant_id, meeting_id, first)
        if first:  # done: meeting.deleted is raised (a later pass must not raise it again)
            self._first_pass_owed.discard((tenant_id, meeting_id))
        if self._delete_keys is not None:
            await self._delete_keys(tenant_id, meeting_id)
        return deleted

    async def _sweep_own(self, tenant_id: str, meeting_id: str) -> None:
        # After the deleting replica's first pass (which raises meeting.deleted as it removes
        # the meeting's row: a pass here before it would leave nothing for it to announce).
        await asyncio.sleep(self._local_wait_s + self._sweep_s)
        await self._local_streams_finished(tenant_id, meeting_id)
        try:
            if await self._delete_everything(tenant_id, meeting_id, first=False):
                log.info("deletion sweep removed this replica's late rows", meeting_id=meeting_id)
        except Exception as exc:  # the deleting replica's sweeps remain
            log.warning("deletion sweep failed", error=type(exc).__name__)

    async def _sweep(self, tenant_id: str, meeting_id: str, at: datetime, *, logged: bool) -> None:
        # A busy replica may take a while to end its stream and write what was queued.
        for n, delay in enumerate(SWEEP_DELAYS, start=1):
            await asyncio.sleep(delay * self._sweep_s)
            if not logged:
                logged = await self._log_deletion(tenant_id, meeting_id, at)
            if n < len(SWEEP_DELAYS):
                await self._announce(tenant_id, meeting_id, at)
            # Until a first pass has succeeded, a sweep is it (it raises meeting.deleted).
            first = (tenant_id, meeting_id) in self._first_pass_owed
            try:
                if await self._delete_everything(tenant_id, meeting_id, first=first):
                    log.info("deletion sweep removed late rows", meeting_id=meeting_id)
            except Exception as exc:
                log.warning("deletion sweep failed", error=type(exc).__name__)
        self._first_pass_owed.discard((tenant_id, meeting_id))  # every pass failed: given up
        # The log is what keeps an outbox's late finals out for a week (store.sql): written
        # however long the database takes (until this replica stops).
        if logged:
            return
        attempt = 0
        while not logged:
            await asyncio.sleep(backoff_delay(attempt, self._sweep_s, LOG_RETRY_CAP_S))
            attempt += 1
            logged = await self._log_deletion(tenant_id, meeting_id, at)
        # What an outbox wrote before the log could stop it goes too.
        try:
            await self._delete_everything(tenant_id, meeting_id, first=False)
        except Exception as exc:
            log.warning("deletion sweep failed", error=type(exc).__name__)
