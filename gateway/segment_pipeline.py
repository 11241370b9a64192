"""One ingest stream's engine events become numbered segments: finals stored, then published.

The store is the source of truth and the bus is best effort. Publishing runs in its own task behind
a bounded queue, so a slow or unreachable bus never delays storing a final: when the queue is full
partials are dropped, and a failed publish is logged and counted (viewers recover finals from the
store with `since=`). A failed or hanging store write is retried with backoff, each attempt bounded,
for `STORE_RETRY_S` before the stream gives up, so a short database hiccup loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from fanout.bus import status_topic, transcript_topic
from fanout.messages import StatusMessage, TranscriptMessage
from gateway.logs import get_logger
from gateway.services import Services
from ingest.engines.base import EngineStream
from ingest.segments import PartialSegment, PendingFinal, SegmentAssembler
from store.base import FinalSegment, NewFinal

log = get_logger("gateway.segments")


class StoreUnavailable(Exception):
    """A final could not be stored within the retry budget."""


PUBLISH_QUEUE_MAX = 256
STORE_ATTEMPT_TIMEOUT_S = 5.0
PUBLISH_DRAIN_TIMEOUT_S = 5.0


class SegmentPipeline:
    def __init__(
        self, services: Services, tenant_id: str, meeting_id: str, source: str, stream_id: str
    ) -> None:
        self.services = services
        self.tenant_id, self.meeting_id = tenant_id, meeting_id
        self.source, self.stream_id = source, stream_id
        self.finals = 0
        self._final_seq = 0  # position of each final in this stream: its idempotency key
        self.assembler = SegmentAssembler()
        self.log = log.bind(stream_id=stream_id, source=source)
        self._outgoing: asyncio.Queue[tuple[str, bytes, str]] = asyncio.Queue(PUBLISH_QUEUE_MAX)
        self._publisher: asyncio.Task[None] | None = None

    def start_publishing(self) -> None:
        self._publisher = asyncio.create_task(self._publish_loop())

    async def stop_publishing(self) -> None:
        """Deliver what is queued (bounded), then stop."""
        if self._publisher is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PUBLISH_DRAIN_TIMEOUT_S):
                await self._outgoing.join()
        self._publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._publisher

    async def run(self, stream: EngineStream) -> None:
        """Consume the stream's events until they end (after the engine's flush)."""
        await self._refresh_expected_number()
        async for event in stream.events():
            if not event.is_final and self.assembler.open_partial is None:
                # A new utterance: another source may have numbered finals since ours.
                await self._refresh_expected_number()
            out = self.assembler.on_event(event)
            if isinstance(out, PartialSegment):
                self._publish_transcript("transcript.partial", out.segment_no, out)
            elif isinstance(out, PendingFinal):
                self._final_seq += 1
                segment = await self._store(out, self._final_seq)
                self.assembler.observe_final(segment.segment_no)
                self.finals += 1
                self._publish_transcript("transcript.final", segment.segment_no, out)

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
            last = await self.services.store.last_segment_no(self.tenant_id, self.meeting_id)
        except Exception as exc:
            self.log.warning("could not read last segment_no", error=type(exc).__name__)
            return
        self.assembler.observe_final(last)

    async def _store(self, out: PendingFinal, seq: int) -> FinalSegment:
        final = NewFinal(
            text=out.text,
            start_ms=out.start_ms,
            end_ms=out.end_ms,
            source=self.source,
            speaker=out.speaker,
            confidence=out.confidence,
            stream_id=self.stream_id,
            stream_seq=seq,  # a retry after an ambiguous commit cannot store it twice
        )
        deadline = time.monotonic() + self.services.settings.store_retry_s
        delay = 0.1
        while True:
            try:
                remaining = max(deadline - time.monotonic(), 0.1)
                async with asyncio.timeout(min(remaining, STORE_ATTEMPT_TIMEOUT_S)):
                    return await self.services.store.append_final(
                        self.tenant_id, self.meeting_id, final
                    )
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    self.log.error("final could not be stored", error=type(exc).__name__)
                    raise StoreUnavailable("transcript store unavailable") from exc
                self.log.warning("storing a final failed; retrying", error=type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

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
        )
        self._enqueue(transcript_topic(self.tenant_id, self.meeting_id), message.encode(), kind)

    def _enqueue(self, topic: str, data: bytes, kind: str) -> None:
        try:
            self._outgoing.put_nowait((topic, data, kind))
        except asyncio.QueueFull:
            # The bus is behind: shed this message (a final stays in the store for since=).
            self.services.stats.publish_failures += 1
            if kind != "transcript.partial":
                self.log.warning("publish queue full; message dropped", kind=kind)

    async def _publish_loop(self) -> None:
        stats = self.services.stats
        while True:
            topic, data, kind = await self._outgoing.get()
            try:
                await self.services.bus.publish(topic, data)
            except Exception as exc:
                stats.publish_failures += 1
                self.log.warning("publish failed", kind=kind, error=type(exc).__name__)
            else:
                if kind == "transcript.final":
                    stats.finals_published += 1
                elif kind == "transcript.partial":
                    stats.partials_published += 1
            finally:
                self._outgoing.task_done()
