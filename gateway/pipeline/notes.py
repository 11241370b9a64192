"""The notes worker: makes post-meeting notes that were requested (store.notes) and stores them.

A request comes from a meeting's move to `ended` (no stream for MEETING_IDLE_S), a recording
job's success, or `POST /api/v1/meetings/{id}/notes`. Each replica's worker claims requests
with a lease, NOTES_CONCURRENCY at a time and one of each tenant, reads the meeting's finals in
batches (speaker names applied), asks the insights backend for notes (INSIGHTS_BACKEND), saves
them with their `notes.ready` webhook event and publishes a `notes.ready` status on the meeting.
A backend that cannot answer is retried with backoff, up to NOTES_MAX_ATTEMPTS. No transcript
text is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict

from sqlalchemy.exc import SQLAlchemyError

from fanout.bus import Bus
from fanout.messages import NotesReadyMessage
from fanout.topics import status_topic
from gateway.observability.logs import get_logger
from gateway.observability.metrics import Metrics
from ingest.insights.base import (
    BackendResting,
    FinalLine,
    InsightsBackend,
    InsightsUnavailable,
    MeetingNotes,
)
from ingest.insights.rules import notes_of
from shared.backoff import backoff_delay
from shared.outage_log import OutageLog
from shared.tasks import cancel_and_wait, run_to_end
from store.base import TranscriptStore
from store.catalog import MeetingCatalog
from store.errors import DATABASE_UNREACHABLE
from store.notes import NotesClaim, NotesStore

log = get_logger("gateway.pipeline.notes")

Preview = tuple[MeetingNotes, int]  # the notes, and how many finals they were made of

READ_BATCH = 500  # finals read per query
RETRY_BASE_S = 10.0
RETRY_CAP_S = 600.0
# One meeting's notes (reading its finals, every backend call of a long meeting's map-reduce).
NOTES_DEADLINE_S = 900.0
# The claim's lease, renewed every LEASE_RENEW_S while the notes are being made: a replica that
# dies leaves its request to another within LEASE_S; one that stops gives it back at once.
LEASE_S = 60.0
LEASE_RENEW_S = 20.0


async def meeting_lines(
    store: TranscriptStore, catalog: MeetingCatalog, tenant_id: str, meeting_id: str
) -> list[FinalLine]:
    """The meeting's stored finals as insights read them, speakers named as people named them."""
    labels = await catalog.labels(tenant_id, meeting_id)
    lines: list[FinalLine] = []
    position = 0
    while batch := await store.finals_after(tenant_id, meeting_id, position, limit=READ_BATCH):
        lines.extend(
            FinalLine(f.segment_no, f.text, f.start_ms / 1000, labels.name(f.speaker), f.source)
            for f in batch
        )
        position = batch[-1].segment_no
    return lines


def notes_body(notes: object) -> dict[str, object]:
    """The stored and served shape: summary, decisions, action_items, questions."""
    body = asdict(notes)  # type: ignore[call-overload]
    return {key: body[key] for key in ("summary", "decisions", "action_items", "questions")}


