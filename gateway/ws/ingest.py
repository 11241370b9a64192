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
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from starlette.websockets import WebSocket, WebSocketState

from fanout.coordinator import IngestLease
from fanout.messages import PongMessage
from fanout.token_bucket import TokenBucket
from gateway.auth import ROLE_INGEST, Principal, bearer_token
from gateway.close_codes import CloseCode, CloseError, peer_code
from gateway.observability.latency import AudioClock, EngineLatency
from gateway.observability.logs import get_logger
from gateway.pipeline.stream_row import StreamRow
from gateway.pipeline.stream_segments import SegmentPipeline, StoreUnavailable
from gateway.server.starlette_internals import asgi_receive
from gateway.services import Services
from gateway.ws.common import (
    authorize,
    close_with,
    open_connection,
    refuse_while_draining,
    serve_connection,
    verified,
)
from gateway.ws.live import LiveConnection
from ingest.engines.base import EngineError, EngineStream, EngineUnavailable, StreamConfig
from ingest.engines.chain import FailoverStream
from ingest.engines.local.language_check import NOT_ENGLISH
from ingest.protocol import Handshake, ProtocolError, audio_ms, parse_handshake, refresh_token
from ingest.session import Control, IngestRules, Violation, ViolationKind
from shared.tasks import cancel_and_wait
from store.base import StreamProgress

log = get_logger("gateway.ingest")

HANDSHAKE_TIMEOUT_S = 10.0
# A flush on its own; during a drain (gateway/drain.py) DRAIN_TIMEOUT_S bounds it.
FLUSH_TIMEOUT_S = 45.0
# A stalled engine must not hold the session (and its ingest lease) forever.
ENGINE_SEND_TIMEOUT_S = 30.0
# Closes after which the client reconnects at once and re-sends what no final covers (the close
# table of docs/protocol.md): a restart, the lease lost, a limit, a dependency down.
RESUMED_AFTER = frozenset(
    {
        CloseCode.SERVICE_RESTART,
        CloseCode.CONFLICT,
        CloseCode.RATE_LIMITED,
        CloseCode.UNAVAILABLE,
    }
)
WATCH_EVERY_S = 1.0  # how often the idle and stalled-engine deadlines are checked
# A resumed stream's previous stream is looked up this long at most before `ready`.
RESUME_LOOKUP_S = 2.0
# Audio this far behind the stream's time at its last frame is said at its end (a client that
# paused sending instead of sending silence: its later lines are placed early).
AUDIO_BEHIND_NOTED_S = 5.0
VIOLATION_CODES: dict[ViolationKind, CloseCode] = {
    "rate_limited": CloseCode.RATE_LIMITED,
    "too_big": CloseCode.TOO_BIG,
    "protocol": CloseCode.PROTOCOL_ERROR,
}


async def ingest_endpoint(websocket: WebSocket) -> None:
    await serve_connection(websocket, "ingest", _serve)


async def _serve(websocket: WebSocket, services: Services) -> int | None:
    refuse_while_draining(services)
    principal, meeting_id = authorize(websocket, services, ROLE_INGEST)
    handshake = await _receive_handshake(websocket, services, principal.tenant_id)
    if not isinstance(handshake, Handshake):
        return handshake  # the client left first: its close code
    # Checked again: the token may have expired, or its key gone or changed, while the
    # handshake came (4401 before `ready`, and the session keeps the key that verified it now).
    principal, meeting_id = verified(websocket, services, ROLE_INGEST)
    token = bearer_token(websocket.headers, websocket.query_params)
    with open_connection(services, token, principal, ROLE_INGEST, meeting_id) as conn:
        session = IngestSession(websocket, services, principal, meeting_id, handshake, conn)
        return await session.run()


