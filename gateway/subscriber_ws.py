"""`/api/v1/ws/meetings/{meeting_id}`: a viewer receives a meeting's partials, finals and status.

Live messages arrive as bytes already encoded once per publish and go through a bounded per-socket
outbox, so a slow viewer is closed (4408) instead of slowing the publisher or other viewers. With
`since=N` the viewer first gets the stored finals after N: it joins the room first (buffering live
messages), then reads history, then drops live finals the history already covered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket

from fanout.delivery import Outbox
from fanout.messages import ErrorMessage, PongMessage, TranscriptMessage
from fanout.token_bucket import TokenBucket
from gateway.auth import ROLE_VIEWER, bearer_token
from gateway.close_codes import CloseCode, CloseError
from gateway.ids import parse_segment_no
from gateway.live_connections import LiveConnection, open_session, refuse_while_draining
from gateway.logs import get_logger
from gateway.services import Services
from gateway.ws_common import authorize, serve_connection
from store.base import FinalSegment

log = get_logger("gateway.subscriber")

MAX_CLIENT_MESSAGE_BYTES = 4096


async def subscriber_endpoint(websocket: WebSocket) -> None:
    async def handle(services: Services) -> int | None:
        refuse_while_draining(services)
        principal, meeting_id = authorize(websocket, services, ROLE_VIEWER)
        since = parse_since(websocket.query_params.get("since"))
        session = SubscriberSession(websocket, services, principal.tenant_id, meeting_id)
        token = bearer_token(websocket.headers, websocket.query_params)
        async with open_session(services, token, principal, ROLE_VIEWER, meeting_id) as conn:
            session.conn = conn
            # Token expiry (4401) or a drain (1012) ends the session from outside.
            return await conn.run_until_ended(session.run(since))

    await serve_connection(websocket, "viewer", handle)


def parse_since(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return parse_segment_no(raw)
    except ValueError as exc:
        raise CloseError(CloseCode.PROTOCOL_ERROR, str(exc)) from None


def final_message(meeting_id: str, segment: FinalSegment) -> bytes:
    return TranscriptMessage(
        type="transcript.final",
        meeting_id=meeting_id,
        segment_no=segment.segment_no,
        text=segment.text,
        start_ms=segment.start_ms,
        end_ms=segment.end_ms,
        speaker=segment.speaker,
        confidence=segment.confidence,
        source=segment.source,
        ts=segment.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    ).encode()


class SubscriberSession:
    def __init__(
        self, websocket: WebSocket, services: Services, tenant_id: str, meeting_id: str
    ) -> None:
        self.websocket = websocket
        self.services = services
        self.tenant_id = tenant_id
        self.meeting_id = meeting_id
        self.conn_id = uuid.uuid4().hex
        self.conn: LiveConnection | None = None  # set by the endpoint (token refresh, drain)
        rate = services.settings.subscriber_msgs_per_s
        self.bucket = TokenBucket(rate=rate, burst=2 * rate, now=time.monotonic())

    async def run(self, since: int | None) -> int | None:
        """Serve until the viewer leaves; the close code it left with."""
        services, settings = self.services, self.services.settings
        coordinator = services.coordinator
        limit = settings.max_ws_clients_per_meeting
        if not await coordinator.join_meeting(self.tenant_id, self.meeting_id, self.conn_id, limit):
            services.metrics.limit_hit("meeting_subscribers", self.tenant_id)
            raise CloseError(
                CloseCode.RATE_LIMITED, f"meeting subscriber limit reached ({limit} subscribers)"
            )
        try:
            outbox = Outbox(settings.subscriber_queue_max)
            # Where this viewer's finals start, should the bus lose some (see gap_repair).
            baseline = await services.store.last_segment_no(self.tenant_id, self.meeting_id)
            await services.rooms.join(self.tenant_id, self.meeting_id, outbox, baseline=baseline)
            try:
                send = self._send
                if since is not None:
                    last = await self._send_history(since)
                    send = _skip_finals_through(last, send)
                return await self._serve(outbox, send)
            finally:
                outbox.close()
                await services.rooms.leave(self.tenant_id, self.meeting_id, outbox)
        finally:
            await coordinator.leave_meeting(self.tenant_id, self.meeting_id, self.conn_id)

    async def _send(self, data: bytes) -> None:
        # A viewer that stops reading must not hold its task, socket and meeting slot.
        try:
            async with asyncio.timeout(self.services.settings.subscriber_send_timeout_s):
                await self.websocket.send_text(data.decode())
        except TimeoutError:
            raise CloseError(
                CloseCode.SLOW_CONSUMER, "subscriber too slow: send timed out"
            ) from None
        self.services.metrics.delivered(data, self.tenant_id)

    async def _send_history(self, since: int) -> int:
        """Send stored finals after `since`; the last segment_no the viewer now has."""
        last = since
        store = self.services.store
        while True:
            batch = await store.finals_after(self.tenant_id, self.meeting_id, last, limit=500)
            for segment in batch:
                await self._send(final_message(self.meeting_id, segment))
                last = segment.segment_no
            if len(batch) < 500:
                return last

    async def _serve(self, outbox: Outbox, send: Callable[[bytes], Awaitable[None]]) -> int | None:
        sender = asyncio.create_task(outbox.run(send))
        receiver = asyncio.create_task(self._receive(outbox))
        overflow = asyncio.create_task(outbox.overflow.wait())
        tasks = {sender, receiver, overflow}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if overflow in done:
            raise CloseError(CloseCode.SLOW_CONSUMER, "subscriber too slow: outbound queue full")
        finished = receiver if receiver in done else sender
        failure = finished.exception()
        if failure is not None:
            raise failure  # CloseError, WebSocketDisconnect or a bug: serve_connection decides
        return receiver.result() if finished is receiver else None

    async def _receive(self, outbox: Outbox) -> int:
        """Answer the viewer's messages; the close code once it leaves."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return message.get("code", CloseCode.NORMAL)
            self.services.metrics.message_received(ROLE_VIEWER, self.tenant_id)
            if not self.bucket.take(time.monotonic()):
                self.services.metrics.limit_hit("subscriber_messages", self.tenant_id)
                rate = self.services.settings.subscriber_msgs_per_s
                raise CloseError(
                    CloseCode.RATE_LIMITED, f"subscriber message rate exceeded ({rate:g}/s)"
                )
            text = message.get("text")
            if text is None:
                self._reply(outbox, 4400, "binary messages are not accepted")
                continue
            if len(text) > MAX_CLIENT_MESSAGE_BYTES:
                raise CloseError(CloseCode.TOO_BIG, "message too large")
            try:
                data = json.loads(text)
                kind = data.get("type")
            except (ValueError, AttributeError, RecursionError):
                self._reply(outbox, 4400, "malformed JSON")
                continue
            if kind == "ping":
                outbox.offer(PongMessage(meeting_id=self.meeting_id).encode())
            elif kind == "refresh" and self.conn is not None and self.conn.token is not None:
                outbox.offer(self.conn.token.answer_refresh(data.get("token")))
            else:
                self._reply(outbox, 4400, "unknown message type; allowed: ping, refresh")

    def _reply(self, outbox: Outbox, code: int, text: str) -> None:
        outbox.offer(ErrorMessage(meeting_id=self.meeting_id, code=code, message=text).encode())


def _skip_finals_through(
    last: int, send: Callable[[bytes], Awaitable[None]]
) -> Callable[[bytes], Awaitable[None]]:
    """Drop live finals the history already delivered.

    Finals of two sources may be published out of number order, so every live final is checked
    against the history's last number; partials and status messages go straight out unparsed.
    """

    async def dedupe(data: bytes) -> None:
        if (
            data.startswith(b'{"type":"transcript.final"')
            and json.loads(data)["segment_no"] <= last
        ):
            return
        await send(data)

    return dedupe