class NotesWorker:
    def __init__(
        self,
        notes: NotesStore,
        store: TranscriptStore,
        catalog: MeetingCatalog,
        backend: InsightsBackend,
        bus: Bus,
        metrics: Metrics,
        *,
        owner: str,
        deadline_s: float,
        poll_s: float,
        max_attempts: int,
        renew_s: float = LEASE_RENEW_S,
        concurrency: int = 1,
    ) -> None:
        self._notes, self._store, self._catalog = notes, store, catalog
        self._backend, self._bus, self._metrics = backend, bus, metrics
        self._owner = owner
        self._deadline_s = deadline_s
        self._poll_s = poll_s
        self._max_attempts = max_attempts
        self._renew_s = renew_s
        self._concurrency = concurrency
        self._tasks: list[asyncio.Task[None]] = []
        # Tenants whose notes this replica is making: one at a time each, so a tenant's long
        # meeting (a hundred calls of a slow model) holds one of the slots, not every tenant.
        self._making_for: set[str] = set()
        self._claiming = asyncio.Lock()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._loop(), name=f"notes-{n}") for n in range(self._concurrency)
        ]

    async def aclose(self) -> None:
        """Stop; a claimed request is given back (or claimed again when its lease lapses)."""
        await asyncio.gather(*(cancel_and_wait(task) for task in self._tasks))

    async def _loop(self) -> None:
        outage = OutageLog(log, "notes rounds failing")
        while True:
            try:
                made = await self.run_once()
            except Exception as exc:  # a database outage: the requests wait in the database
                outage.failed(exc)
                made = False
            else:
                outage.succeeded()
            if not made:
                await asyncio.sleep(self._poll_s)

    async def run_once(self) -> bool:
        """Make one requested meeting's notes; whether there was one to make."""
        async with self._claiming:  # one slot's claim at a time: each sees the others' tenants
            claim = await self._notes.claim(
                self._owner, lease_s=LEASE_S, other_than=frozenset(self._making_for)
            )
            if claim is None:
                return False
            self._making_for.add(claim.tenant_id)
        try:
            return await self._run(claim)
        finally:
            self._making_for.discard(claim.tenant_id)

    async def _run(self, claim: NotesClaim) -> bool:
        loop = asyncio.get_running_loop()
        settling = asyncio.Event()  # made or failed: saving now, which ends the lease itself
        making = loop.create_task(self._make(claim, settling))
        renewing = loop.create_task(self._renew(claim, making, settling))
        try:
            await asyncio.wait({making})
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # a database error it ended with meanwhile
                await cancel_and_wait(making)
            # To its end (cancel_and_wait cancels again meanwhile); the database's own timeouts
            # bound it, and if it fails the lease lapses within LEASE_S.
            with contextlib.suppress(Exception):
                await run_to_end(self._notes.release(claim, self._owner))
            raise
        finally:
            await cancel_and_wait(renewing)
        if not making.cancelled():  # cancelled: the lease went to another replica
            making.result()  # the database's errors reach the loop
        return True

    async def _renew(
        self, claim: NotesClaim, making: asyncio.Task[None], settling: asyncio.Event
    ) -> None:
        while True:
            await asyncio.sleep(self._renew_s)
            if settling.is_set():
                return
            try:
                held = await self._notes.renew(claim, self._owner, lease_s=LEASE_S)
            except Exception:  # a database blip: the next renewal
                continue
            if not held and not settling.is_set():
                # Renewals failed past the lease and another replica took it over (not the
                # save or failure of this one, which releases the lease itself).
                log.warning(
                    "notes lease lost: another replica makes them", meeting_id=claim.meeting_id
                )
                making.cancel()
                return

    async def _make(self, claim: NotesClaim, settling: asyncio.Event) -> None:
        deadline = asyncio.timeout(self._deadline_s)
        try:
            async with deadline:
                lines = await meeting_lines(
                    self._store, self._catalog, claim.tenant_id, claim.meeting_id
                )
                notes = await self._backend.notes(lines, "auto")
        except Exception as exc:  # every failure of the notes is an attempt: none stays pending
            if isinstance(exc, InsightsUnavailable):
                result, error = "unavailable", f"{type(exc).__name__}: {exc}"
            elif deadline.expired():
                result, error = "timeout", f"the notes took more than {self._deadline_s:g} s"
            elif isinstance(exc, (*DATABASE_UNREACHABLE, SQLAlchemyError)):
                raise  # the database's: the request is claimed again once its lease lapses
            else:  # its message could quote what it failed on: the type only
                result, error = "error", type(exc).__name__
                log.warning("notes failed unexpectedly", error=error)
                log.debug("notes failure", exc_info=True)
            self._metrics.insights_call(self._backend.name, "notes", result)
            settling.set()
            await self._failed(
                claim,
                error,
                retry_after_s=getattr(exc, "retry_after_s", 0.0),
                # Refused unasked (the breaker open after other calls): no attempt spent.
                counts=not isinstance(exc, BackendResting),
            )
            return
        self._metrics.insights_call(self._backend.name, "notes", "ok")
        settling.set()
        ready = await self._notes.save(
            claim, self._owner, backend=notes.backend, body=notes_body(notes), finals=len(lines)
        )
        if ready:
            log.info(
                "notes ready",
                tenant=claim.tenant_id,
                meeting_id=claim.meeting_id,
                backend=notes.backend,
            )
            message = NotesReadyMessage(
                meeting_id=claim.meeting_id, backend=notes.backend, finals=len(lines)
            )
            with contextlib.suppress(Exception):  # the stored notes and their webhook stand
                await self._bus.publish(
                    status_topic(claim.tenant_id, claim.meeting_id), message.encode()
                )

    async def _failed(
        self, claim: NotesClaim, error: str, *, retry_after_s: float, counts: bool = True
    ) -> None:
        log.warning(
            "notes not made",
            tenant=claim.tenant_id,
            meeting_id=claim.meeting_id,
            error=error,
            attempt_spent=counts,
        )
        # Not before the backend can answer again (an open breaker's cool-down).
        retry_in_s = max(backoff_delay(claim.attempts, RETRY_BASE_S, RETRY_CAP_S), retry_after_s)
        await self._notes.attempt_failed(
            claim,
            self._owner,
            error,
            retry_in_s=retry_in_s,
            max_attempts=self._max_attempts,
            counts=counts,
        )