async def _receive_handshake(
    websocket: WebSocket, services: Services, tenant_id: str
) -> Handshake | int:
    """The client's handshake, or the code it closed with instead."""
    settings = services.settings
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):  # not wait_for: see shared.tasks
            message = await websocket.receive()
    except TimeoutError:
        raise CloseError(CloseCode.PROTOCOL_ERROR, "no handshake received in time") from None
    if message["type"] == "websocket.disconnect":
        return peer_code(message.get("code"))
    services.metrics.message_received(ROLE_INGEST, tenant_id)
    if message.get("text") is None:
        raise CloseError(CloseCode.PROTOCOL_ERROR, "binary frame before handshake")
    if len(message["text"].encode()) > settings.max_ingest_msg_bytes:
        raise CloseError(CloseCode.TOO_BIG, "handshake too large")
    try:
        handshake = parse_handshake(
            message["text"], default_sample_rate=settings.ingest_sample_rate
        )
    except ProtocolError as exc:
        raise CloseError(CloseCode.PROTOCOL_ERROR, str(exc)) from None
    if not services.engines.serving(handshake.language):
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
        conn: LiveConnection | None = None,
    ) -> None:
        self.websocket = websocket
        self.conn = conn  # ended by token expiry or drain (gateway/ws/live.py)
        self.services = services
        self.tenant_id = principal.tenant_id
        self.meeting_id = meeting_id
        self.handshake = handshake
        self.stream_id = uuid.uuid4().hex
        self.disconnect_code: int | None = None  # set when the client left without a close
        self.delivered_bytes = 0  # audio the engine has taken (sends that returned)
        # The engine or the store ended the stream (said at WARNING): its flush failing too is
        # that outage's, not a new fault.
        self.dependency_outage = False
        self.pipeline = SegmentPipeline(
            services, self.tenant_id, meeting_id, handshake.source, self.stream_id
        )
        rate, now = services.settings.ingest_frames_per_s, time.monotonic()
        self.rules = IngestRules(
            sample_rate=handshake.sample_rate,
            channels=handshake.channels,
            max_bytes=services.settings.max_ingest_msg_bytes,
            bucket=TokenBucket(rate=rate, burst=2 * rate, now=now),
            started_at=now,
        )
        self.counts = services.metrics.ingest_counts(self.tenant_id)  # synced each second
        self.last_audio_at = time.monotonic()  # for the idle deadline (_watch)
        self.sending_since: float | None = None  # an engine send in progress since (_watch)
        self.audio_clock = AudioClock()  # for the engine latency metrics
        self.engine: str | None = None  # the engine serving now (it changes on a failover)
        self.engines_served: list[str] = []  # every engine that has served, in order
        self.row: StreamRow | None = None  # the stream's row in the store
        # Where its audio began on the meeting's clock, when the handshake resumed a stream.
        self.audio_started_at: datetime | None = None
        self.resumed = False
        self._unwant_tips: Callable[[], None] = lambda: None  # set once live tips are asked for
        self.log = log.bind(stream_id=self.stream_id, source=handshake.source)
        structlog.contextvars.bind_contextvars(stream_id=self.stream_id)

    @property
    def audio_ms(self) -> int:
        return self.rules.audio_ms

    @property
    def frames(self) -> int:
        return self.rules.frames

    @property
    def bytes_in(self) -> int:
        return self.rules.bytes_in

    async def run(self) -> int:
        """Stream until the client leaves; the close code the connection ended with."""
        services, hs = self.services, self.handshake
        if self.conn is not None and self.conn.end_error is not None:
            # Opened while a drain began, or to a deleted meeting: refused before it takes a
            # lease, opens an engine, or writes a row that would bring the meeting back.
            raise self.conn.end_error
        lease = await services.coordinator.acquire_ingest(
            self.tenant_id, self.meeting_id, hs.source, self.stream_id
        )
        if lease is None:
            settings = services.settings
            silent_s = settings.ws_ping_interval_s + settings.ws_ping_timeout_s
            raise CloseError(
                CloseCode.CONFLICT,
                f"an ingest for this meeting and source '{hs.source}' is already active; retry "
                f"once it ends (a connection that went silent holds it up to {silent_s:g} s, "
                "until the heartbeat drops it, and its last finals are stored first)",
            )
        try:
            return await self._run_with_lease(lease)
        finally:
            self._unwant_tips()
            await lease.release()

    async def _run_with_lease(self, lease: IngestLease) -> int:
        services, hs = self.services, self.handshake
        stream = await self._open_engine()
        stream.on_notice = self._on_engine_notice
        self.engine = stream.engine_name
        self.engines_served = [stream.engine_name]
        services.live_ingests[self.stream_id] = self  # for the stats endpoints
        services.metrics.ingest_stream_started(self.tenant_id)
        self.pipeline.latency = EngineLatency(
            self.audio_clock,
            lambda s: services.metrics.first_partial_latency(stream.engine_name, s),
            lambda s: services.metrics.final_latency(stream.engine_name, s),
        )
        consumer: asyncio.Task[None] | None = None
        error: CloseError | None = None
        try:
            started_at = datetime.now(UTC)  # not when a late write gets through
            self.resumed = hs.resumes is not None and await self._resume_from(started_at)
            # During a database outage the stream starts anyway: its row is written when the
            # database is back, its finals wait in the outbox (README, Delivery guarantees).
            self.row = StreamRow(
                services.store,
                tenant_id=self.tenant_id,
                meeting_id=self.meeting_id,
                stream_id=self.stream_id,
                source=hs.source,
                engine=stream.engine_name,
                sample_rate=hs.sample_rate,
                channels=hs.channels,
                started_at=started_at,
                audio_started_at=self.audio_started_at,
            )
            await self.row.open()
            if services.live_tips is not None:  # this meeting's live tips (ai_mode)
                live_tips = services.live_tips

                def want_tips() -> None:
                    self._unwant_tips = live_tips.want(self.tenant_id, self.meeting_id, hs.ai_mode)

                self.pipeline.on_first_final = want_tips
            self.pipeline.start_publishing()
            consumer = asyncio.create_task(self.pipeline.run(stream))
            serving = stream.engine_name
            self.log.info("ingest started", engine=serving, rate=hs.sample_rate, ch=hs.channels)
            self.pipeline.publish_status("stream.started", serving)
            await self.websocket.send_json(self._ready(stream))
            error = await self._pump(stream, consumer, lease)
        finally:
            # However the stream ends, flush what was accepted and account for it.
            error = await self._finish(stream, consumer, error)
        if error is not None:
            raise error
        if self.disconnect_code is not None:
            return self.disconnect_code
        with contextlib.suppress(Exception):
            await self.websocket.send_json(
                {
                    "type": "closed",
                    "stream_id": self.stream_id,
                    "finals": self.pipeline.finals,
                    "frames": self.frames,
                    "audio_ms": self.audio_ms,
                }
            )
        await close_with(self.websocket, CloseCode.NORMAL, "stream closed")
        return CloseCode.NORMAL

    async def _resume_from(self, now: datetime) -> bool:
        """Place this stream's audio on the meeting's clock where the handshake's `resumes`
        says it began (a previous stream's start plus `from_ms`), not at now: a resumed
        stream was placed later than it was spoken by the client's time away. Its late audio
        (the re-sent part) then counts from there too. Whether it could be placed so (the
        previous stream's row is read; unknown, or the database unavailable: from now)."""
        resumes = self.handshake.resumes
        assert resumes is not None
        store = self.services.store
        try:
            async with asyncio.timeout(RESUME_LOOKUP_S):
                previous = await store.stream_start(
                    self.tenant_id, self.meeting_id, resumes.stream_id, self.handshake.source
                )
        except Exception as exc:
            self.log.info("resumed stream placed from now", why=type(exc).__name__)
            return False
        if previous is None:  # not this meeting's, or another source's
            self.log.info("resumed stream placed from now", why="unknown stream")
            return False
        began = previous + timedelta(milliseconds=resumes.from_ms)
        if began > now:  # audio cannot have been spoken later than it arrives
            self.log.info("resumed stream placed from now", why="from_ms past now")
            return False
        self.audio_started_at = began
        self.rules.resumed((now - began).total_seconds())
        return True

    def _ready(self, stream: FailoverStream) -> dict[str, object]:
        hs = self.handshake
        ready: dict[str, object] = {
            "type": "ready",
            "stream_id": self.stream_id,
            "source": hs.source,
            "engine": stream.engine_name,
            "sample_rate": hs.sample_rate,
            "channels": hs.channels,
            "language": hs.language,
        }
        if hs.resumes is not None:
            ready["resumed"] = self.resumed  # placed where `resumes` says, or from now
        if hs.ignored:
            ready["ignored"] = list(hs.ignored)  # fields this gateway does not know
        if hs.language == "auto":
            # An engine that cannot detect says which language it will transcribe in.
            fixed = stream.auto_language
            ready["detected"] = fixed is None
            if fixed is not None:
                ready["language"] = fixed
        return ready

    def _on_engine_notice(self, engine: str, notice: str) -> None:
        if notice == NOT_ENGLISH:
            self.log.info("speech does not sound English", engine=engine)
            self.pipeline.publish_status(notice, engine, reason="not_english")

    async def _open_engine(self) -> FailoverStream:
        """A stream on the first engine of the chain that can serve it; it fails over to the
        next engines by itself (subscribers see `engine.switched`)."""
        hs = self.handshake
        config = StreamConfig(
            hs.sample_rate, hs.channels, hs.language, hs.ai_mode, tenant_id=self.tenant_id
        )
        try:
            return await self.services.engines.open(config, on_switch=self._on_engine_switch)
        except EngineUnavailable:
            share = _tenant_share_refusal(self.services, config)
            if share is not None:
                self.services.metrics.limit_hit("engine_tenant_share", self.tenant_id)
                raise share from None
            self.log.warning("no speech engine available", language=hs.language)
            raise _engine_unavailable() from None

    def _on_engine_switch(self, old: str, new: str, reason: str) -> None:
        self.engine = new
        if new not in self.engines_served:  # (one that flaps back is listed once)
            self.engines_served.append(new)
        self.log.warning("engine switched", previous_engine=old, engine=new, reason=reason)
        self.pipeline.publish_status("engine.switched", new, previous_engine=old, reason=reason)

    async def _finish(
        self,
        stream: EngineStream,
        consumer: asyncio.Task[None] | None,
        error: CloseError | None,
    ) -> CloseError | None:
        deleted = error is not None and error.code == CloseCode.MEETING_DELETED
        if consumer is None or deleted:
            # Deleted meeting: nothing more of it may be written, so no flush.
            if consumer is not None:
                with contextlib.suppress(BaseException):
                    await cancel_and_wait(consumer)
            with contextlib.suppress(Exception):
                await stream.abort()
            await self.pipeline.stop_publishing()
        else:
            try:
                if client_resends(error):
                    # The client re-sends what no final covers: no final may end in a word the
                    # cut split (docs/protocol.md, graceful drain). The cut is where the engine's
                    # audio ends: a send the drain cancelled may not have reached it.
                    hs = self.handshake
                    self.pipeline.cut_ms = audio_ms(
                        self.delivered_bytes, hs.sample_rate, hs.channels
                    )
                # One deadline for the engine's flush and the last finals' writes.
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    with contextlib.suppress(EngineError):
                        await stream.close()
                    await asyncio.shield(consumer)
            except BaseException as exc:
                cancelled = isinstance(exc, asyncio.CancelledError)  # the server gave up on us
                if not cancelled:
                    # After the engine or the store already ended the stream, the flush failing
                    # too is that outage's (said above), not a new fault.
                    already = self.dependency_outage and isinstance(
                        exc, (EngineError, StoreUnavailable)
                    )
                    (self.log.info if already else self.log.error)(
                        "finals lost at flush", error=type(exc).__name__
                    )
                    error = error or _pipeline_error(exc)
                # Nothing may outlive the session: no engine slot held, no late writes.
                with contextlib.suppress(BaseException):
                    await cancel_and_wait(consumer)
                with contextlib.suppress(Exception):
                    await stream.abort()
                if cancelled:
                    self._forget_live()
                    raise
            if not await self.pipeline.wait_stored():
                self.log.warning("stream closing before its last final is stored")
            # The engine at the end: the flush above may have failed over.
            self.pipeline.publish_status("stream.ended", self.engine or stream.engine_name)
            await self.pipeline.stop_publishing()
        self._forget_live()
        engine = self.engine or stream.engine_name
        self.services.metrics.audio_ingested(engine, self.handshake.language, self.audio_ms / 1000)
        if self.row is not None:
            await self.row.close(
                audio_ms=self.audio_ms, frames=self.frames, engines=self.engines_served
            )
        behind_s = self.rules.behind_ms / 1000
        self.log.info(
            "ingest ended",
            frames=self.frames,
            audio_ms=self.audio_ms,
            finals=self.pipeline.finals,
            audio_behind_s=round(behind_s, 1),
        )
        if behind_s > AUDIO_BEHIND_NOTED_S:
            self.log.info(
                "stream's audio ended behind its time: the client sent no frames for a while "
                "(send silence instead), and what it sent after is placed earlier than spoken",
                seconds=round(behind_s, 1),
            )
        return error

    def _forget_live(self) -> None:
        if self.services.live_ingests.pop(self.stream_id, None) is not None:
            self.services.metrics.ingest_stream_ended(self.tenant_id)

    async def _pump(
        self,
        stream: EngineStream,
        consumer: asyncio.Task[None],
        lease: IngestLease,
    ) -> CloseError | None:
        """Receive until the client closes or leaves; the error to close with, if any."""
        receiver = asyncio.create_task(self._receive(stream))
        lost = asyncio.create_task(lease.lost.wait())
        self.services.stream_rows.add(self.stream_id, self._progress)
        self.last_audio_at = time.monotonic()  # the idle deadline runs from the `ready`
        watchdog = asyncio.create_task(self._watch())
        ended = asyncio.create_task(self.conn.ended()) if self.conn else asyncio.Future()
        try:
            done, _ = await asyncio.wait(
                {receiver, consumer, lost, ended, watchdog}, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            receiver.cancel()  # we were cancelled: it must not read on until the client leaves
            raise
        finally:
            self.services.stream_rows.discard(self.stream_id)
            for task in (lost, ended, watchdog):
                task.cancel()
        if receiver not in done:
            with contextlib.suppress(Exception):
                await cancel_and_wait(receiver)
        elif not receiver.cancelled():
            receiver.exception()  # read here, whichever ends the stream: never "unretrieved"
        if ended in done:  # token expired or drain: flush (in _finish), then close as asked
            return ended.result()
        if watchdog in done:  # idle client or stalled engine
            return watchdog.result()
        if lost in done:
            if lease.taken_over:
                return CloseError(CloseCode.CONFLICT, "ingest lease taken over by another stream")
            return CloseError(CloseCode.UNAVAILABLE, "ingest lease could not be renewed")
        if consumer in done:
            # The engine's results ended while the client was still streaming. An engine (the
            # whole chain) gone is a dependency's outage, said at WARNING; anything else a bug.
            failure = consumer.exception()
            if isinstance(failure, (EngineError, StoreUnavailable)):
                self.dependency_outage = True
                self.log.warning("segment pipeline ended early", error=_named(failure))
            else:  # what it says may quote a transcript (a validation error's input): DEBUG
                self.log.error("segment pipeline ended early", error=_where(failure))
                self.log.debug("segment pipeline failure", error=repr(failure))
            return _pipeline_error(failure)
        failure = receiver.exception()
        if isinstance(failure, EngineError):  # feeding audio to a dead engine
            self.dependency_outage = True
            self.log.warning("engine failed", error=_named(failure))
            return _pipeline_error(failure)
        return receiver.result()

    async def _receive(self, stream: EngineStream) -> CloseError | None:
        """Feed the rules every message; act on their verdict (`ingest/session.py`)."""
        try:
            return await self._receive_messages(stream)
        finally:
            self.sync_counts()

    async def _receive_messages(self, stream: EngineStream) -> CloseError | None:
        rules = self.rules
        receive = asgi_receive(self.websocket)  # Starlette's `receive` adds a frame a message
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.websocket.client_state = WebSocketState.DISCONNECTED
                self.disconnect_code = peer_code(message.get("code"))
                return None
            now = time.monotonic()
            verdict = rules.receive(data=message.get("bytes"), text=message.get("text"), now=now)
            if isinstance(verdict, Violation):
                if verdict.kind == "rate_limited":
                    self.services.metrics.limit_hit("ingest_frames", self.tenant_id)
                return CloseError(VIOLATION_CODES[verdict.kind], verdict.reason)
            if isinstance(verdict, Control):
                if verdict.type == "finalize":
                    await stream.finalize()
                elif verdict.type == "refresh":
                    token = self.conn.token if self.conn is not None else None
                    if token is not None:
                        answer = token.answer_refresh(refresh_token(verdict.text))
                        await self.websocket.send_text(answer.decode())
                elif verdict.type == "ping":
                    pong = PongMessage(meeting_id=self.meeting_id).encode()
                    await self.websocket.send_text(pong.decode())
                elif verdict.type == "close":
                    return None
                continue
            self.last_audio_at = now
            self.sending_since = now
            await stream.send(verdict.data)  # the engine may make us wait while it catches up
            self.delivered_bytes += len(verdict.data)
            self.sending_since = None
            rules.engine_waited(now, time.monotonic())
            self.audio_clock.received(rules.audio_ms, now)

    def sync_counts(self) -> None:
        """The stream's message and frame tallies into the metrics (each second and at the end)."""
        self.counts.sync(self.rules.messages, self.rules.frames)

    async def _watch(self) -> CloseError:
        """One timer per stream instead of two timeouts per frame: ends the stream when the
        client sent no audio for INGEST_IDLE_S (it holds engine capacity for nothing) or an
        engine send has been waiting ENGINE_SEND_TIMEOUT_S. Checked every WATCH_EVERY_S."""
        idle_s = self.services.settings.ingest_idle_s
        while True:
            await asyncio.sleep(min(WATCH_EVERY_S, idle_s))
            self.sync_counts()
            now = time.monotonic()
            if self.sending_since is not None and now - self.sending_since > ENGINE_SEND_TIMEOUT_S:
                return CloseError(CloseCode.UNAVAILABLE, "speech engine is not keeping up")
            if self.sending_since is None and now - self.last_audio_at >= idle_s:
                return CloseError(
                    CloseCode.INGEST_IDLE,
                    f"no audio received for {idle_s:g} s (INGEST_IDLE_S); stream released",
                    kind="idle",
                )

    def _progress(self) -> StreamProgress | None:
        """What the stream's row is refreshed with (gateway.pipeline.stream_row), once written."""
        if self.row is None or not self.row.opened:
            return None
        engines = tuple(self.engines_served)
        return StreamProgress(self.stream_id, self.audio_ms, self.frames, engines)


def client_resends(error: CloseError | None) -> bool:
    """Whether the gateway ended the stream with a code after which its client reconnects at
    once and re-sends what no final covers (a drain, a lease lost, a limit, a dependency down).
    Not a stream its client ended (`close`, a close frame), nor one whose connection dropped or
    whose token expired: that client may never come back, and the speech at the end would be
    lost with it."""
    return error is not None and error.code in RESUMED_AFTER


def _engine_unavailable() -> CloseError:
    return CloseError(
        CloseCode.UNAVAILABLE, "no speech engine can serve this stream", kind="engine_unavailable"
    )


def _tenant_share_refusal(services: Services, config: StreamConfig) -> CloseError | None:
    """4429 when the stream was refused only because its tenant holds its share of a shared
    engine (LOCAL_ENGINE_TENANT_SHARE), not because the engines are full or failing."""
    for engine in services.engines.serving(config.language):
        limit: int | None = getattr(engine, "tenant_max_streams", None)
        held = getattr(engine, "tenant_streams", None)
        if limit is not None and limit >= getattr(engine, "max_streams", limit + 1):
            continue  # the share is off (LOCAL_ENGINE_TENANT_SHARE=1): the engine is full
        if limit is not None and held is not None and held(config.tenant_id) >= limit:
            return CloseError(
                CloseCode.RATE_LIMITED,
                f"this tenant already holds its share of the {engine.name} speech engine "
                f"({limit} streams, LOCAL_ENGINE_TENANT_SHARE); retry when one ends",
                kind="tenant_share",
            )
    return None


def _named(failure: BaseException) -> str:
    """An engine's or the store's failure for the log: its kind and what it says (engines' and
    the store's messages name the engine and the reason, never a credential)."""
    return f"{type(failure).__name__}: {failure}"


def _where(failure: BaseException | None) -> str:
    """An unexpected failure's kind and where it was raised, without its message."""
    if failure is None:
        return "None"
    frames = traceback.extract_tb(failure.__traceback__)
    place = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(failure).__name__}{place}"


def _pipeline_error(failure: BaseException | None) -> CloseError:
    if isinstance(failure, StoreUnavailable):
        return CloseError(CloseCode.UNAVAILABLE, "transcript store unavailable")
    if isinstance(failure, EngineUnavailable):
        return _engine_unavailable()
    return CloseError(CloseCode.INTERNAL_ERROR, "transcription failed")
