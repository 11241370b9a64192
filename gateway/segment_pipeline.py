"""One ingest stream's engine events become numbered segments: finals stored, then published.

The store is the source of truth and the bus is best effort: a failed publish is logged and counted
(viewers recover finals from the store with `since=`), while a failed store write is retried with
backoff for `STORE_RETRY_S` before the stream gives up, so a short database hiccup loses nothing.
"""

from __future__ import annotations

import asyncio
import time

from fanout.bus import status_topic, transcript_topic
from fanout.messages import StatusMessage, TranscriptMessage
from gateway.logs import get_logger
from gateway.services import Services
from ingest.engine import EngineStream
from ingest.segments import PartialSegment, PendingFinal, SegmentAssembler
from store.base import FinalSegment, NewFinal

log = get_logger("gateway.segments")


class StoreUnavailable(Exception):
    """A final could not be stored within the retry budget."""


class SegmentPipeline:
    def __init__(
        self, services: Services, tenant_id: str, meeting_id: str, source: str, stream_id: str
    ) -> None:
        self.services = services
        self.tenant_id, self.meeting_id = tenant_id, meeting_id
        self.source, self.stream_id = source, stream_id
        self.finals = 0
        self.assembler = SegmentAssembler()
        self.log = log.bind(stream_id=stream_id, source=source)

    async def run(self, stream: EngineStream) -> None:
        """Consume the stream's events until they end (after the engine's flush)."""
        await self._refresh_expected_number()
        async for event in stream.events():
            if not event.is_final and self.assembler.open_partial is None:
                # A new utterance: another source may have numbered finals since ours.
                await self._refresh_expected_number()
            out = self.assembler.on_event(event)
            if isinstance(out, PartialSegment):
                await self._publish_transcript("transcript.partial", out.segment_no, out)
            elif isinstance(out, PendingFinal):
                segment = await self._store(out)
                self.assembler.observe_final(segment.segment_no)
                self.finals += 1
                await self._publish_transcript("transcript.final", segment.segment_no, out)

    async def publish_status(self, event: str, engine: str) -> None:
        message = StatusMessage(
            meeting_id=self.meeting_id,
            source=self.source,
            event=event,  # type: ignore[arg-type]
            stream_id=self.stream_id,
            engine=engine,
        )
        await self._publish(status_topic(self.tenant_id, self.meeting_id), message.encode())

    async def _refresh_expected_number(self) -> None:
        """Partials carry a predicted number; a failed read only makes the prediction stale."""
        try:
            last = await self.services.store.last_segment_no(self.tenant_id, self.meeting_id)
        except Exception as exc:
            self.log.warning("could not read last segment_no", error=type(exc).__name__)
            return
        self.assembler.observe_final(last)

    async def _store(self, out: PendingFinal) -> FinalSegment:
        final = NewFinal(
            text=out.text,
            start_ms=out.start_ms,
            end_ms=out.end_ms,
            source=self.source,
            speaker=out.speaker,
            confidence=out.confidence,
            stream_id=self.stream_id,
        )
        deadline = time.monotonic() + self.services.settings.store_retry_s
        delay = 0.1
        while True:
            try:
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

    async def _publish_transcript(
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
        if await self._publish(transcript_topic(self.tenant_id, self.meeting_id), message.encode()):
            stats = self.services.stats
            if kind == "transcript.final":
                stats.finals_published += 1
            else:
                stats.partials_published += 1

    async def _publish(self, topic: str, data: bytes) -> bool:
        try:
            await self.services.bus.publish(topic, data)
        except Exception as exc:
            self.services.stats.publish_failures += 1
            self.log.warning("publish failed", error=type(exc).__name__)
            return False
        return True