# Meetings whose previews one tenant may have made or waiting at once in a process: the queue
# is shared, so without a cap one tenant's requests would hold up every other tenant's.
PREVIEWS_PER_TENANT = 2


class PreviewsBusy(Exception):
    """The tenant has PREVIEWS_PER_TENANT other meetings' previews being made here."""


class NotesPreviews:
    """Previews of a meeting's notes made on request by the offline rules, one at a time per
    tenant and in a worker thread (the rules read every final: a long meeting's take seconds of
    CPU, which on the event loop would stall every connection of the replica). Tenants do not
    wait for each other: one process-wide turn made every tenant wait out another's 300,000
    finals. A request for a meeting whose preview is being made waits for that one; the preview
    is finished even if the request that started it leaves."""

    def __init__(self, per_tenant: int = PREVIEWS_PER_TENANT) -> None:
        self._making: dict[tuple[str, str], asyncio.Task[Preview]] = {}
        self._turns: dict[str, asyncio.Lock] = {}  # per tenant with previews being made
        self._per_tenant = per_tenant

    async def preview(
        self, store: TranscriptStore, catalog: MeetingCatalog, tenant_id: str, meeting_id: str
    ) -> Preview:
        """The meeting's preview; PreviewsBusy if the tenant's share of the queue is taken."""
        key = (tenant_id, meeting_id)
        task = self._making.get(key)
        if task is None:
            if sum(tenant == tenant_id for tenant, _ in self._making) >= self._per_tenant:
                raise PreviewsBusy(
                    f"previews of {self._per_tenant} other meetings of this tenant are being "
                    "made here"
                )
            task = asyncio.get_running_loop().create_task(
                self._make(store, catalog, tenant_id, meeting_id)
            )
            self._making[key] = task
            task.add_done_callback(lambda _: self._made(key))
        return await asyncio.shield(task)

    def _made(self, key: tuple[str, str]) -> None:
        self._making.pop(key, None)
        tenant_id = key[0]
        if not any(tenant == tenant_id for tenant, _ in self._making):
            self._turns.pop(tenant_id, None)  # nobody holds it or waits for it

    async def _make(
        self, store: TranscriptStore, catalog: MeetingCatalog, tenant_id: str, meeting_id: str
    ) -> Preview:
        async with self._turns.setdefault(tenant_id, asyncio.Lock()):
            lines = await meeting_lines(store, catalog, tenant_id, meeting_id)
            return await asyncio.to_thread(notes_of, lines), len(lines)
