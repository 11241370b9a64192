"""One ingest stream's engine events become numbered segments: finals numbered, made durable,
published, and written to the store.

A final gets its number from the meeting's counter (store.numbering: Redis or in-process, no
database needed), is appended to the on-disk outbox (store.outbox), then published; the outbox
writer copies it to the store. While the database is up the final is normally in the store before
it is published (the pipeline waits briefly for the write, so `since=` and bus-gap repair find it);
while the database is down finals keep their numbers and keep reaching viewers live, and wait on
disk. Numbering is retried with backoff for `STORE_RETRY_S` (a Redis restart, or a counter to seed
while the database is briefly away) before the stream gives up with 4503.

Publishing runs in its own task behind a queue (fanout.publish_queue), so a slow or unreachable
bus never delays a final. Finals and status messages are published at least once: a failed
publish is retried, in order, with backoff (redis-py reconnects), until the bus takes it or the
gateway drains; a stream that ends first leaves its publisher running in the background. Only
partials are dropped (superseded by a newer one, or on a failed publish). Rooms drop a repeated
final or status message, and detect a final that never arrived (gateway.pipeline.gap_repair).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from fanout.messages import StatusMessage, TranscriptMessage
from fanout.publish_queue import Outgoing, PublishQueue
from fanout.topics import status_topic, transcript_topic
from gateway.observability.latency import EngineLatency
from gateway.observability.logs import get_logger
from gateway.pipeline.stored_finals import new_final
from gateway.services import Services
from ingest.cut import before_cut
from ingest.engines.base import EngineStream
from ingest.segments import PartialSegment, PendingFinal, SegmentAssembler
from shared.backoff import backoff_delay
from shared.tasks import cancel_and_wait, detach
from store.numbering import Claim
from store.outbox import OutboxEntry, OutboxFileError

T = TypeVar("T")

log = get_logger("gateway.segments")


class StoreUnavailable(Exception):
    """A final could not be numbered or made durable within the retry budget."""


PUBLISH_DRAIN_TIMEOUT_S = 5.0  # a stream's end waits this long for its queue, then detaches it
# Numbering or saving a final is retried after these jittered, growing delays (shared.backoff).
STORE_RETRY_BASE_S = 0.2
STORE_RETRY_CAP_S = 2.0
# A failed publish of a final or status is retried after these jittered, growing delays.
PUBLISH_RETRY_BASE_S = 0.1
PUBLISH_RETRY_CAP_S = 2.0
ATTEMPT_TIMEOUT_S = 5.0  # one try at numbering or saving a final (a partitioned server hangs)
PREDICTION_TIMEOUT_S = 2.0  # reading the last number only to predict partials' numbers
# While the store keeps up, publish a final once it is stored (so a viewer that resumes with
# since= or a bus-gap repair finds it); never wait longer than this for it.
STORED_BEFORE_PUBLISH_WAIT_S = 1.0
# ... unless the outbox is catching up after an outage: then publish at once.
STORED_BEFORE_PUBLISH_MAX_BACKLOG = 16
# A stream closes once its last final is stored (docs/protocol.md: resuming); this long at most.
STORED_BEFORE_CLOSE_WAIT_S = 10.0


class SegmentPipeline:
    def __init__(
        self, services: Services, tenant_id: str, meeting_id: str, source: str, stream_id: str
    ) -> None:
        self.services = services
        self.tenant_id, self.meeting_id = tenant_id, meeting_id
        self.source, self.stream_id = source, stream_id
        self.finals = 0
        self._final_seq = 0  # position of each final in this stream: its idempotency key
        self._last_entry_id: int | None = None  # the outbox entry of its last final
        self.assembler = SegmentAssembler()
        self.log = log.bind(stream_id=stream_id, source=source)
        self._outgoing = PublishQueue()
        self._queued = asyncio.Event()  # set when something is pushed
        self._idle = asyncio.Event()  # set while the queue is empty
        self._idle.set()
        self._publisher: asyncio.Task[None] | None = None
        self._finishing = False  # the stream ended: the publisher stops once its queue is empty
        self.latency: EngineLatency | None = None  # set by the session once its engine is known
        # Where the gateway cut the stream (audio ms; a close its client reconnects after, as
        # a drain's), once it did: finals keep no word that ran into the cut (ingest.cut), the
        # client re-sends it to its next stream.
        self.cut_ms: int | None = None
        # Called once, at the stream's first final (live tips follow a meeting only once it
        # says something: a stream that never does held a follower and its lease for 2 min).
        self.on_first_final: Callable[[], None] | None = None

    def start_publishing(self) -> None:
        self._publisher = asyncio.create_task(self._publish_loop())

    async def stop_publishing(self) -> None:
        """Deliver what is queued (bounded), then stop. Finals or status messages the bus has
        not taken by then are left to the publisher, which keeps retrying in the background
        until they are published or the gateway drains."""
        publisher = self._publisher
        if publisher is None:
            return
        self._publisher = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PUBLISH_DRAIN_TIMEOUT_S):
                await self._idle.wait()
        if self._outgoing.pending_retried() and not self.services.draining:
            self.log.warning("bus unavailable; publishing continues in the background")
            detach(publisher)
            self._finishing = True  # the publisher returns once its queue is empty
            self._queued.set()
            return
        await cancel_and_wait(publisher)

    async def run(self, stream: EngineStream) -> None:
        """Consume the stream's events until they end (after the engine's flush)."""
        await self._refresh_expected_number()
        async for event in stream.events():
            if self.latency is not None:
                self.latency.observe(event, time.monotonic())
            if not event.is_final and self.assembler.open_partial is None:
                # A new utterance: another source may have numbered finals since ours.
                await self._refresh_expected_number()
            if self.cut_ms is not None:
                event = before_cut(event, self.cut_ms)
            out = self.assembler.on_event(event)
            if isinstance(out, PartialSegment):
                self._publish_transcript("transcript.partial", out.segment_no, out)
            elif isinstance(out, PendingFinal):
                self._final_seq += 1
                segment_no = await self._keep(out, self._final_seq)
                self.assembler.observe_final(segment_no)
                self.finals += 1
                self._publish_transcript("transcript.final", segment_no, out)
                if self.finals == 1 and self.on_first_final is not None:
                    self.on_first_final()

    def publish_status(
        self,
        event: str,
        engine: str,
        *,
        previous_engine: str | None = None,
        reason: str | None = None,
    ) -> None:
        message = StatusMessage(
            meeting_id=self.meeting_id,
            source=self.source,
            event=event,  # type: ignore[arg-type]
            stream_id=self.stream_id,
            engine=engine,
            previous_engine=previous_engine,
            reason=reason,
        )
        self._enqueue(status_topic(self.tenant_id, self.meeting_id), message.encode(), "status")

    async def _refresh_expected_number(self) -> None:
        """Partials carry a predicted number; a failed read only makes the prediction stale."""
        try:
            async with asyncio.timeout(PREDICTION_TIMEOUT_S):
                last = await self.services.finals.numbering.current(self.tenant_id, self.meeting_id)
                if last is None:  # counter not created yet: the store knows
                    last = await self.services.store.last_segment_no(
                        self.tenant_id, self.meeting_id, live_path=True
                    )
        except Exception as exc:
            self.log.warning("could not read last segment_no", error=type(exc).__name__)
            return
        self.assembler.observe_final(last)

    async def _keep(self, out: PendingFinal, seq: int) -> int:
        """Number the final and make it durable; its segment_no."""
        final = new_final(
            out, text=out.text, source=self.source, stream_id=self.stream_id, stream_seq=seq
        )
        finals = self.services.finals
        claim = Claim(self.stream_id, seq)
        segment_no = await self._retrying(
            "numbering a final",
            lambda: finals.numbering.next_number(self.tenant_id, self.meeting_id, claim),
        )
        entry = OutboxEntry(
            self.tenant_id,
            self.meeting_id,
            segment_no,
            final,
            created_at=datetime.now(UTC),
            queued_at=time.time(),
        )
        # A number handed out and then not kept would be a gap: retry the append too.
        entry_id = await self._retrying(
            "saving a final to the outbox", lambda: finals.outbox.append(entry)
        )
        self._last_entry_id = entry_id
        catching_up = finals.outbox.depth > STORED_BEFORE_PUBLISH_MAX_BACKLOG
        if finals.writer.store_reachable and not catching_up:
            await finals.writer.wait_written(entry_id, STORED_BEFORE_PUBLISH_WAIT_S)
        return segment_no

    async def wait_stored(self) -> bool:
        """Wait until this stream's last final is in the store, while the store is reachable
        (in an outage its finals wait in the outbox); whether it is. Publishing may have gone
        ahead of the store (a backlog, a slow write), so closing the stream waits here."""
        writer = self.services.finals.writer
        if self._last_entry_id is None:
            return True
        if not writer.store_reachable:
            return False
        return await writer.wait_written(self._last_entry_id, STORED_BEFORE_CLOSE_WAIT_S)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.services.settings.store_retry_s
        failures = 0
        while True:
            try:
                remaining = max(deadline - time.monotonic(), 0.1)
                async with asyncio.timeout(min(remaining, ATTEMPT_TIMEOUT_S)):
                    return await attempt()
            except Exception as exc:
                # The outbox file's error is its own words (a full disk), with no values.
                error = str(exc) if isinstance(exc, OutboxFileError) else type(exc).__name__
                delay = backoff_delay(failures, STORE_RETRY_BASE_S, STORE_RETRY_CAP_S)
                failures += 1
                if time.monotonic() + delay > deadline:
                    self.log.error("final not kept; giving up", step=what, error=error)
                    self.services.metrics.final_not_kept(self.tenant_id)
                    raise StoreUnavailable(f"{what} failed") from exc
                # Said once per final's outage, then every try at DEBUG (every 1.5 s otherwise).
                (self.log.warning if failures == 1 else self.log.debug)(
                    "final not kept yet; retrying", step=what, error=error
                )
                await asyncio.sleep(delay)

    def _publish_transcript(
        self, kind: str, segment_no: int, out: PartialSegment | PendingFinal
    ) -> None:
        message = TranscriptMessage(
            type=kind,  # type: ignore[arg-type]
            meeting_id=self.meeting_id,
            segment_no=segment_no,
            text=out.text,
            start_ms=out.start_ms,
            end_ms=out.end_ms,
            speaker=out.speaker,
            confidence=out.confidence,
            source=self.source,
            stream_id=self.stream_id if kind == "transcript.final" else None,
        )
        self._enqueue(transcript_topic(self.tenant_id, self.meeting_id), message.encode(), kind)

    def _enqueue(self, topic: str, data: bytes, kind: str) -> None:
        self._outgoing.push(Outgoing(topic, data, kind))
        self._idle.clear()
        self._queued.set()

    async def _publish_loop(self) -> None:
        metrics = self.services.metrics
        failures = 0  # consecutive failed publishes of the head message
        while True:
            item = self._outgoing.head()
            if item is None:
                self._idle.set()
                if self._finishing:
                    return
                self._queued.clear()
                await self._queued.wait()
                continue
            started = time.monotonic()
            try:
                await self.services.bus.publish(item.topic, item.data)
            except Exception as exc:
                metrics.publish_failed(self.tenant_id)
                if not item.retried or (self._finishing and self.services.draining):
                    self._outgoing.done(item)  # a partial (or the gateway is going away)
                    continue
                if failures == 0:
                    self.log.warning(
                        "publish failed; retrying", kind=item.kind, error=type(exc).__name__
                    )
                failures += 1
                await asyncio.sleep(
                    backoff_delay(failures - 1, PUBLISH_RETRY_BASE_S, PUBLISH_RETRY_CAP_S)
                )
                continue
            if failures:
                self.log.info(
                    "publish succeeded after retrying", kind=item.kind, attempts=failures + 1
                )
                failures = 0
            metrics.published(item.kind, self.tenant_id, time.monotonic() - started)
            self._outgoing.done(item)
