"""`/api/v1/ws/ingest/meetings/{meeting_id}`: a desktop client streams PCM of one source.

The session feeds accepted audio to the engine and, concurrently, turns engine events into
numbered segments: each final is written to the store, then published. However the client leaves
(close, error, rate limit, vanishing), the engine is flushed and the finals of every frame already
accepted are persisted and published before the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime

from starlette.websockets import WebSocket

from fanout.bus import status_topic, transcript_topic
from fanout.messages import StatusMessage, TranscriptMessage
from fanout.token_bucket import TokenBucket
from gateway.auth import ROLE_INGEST, Principal
from gateway.close_codes import CloseCode, CloseError
from gateway.logs import get_logger
from gateway.services import LiveIngest, Services
from gateway.ws_common import authorize, close_with, is_open, serve_connection
from ingest.engine import EngineError, EngineStream, StreamConfig
from ingest.protocol import (
    FrameTooLarge,
    Handshake,
    ProtocolError,
    audio_ms,
    check_pcm_frame,
    parse_control,
    parse_handshake,
)
from ingest.segments import PartialSegment, PendingFinal, SegmentAssembler
from store.base import NewFinal

log = get_logger("gateway.ingest")

HANDSHAKE_TIMEOUT_S = 10.0
FLUSH_TIMEOUT_S = 60.0
STREAM_UPDATE_EVERY_S = 5.0


async def ingest_endpoint(websocket: WebSocket) -> None:
    async def handle(services: Services) -> None:
        principal, meeting_id = authorize(websocket, services, ROLE_INGEST)
        handshake = await _receive_handshake(websocket, services)
        if handshake is not None:
            await IngestSession(websocket, services, principal, meeting_id, handshake).run()

    await serve_connection(websocket, "ingest", handle)


async def _receive_handshake(websocket: WebSocket, services: Services) -> Handshake | None:
    settings = services.settings
    try:
        message = await asyncio.wait_for(websocket.receive(), HANDSHAKE_TIMEOUT_S)
    except TimeoutError:
        raise CloseError(CloseCode.PROTOCOL_ERROR, "no handshake received in time") from None
    if message["type"] == "websocket.disconnect":
        return None
    services.stats.messages_in += 1
    if message.get("text") is None:
        raise CloseError(CloseCode.PROTOCOL_ERROR, "binary frame before handshake")
    if len(message["text"]) > settings.max_ingest_msg_bytes:
        raise CloseError(CloseCode.TOO_BIG, "handshake too large")
    try:
        handshake = parse_handshake(
            message["text"], default_sample_rate=settings.ingest_sample_rate
        )
    except ProtocolError as exc:
        raise CloseError(CloseCode.PROTOCOL_ERROR, str(exc)) from None
    if services.engines.pick(handshake.language) is None:
        supported = ", ".join(services.engines.languages())
        raise CloseError(
            CloseCode.PROTOCOL_ERROR,
            f"language '{handshake.language}' is not supported; supported: {supported}",
        )
    return handshake


class IngestSession:
    def __init__(
        self,
        websocket: WebSocket,
        services: Services,
        principal: Principal,
        meeting_id: str,
        handshake: Handshake,
    ) -> None:
        self.websocket = websocket
        self.services = services
        self.tenant_id = principal.tenant_id
        self.meeting_id = meeting_id
        self.handshake = handshake
        self.stream_id = uuid.uuid4().hex
        self.bytes_in = 0
        self.frames = 0
        self.finals = 0
        settings = services.settings
        rate = settings.ingest_frames_per_s
        self.bucket = TokenBucket(rate=rate, burst=2 * rate, now=time.monotonic())
        self.log = log.bind(stream_id=self.stream_id, source=handshake.source)

    @property
    def audio_ms(self) -> int:
        return audio_ms(self.bytes_in, self.handshake.sample_rate, self.handshake.channels)

    async def run(self) -> None:
        services, hs = self.services, self.handshake
        lease = await services.coordinator.acquire_ingest(
            self.tenant_id, self.meeting_id, hs.source, self.stream_id
        )
        if lease is None:
            raise CloseError(
                CloseCode.CONFLICT,
                f"an ingest for this meeting and source '{hs.source}' is already active",
            )
        try:
            await self._run_with_lease(lease.lost)
        finally:
            await lease.release()

    async def _run_with_lease(self, lease_lost: asyncio.Event) -> None:
        services, hs = self.services, self.handshake
        engine = services.engines.pick(hs.language)
        assert engine is not None  # checked at handshake
        config = StreamConfig(hs.sample_rate, hs.channels, hs.language, hs.ai_mode)
        try:
            stream = await engine.open(config)
        except EngineError as exc:
            self.log.warning("engine unavailable", engine=engine.name, error=str(exc))
            raise CloseError(CloseCode.UNAVAILABLE, "speech engine unavailable") from None
        store = services.store
        await store.open_stream(
            self.tenant_id,
            self.meeting_id,
            stream_id=self.stream_id,
            source=hs.source,
            engine=engine.name,
            sample_rate=hs.sample_rate,
            channels=hs.channels,
        )
        live = LiveIngest(
            self.stream_id,
            self.tenant_id,
            self.meeting_id,
            hs.source,
            engine.name,
            datetime.now(UTC).isoformat(),
        )
        services.live_ingests[self.stream_id] = live
        assembler = SegmentAssembler(await store.last_segment_no(self.tenant_id, self.meeting_id))
        consumer = asyncio.create_task(self._consume(stream, assembler))
        self.log.info("ingest started", engine=engine.name, rate=hs.sample_rate, ch=hs.channels)
        await self._publish_status("stream.started", engine.name)
        await self.websocket.send_json(
            {
                "type": "ready",
                "stream_id": self.stream_id,
                "engine": engine.name,
                "sample_rate": hs.sample_rate,
                "channels": hs.channels,
                "language": hs.language,
            }
        )
        error: CloseError | None = None
        try:
            error = await self._pump(stream, consumer, lease_lost, live)
        finally:
            # Flush whatever was accepted, however the client left.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.close(), FLUSH_TIMEOUT_S)
            try:
                await asyncio.wait_for(asyncio.shield(consumer), FLUSH_TIMEOUT_S)
            except Exception as exc:
                self.log.error("finals lost at flush", error=type(exc).__name__)
                error = error or CloseError(CloseCode.INTERNAL_ERROR, "transcript flush failed")
            services.live_ingests.pop(self.stream_id, None)
            with contextlib.suppress(Exception):
                await store.close_stream(self.stream_id, audio_ms=self.audio_ms, frames=self.frames)
            with contextlib.suppress(Exception):
                await self._publish_status("stream.ended", engine.name)
            self.log.info(
                "ingest ended", frames=self.frames, audio_ms=self.audio_ms, finals=self.finals
            )
        if error is not None:
            raise error
        if is_open(self.websocket):
            with contextlib.suppress(Exception):
                await self.websocket.send_json(
                    {
                        "type": "closed",
                        "stream_id": self.stream_id,
                        "finals": self.finals,
                        "frames": self.frames,
                        "audio_ms": self.audio_ms,
                    }
                )
            await close_with(self.websocket, CloseCode.NORMAL, "stream closed")

    async def _pump(
        self,
        stream: EngineStream,
        consumer: asyncio.Task[None],
        lease_lost: asyncio.Event,
        live: LiveIngest,
    ) -> CloseError | None:
        """Receive until the client closes or leaves; the error to close with, if any."""
        receiver = asyncio.create_task(self._receive(stream, live))
        lost = asyncio.create_task(lease_lost.wait())
        updater = asyncio.create_task(self._update_stream_row())
        try:
            done, _ = await asyncio.wait(
                {receiver, consumer, lost}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (lost, updater):
                task.cancel()
        if receiver not in done:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver
        if lost in done:
            return CloseError(CloseCode.CONFLICT, "ingest lease lost to another stream")
        if consumer in done:
            # The engine's results ended while the client was still streaming.
            failure = consumer.exception()
            self.log.error("segment pipeline ended early", error=repr(failure))
            return CloseError(CloseCode.INTERNAL_ERROR, "transcription failed")
        return receiver.result()

    async def _receive(self, stream: EngineStream, live: LiveIngest) -> CloseError | None:
        settings, stats = self.services.settings, self.services.stats
        channels, max_bytes = self.handshake.channels, settings.max_ingest_msg_bytes
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return None
            stats.messages_in += 1
            if not self.bucket.take(time.monotonic()):
                return CloseError(
                    CloseCode.RATE_LIMITED,
                    f"ingest rate limit exceeded ({settings.ingest_frames_per_s:g} frames/s); "
                    "frames before this one were accepted",
                )
            data: bytes | None = message.get("bytes")
            if data is not None:
                try:
                    check_pcm_frame(data, channels=channels, max_bytes=max_bytes)
                except FrameTooLarge as exc:
                    return CloseError(CloseCode.TOO_BIG, str(exc))
                except ProtocolError as exc:
                    return CloseError(CloseCode.PROTOCOL_ERROR, str(exc))
                await stream.send(data)
                self.frames += 1
                self.bytes_in += len(data)
                stats.audio_frames_in += 1
                live.frames, live.audio_ms = self.frames, self.audio_ms
                continue
            text: str = message.get("text") or ""
            if len(text) > settings.max_ingest_msg_bytes:
                return CloseError(CloseCode.TOO_BIG, "message too large")
            try:
                control = parse_control(text)
            except ProtocolError as exc:
                return CloseError(CloseCode.PROTOCOL_ERROR, str(exc))
            if control == "finalize":
                await stream.finalize()
            else:
                return None

    async def _consume(self, stream: EngineStream, assembler: SegmentAssembler) -> None:
        store, hs = self.services.store, self.handshake
        async for event in stream.events():
            if not event.is_final and assembler.open_partial is None:
                # A new utterance: another source may have numbered finals since ours.
                assembler.observe_final(
                    await store.last_segment_no(self.tenant_id, self.meeting_id)
                )
            out = assembler.on_event(event)
            if isinstance(out, PartialSegment):
                await self._publish_transcript("transcript.partial", out.segment_no, out)
            elif isinstance(out, PendingFinal):
                segment = await store.append_final(
                    self.tenant_id,
                    self.meeting_id,
                    NewFinal(
                        text=out.text,
                        start_ms=out.start_ms,
                        end_ms=out.end_ms,
                        source=hs.source,
                        speaker=out.speaker,
                        confidence=out.confidence,
                        stream_id=self.stream_id,
                    ),
                )
                assembler.observe_final(segment.segment_no)
                self.finals += 1
                await self._publish_transcript("transcript.final", segment.segment_no, out)

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
            source=self.handshake.source,
        )
        await self.services.bus.publish(
            transcript_topic(self.tenant_id, self.meeting_id), message.encode()
        )
        stats = self.services.stats
        if kind == "transcript.final":
            stats.finals_published += 1
        else:
            stats.partials_published += 1

    async def _publish_status(self, event: str, engine: str) -> None:
        message = StatusMessage(
            meeting_id=self.meeting_id,
            source=self.handshake.source,
            event=event,  # type: ignore[arg-type]
            stream_id=self.stream_id,
            engine=engine,
        )
        await self.services.bus.publish(
            status_topic(self.tenant_id, self.meeting_id), message.encode()
        )

    async def _update_stream_row(self) -> None:
        """Keep the stream's row fresh so replicas' stats can tell live streams from dead ones."""
        while True:
            await asyncio.sleep(STREAM_UPDATE_EVERY_S)
            with contextlib.suppress(Exception):
                await self.services.store.update_stream(
                    self.stream_id, audio_ms=self.audio_ms, frames=self.frames
                )
