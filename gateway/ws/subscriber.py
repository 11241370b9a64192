"""`/api/v1/ws/meetings/{meeting_id}`: a viewer receives a meeting's partials, finals and status.

Live messages arrive as bytes already encoded once per publish and reach the socket through its
`ViewerQueue` (fanout.delivery): written directly as a frame built once per publish while the viewer
keeps up, queued (bounded in messages and bytes, partials coalesced) while it does not; a viewer
whose queue overflows or stalls is closed 4408 instead of slowing the publisher or other viewers.
With `since=N` the viewer first gets the stored finals after N: it joins the room first (holding
live messages in its queue), then reads history (one store read shared by viewers asking at the
same moment), then drops live finals the history already covered. An idle viewer holds no task:
under the gateway's server its handler parks the connection (gateway.server.parking) and is
resumed in a task of its own only to answer a message or to close; a writer task exists only
while something is queued. Under another ASGI server the handler awaits its messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from fanout.delivery import ViewerQueue, ViewerQueueOverflow, ViewerQueueStalled
from fanout.direct_frames import DIRECT_FRAMES, frame_writer
from fanout.frames import text_frame
from fanout.messages import ErrorMessage, PongMessage, SinceBeyondMessage
from fanout.publication import Kind, Publication
from fanout.token_bucket import TokenBucket
from gateway.auth import ROLE_VIEWER, bearer_token
from gateway.close_codes import CloseCode, CloseError, peer_code
from gateway.observability.logs import get_logger
from gateway.observability.metrics import SCOPE_TENANT
from gateway.params import MultiParams, ParamError, segment_no, single
from gateway.pipeline.live_tips import tip_message
from gateway.pipeline.stored_finals import final_message
from gateway.server.parking import PARKING, Parked, parker
from gateway.server.starlette_internals import asgi_receive, forget_parsed_request
from gateway.services import Services
from gateway.ws.common import (
    authorize,
    open_connection,
    refuse_while_draining,
    serve_connection,
)
from gateway.ws.live import LiveConnection
from ingest.insights.live import MAX_BEHIND_FINALS, WINDOW_FINALS
from store.errors import DATABASE_UNREACHABLE

log = get_logger("gateway.subscriber")

# Room for a refresh whose token is as long as a request header may carry one (8 KiB).
MAX_CLIENT_MESSAGE_BYTES = 16384
HISTORY_BATCH = 500
# How long a `since=` history waits for the store to hold the finals the viewer's room handed
# out before it joined (see `_send_history`).
HISTORY_CATCH_UP_S = 20.0


class FinalsHeld:
    """The finals a viewer holds after `since`: every number up to `contiguous`, and `above`."""

    __slots__ = ("above", "contiguous")

    def __init__(self, since: int) -> None:
        self.contiguous = since
        self.above: set[int] = set()

    def has(self, segment_no: int) -> bool:
        return segment_no <= self.contiguous or segment_no in self.above

    def add(self, segment_no: int) -> None:
        self.above.add(segment_no)
        while self.contiguous + 1 in self.above:
            self.contiguous += 1
            self.above.discard(self.contiguous)


def subscriber_endpoint(websocket: WebSocket) -> Awaitable[None]:
    # Neither this nor `_serve` is a coroutine: every frame of the await chain lives as long as
    # the viewer stays (serve_connection, LiveConnection.run_until_ended, SubscriberSession.run).
    return serve_connection(websocket, "viewer", _serve)


def _serve(websocket: WebSocket, services: Services) -> Awaitable[int | None]:
    refuse_while_draining(services)
    principal, meeting_id = authorize(websocket, services, ROLE_VIEWER)
    since = parse_since(websocket.query_params)
    token = bearer_token(websocket.headers, websocket.query_params)
    forget_handshake(websocket)
    session = SubscriberSession(websocket, services, principal.tenant_id, meeting_id)
    conn = session.conn = open_connection(services, token, principal, ROLE_VIEWER, meeting_id)
    # Token expiry (4401) or a drain (1012) ends the session from outside; the connection is
    # unregistered when it ends.
    return conn.run_until_ended(session.run(since))


# What an authorized viewer's scope is still read for: the WebSocket (`type`, `app`,
# `path_params`), the server's extensions, and the tenant its end is counted for.
VIEWER_SCOPE_KEYS = ("type", "app", "path_params", SCOPE_TENANT)


def forget_handshake(websocket: WebSocket) -> None:
    """A viewer's socket may live for hours: keep none of the handshake it no longer needs (the
    headers, the query string with its token, the rest of the ASGI scope, about 1 KiB, and
    Starlette's parsed copies of them). The scope dict stays the same object, now small: the
    server and the WebSocket share it."""
    scope = websocket.scope
    kept = {key: scope[key] for key in VIEWER_SCOPE_KEYS if key in scope}
    extensions = scope.get("extensions") or {}
    kept["extensions"] = {
        key: extensions[key] for key in (DIRECT_FRAMES, PARKING) if key in extensions
    }
    headers = scope.get("headers")
    if isinstance(headers, list):
        headers.clear()  # also empties a cached `websocket.headers`, which shares this list
    scope.clear()  # gives the large table back; the few keys kept fit a small one
    scope.update(kept)
    forget_parsed_request(websocket)


def parse_since(query: MultiParams) -> int | None:
    """`since=N` (once, within what the store holds), or None (absent or empty, as on the REST
    API: `?since=`, a URL builder's blank, is no `since`); 4400 naming the rule otherwise."""
    try:
        raw = single(query, "since")
        return segment_no(raw) if raw else None
    except ParamError as exc:
        raise CloseError(CloseCode.PROTOCOL_ERROR, str(exc)) from None


async def _last_segment_no(services: Services, tenant_id: str, meeting_id: str) -> int:
    """The meeting's last stored final, or during a database outage the highest number handed
    out that this replica knows of: a viewer without `since` joins live then, and finals
    numbered meanwhile are written when the database is back."""
    try:
        return await services.store.last_segment_no(tenant_id, meeting_id)
    except DATABASE_UNREACHABLE as exc:
        log.warning("viewer joins without the database", error=type(exc).__name__)
        return await _highest_handed_out(services, tenant_id, meeting_id)


async def _highest_handed_out(
    services: Services, tenant_id: str, meeting_id: str, stored: int = 0
) -> int:
    """The highest number of the meeting known here beyond `stored` (its last stored final):
    finals waiting in this replica's outbox, given to its room, or counted by the meeting's
    counter (Redis, or this process). Raises when the outbox or the counter cannot be read."""
    pending = await services.finals.outbox.pending_high(tenant_id, meeting_id)
    counter = await services.finals.numbering.current(tenant_id, meeting_id)
    seen = services.rooms.high_water(tenant_id, meeting_id)
    return max(stored, pending, counter or 0, seen or 0)


async def _since_within_meeting(
    services: Services, tenant_id: str, meeting_id: str, since: int, last_stored: int
) -> int:
    """`since` above every number the meeting has handed out (its id used again after a deletion,
    or a number from another meeting) counts as the meeting's last number, so the viewer gets
    the finals numbered after it instead of dropping them as held. When that cannot be told
    (the counter away), `since` stands as given."""
    try:
        highest = await _highest_handed_out(services, tenant_id, meeting_id, last_stored)
    except Exception as exc:
        log.warning("since= not checked against the meeting", error=type(exc).__name__)
        return since
    return min(since, highest)


class SubscriberSession:
    __slots__ = (
        "_failure",
        "_joined_at",
        "_since_beyond",
        "_task",
        "bucket",
        "conn",
        "conn_id",
        "delivered",
        "meeting_id",
        "queue",
        "services",
        "tenant_id",
        "websocket",
    )

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
        self._task: asyncio.Task[object] | None = None
        self._failure: BaseException | None = None
        self.delivered = services.metrics.delivery_counter(tenant_id)
        self._joined_at = 0  # the room's finals_given when this viewer joined it
        self.queue: ViewerQueue | None = None  # set once it joins its room
        self._since_beyond: bytes | None = None  # a SinceBeyondMessage to send first

    async def run(self, since: int | None) -> int | None:
        """Serve until the viewer leaves; the close code it left with. Raises Parked when the
        server took the idle connection over (gateway.server.parking): `_resume` goes on."""
        services, settings = self.services, self.services.settings
        coordinator = services.coordinator
        per_tenant = settings.max_ws_clients_per_tenant
        if not services.viewers.take(self.tenant_id, per_tenant):
            services.metrics.limit_hit("tenant_subscribers", self.tenant_id)
            raise CloseError(
                CloseCode.RATE_LIMITED,
                f"tenant subscriber limit reached ({per_tenant} viewers on this replica)",
            )
        limit = settings.max_ws_clients_per_meeting
        try:
            joined = await coordinator.join_meeting(
                self.tenant_id, self.meeting_id, self.conn_id, limit
            )
        except BaseException:
            services.viewers.give_back(self.tenant_id)
            raise
        if not joined:
            services.viewers.give_back(self.tenant_id)
            services.metrics.limit_hit("meeting_subscribers", self.tenant_id)
            raise CloseError(
                CloseCode.RATE_LIMITED, f"meeting subscriber limit reached ({limit} subscribers)"
            )
        try:
            queue = self.queue = ViewerQueue(
                settings.subscriber_queue_max, settings.subscriber_queue_max_bytes
            )
            queue.attach(
                self._send_text,
                direct=frame_writer(self.websocket.scope),
                stall_timeout_s=settings.subscriber_send_timeout_s,
                on_failure=self._abort,
                counter=self.delivered,
            )
            if since is not None:
                queue.hold()  # live messages wait in the queue behind the history
            # Where this viewer's finals start, should the bus lose some (see gap_repair).
            tenant_id, meeting_id = self.tenant_id, self.meeting_id
            baseline = await services.rooms.baseline_reads.run(
                (tenant_id, meeting_id), lambda: _last_segment_no(services, tenant_id, meeting_id)
            )
            await services.rooms.join(self.tenant_id, self.meeting_id, queue, baseline=baseline)
            if since is not None and since > baseline:
                asked = since
                since = await _since_within_meeting(
                    services, tenant_id, meeting_id, since, baseline
                )
                if since < asked:  # told first: what it holds is not this meeting's
                    self._since_beyond = SinceBeyondMessage(
                        meeting_id=meeting_id, since=asked, last_segment_no=since
                    ).encode()
        except BaseException:
            services.viewers.give_back(self.tenant_id)
            await coordinator.leave_meeting(self.tenant_id, self.meeting_id, self.conn_id)
            raise
        # A history read started before a final reached the room must not serve a viewer
        # that joined after it (that viewer got the final neither live nor from the read).
        self._joined_at = services.rooms.finals_given(self.tenant_id, self.meeting_id)
        # Finals after `since` the room handed out before this viewer joined: it gets them
        # from the history only (see `_send_history`). Read now, before any await.
        owed = [] if since is None else services.rooms.given_after(tenant_id, meeting_id, since)
        return await self._live(since, owed)

    def _resume(self) -> Awaitable[None]:
        """The parked connection's next event: served as the handler would, in a new task."""
        conn = self.conn
        assert conn is not None

        def handler(websocket: WebSocket, services: Services) -> Awaitable[int | None]:
            return conn.run_until_ended(self._live(None, ()), resumed=True)

        return serve_connection(self.websocket, "viewer", handler, resumed=True)

    async def _live(self, since: int | None, owed: Sequence[int]) -> int | None:
        """The joined viewer's life: its history (`since`), then its messages until it leaves;
        then it leaves the room and the meeting. Parking skips the leaving."""
        services, queue = self.services, self.queue
        assert queue is not None
        parked = False
        try:
            self._task = asyncio.current_task()
            try:
                if self._failure is not None:
                    raise self._failure  # the queue gave up while joining, or while parked
                if since is not None:
                    if self._since_beyond is not None:
                        data, self._since_beyond = self._since_beyond, None
                        async with self._stall_watchdog() as sending:
                            sending(True)
                            await self._send_stored(text_frame(data), data)
                    # Finals of two sources may be published out of number order, so every live
                    # final is checked against what the history gave.
                    sent = await self._send_history(since, owed)
                    await self._send_tips(since)
                    queue.skip_finals_through, queue.skip_finals = sent
                    queue.release()
                return await self._answer_messages(queue)
            except Parked:
                parked = True
                raise
            except asyncio.CancelledError:
                # `_abort` cancels this task to end the connection: raise the reason instead.
                task = self._task
                if self._failure is None or task is None or task.uncancel() > 0:
                    raise
                raise self._failure from None
            finally:
                self._task = None  # past this point (cleanup) nothing may cancel the handler
                if not parked:
                    queue.cancel_writer()
                    await services.rooms.leave(self.tenant_id, self.meeting_id, queue)
        finally:
            if not parked:
                services.viewers.give_back(self.tenant_id)
                await services.coordinator.leave_meeting(
                    self.tenant_id, self.meeting_id, self.conn_id
                )

    async def _answer_messages(self, queue: ViewerQueue) -> int | None:
        """Answer the viewer's messages until it leaves (its close code). Where the server can
        park the connection, answer those already received, then park instead of waiting."""
        park = parker(self.websocket.scope)
        if park is None:
            receive = asgi_receive(self.websocket)  # Starlette's `receive` adds a frame
            while True:
                if self._failure is not None:
                    raise self._failure  # the queue gave up in this task (see `_abort`)
                code = self._answer(queue, await receive())
                if code is not None:
                    return code
        conn = self.conn
        while True:
            if conn is not None and conn.end_error is not None:
                raise conn.end_error  # asked to end while parked (a drain, the token's expiry)
            if self._failure is not None:
                raise self._failure  # the queue gave up, while parked or in this task
            message = park.take_message()
            if message is None:
                wake = park.park(self._resume)
                if conn is not None:
                    conn.wake = wake
                raise Parked
            code = self._answer(queue, message)
            if code is not None:
                return code

    def _abort(self, failure: BaseException) -> None:
        """The queue gave up (overflow, stall, or the socket failed): end the connection."""
        if self._failure is not None:
            return
        slow = CloseCode.SLOW_CONSUMER
        if isinstance(failure, ViewerQueueOverflow):
            failure = CloseError(slow, "subscriber too slow: outbound queue full")
        elif isinstance(failure, ViewerQueueStalled):
            failure = CloseError(slow, "subscriber too slow: send timed out")
        elif isinstance(failure, OSError):
            failure = WebSocketDisconnect(1006)  # the peer went away mid-send
        self._failure = failure
        task = self._task
        if task is not None:
            # From another task or a callback, cancel the handler's wait. In the handler's own
            # task (a reply that overflowed the queue) its loop sees `_failure` before it waits
            # again: a cancel would stay pending and cut its cleanup short.
            if task is not asyncio.current_task():
                task.cancel()
        else:
            park = parker(self.websocket.scope)
            if park is not None:
                park.unpark()  # parked: resumed, it closes with the failure

    async def _send_text(self, data: bytes) -> None:
        # The ASGI send chain: used when the server offers no direct frame writes.
        await self.websocket.send_text(data.decode())

    async def _send_history(self, since: int, owed: Sequence[int]) -> tuple[int, frozenset[int]]:
        """Send stored finals after `since`, in number order. Returns what the viewer now has:
        every final up to the first number missing from the history, and the ones sent above it
        (a final numbered before a later one but stored after it was read still comes live).

        `owed` are finals above `since` the viewer gets from the history or not at all: those
        its room handed out before it joined, and those waiting in this replica's outbox. A
        store still catching up (the outbox writing what a database outage held back) is read
        again until it has them, for up to HISTORY_CATCH_UP_S, sending nothing past the lowest
        one it lacks meanwhile. A final that never arrives (its replica's outbox lost with its
        disk) does not hold the viewer longer: it goes on without it."""
        held = FinalsHeld(since)
        outbox = self.services.finals.outbox
        if outbox.depth:  # finals waiting here for the database are owed too
            try:
                pending = await outbox.pending_numbers(self.tenant_id, self.meeting_id, since)
            except Exception as exc:  # read what the store has; the room's list still holds
                log.warning("outbox not read for a since= history", error=type(exc).__name__)
            else:
                owed = [*owed, *pending]
        waiting = sorted(n for n in set(owed) if n > since)
        after, delay = since, 0.05
        deadline = time.monotonic() + HISTORY_CATCH_UP_S
        while True:
            await self._send_stored_after(held, after, waiting)
            if not waiting:
                break
            after = waiting[0] - 1  # everything below was sent, or was not owed
            if self._viewer_gone():
                break  # its close ends the connection; nothing more to send
            if time.monotonic() >= deadline:
                log.warning("since= history lacks finals handed out live", missing=len(waiting))
                waiting.clear()
                await self._send_stored_after(held, after, waiting)
                break
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)
        return held.contiguous, frozenset(held.above)

    async def _send_stored_after(self, held: FinalsHeld, after: int, waiting: list[int]) -> None:
        """Send the stored finals above `after` that the viewer does not hold, in order, up to
        `waiting[0]` (the lowest owed final not sent yet), taking each one sent off `waiting`."""
        last = after
        async with self._stall_watchdog() as sending:
            while True:
                sending(False)  # a slow store read is not a slow viewer
                batch = await self._history_batch(last)
                for pub in batch:
                    number: int = pub.segment_no  # type: ignore[assignment]
                    if waiting and number > waiting[0]:
                        return  # the store lacks an owed final below this one yet
                    last = number
                    if held.has(number):
                        continue
                    sending(True)
                    await self._send_stored(pub.frame, pub.data)
                    self.delivered.sent(pub, queued=True)  # written awaiting, in order
                    held.add(number)
                    if waiting and number == waiting[0]:
                        waiting.pop(0)
                if len(batch) < HISTORY_BATCH:
                    return

    def _viewer_gone(self) -> bool:
        """Whether the viewer's connection is closing or gone (where the server can tell)."""
        if self._failure is not None:
            return True
        writer = frame_writer(self.websocket.scope)
        return writer is not None and writer.closing()

    async def _send_tips(self, since: int) -> None:
        """The stored live tips the viewer may lack, oldest first, after the finals' history:
        every tip stored once the meeting's newest final was about `since` or later, whatever
        finals it cites (a tip it has, or one also published live meanwhile, may come twice:
        viewers keep one per `tip_no`)."""
        live_tips = self.services.live_tips
        if live_tips is None:
            return
        pages = live_tips.tips.pages_missed_since(
            self.tenant_id,
            self.meeting_id,
            since,
            # Finals stored while a tip's insert ran, which it did not see: a few at most.
            slack=MAX_BEHIND_FINALS,
            # By what they cite too (a store lagging the live finals, tips stored before
            # migration 0013): a run starts at most MAX_BEHIND_FINALS behind the newest final and
            # WINDOW_FINALS more came while its call was out.
            legacy_window=MAX_BEHIND_FINALS + WINDOW_FINALS,
        )
        async with self._stall_watchdog() as sending:
            while True:
                sending(False)
                try:
                    tips = await anext(pages, None)
                except DATABASE_UNREACHABLE:
                    raise CloseError(
                        CloseCode.UNAVAILABLE,
                        "transcript store unavailable: since= needs it, retry",
                    ) from None
                if tips is None:
                    return
                for tip in tips:
                    sending(True)
                    data = tip_message(self.meeting_id, tip).encode()
                    await self._send_stored(text_frame(data), data)
                    self.delivered.sent(Publication.parse(data), queued=True)

    async def _send_stored(self, frame: bytes, data: bytes) -> None:
        writer = frame_writer(self.websocket.scope)
        if writer is not None:
            await writer.write(frame)
        else:
            await self._send_text(data)

    @contextlib.asynccontextmanager
    async def _stall_watchdog(self) -> AsyncIterator[Callable[[bool], None]]:
        """Close a viewer that stops reading while stored messages are sent to it: the yielded
        `sending(True)` arms the watchdog for one send, `sending(False)` disarms it (a store
        read in between is not the viewer's fault)."""
        stall_s = self.services.settings.subscriber_send_timeout_s
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as watchdog:

                def sending(armed: bool) -> None:
                    watchdog.reschedule(loop.time() + stall_s if armed else None)

                yield sending
        except TimeoutError:
            raise CloseError(
                CloseCode.SLOW_CONSUMER, "subscriber too slow: send timed out"
            ) from None
        except OSError:
            raise WebSocketDisconnect(1006) from None

    async def _history_batch(self, after: int) -> list[Publication]:
        """Stored finals after `after`, encoded and framed once for every viewer asking for the
        same ones at the same moment (a reconnect storm reads the store once)."""
        tenant_id, meeting_id, store = self.tenant_id, self.meeting_id, self.services.store

        async def read() -> list[Publication]:
            batch = await store.finals_after(tenant_id, meeting_id, after, limit=HISTORY_BATCH)
            return [
                Publication(
                    final_message(meeting_id, segment),
                    Kind.FINAL,
                    segment_no=segment.segment_no,
                    source=segment.source,
                )
                for segment in batch
            ]

        key = (tenant_id, meeting_id, after, self._joined_at)
        try:
            return await self.services.rooms.history_reads.run(key, read)
        except DATABASE_UNREACHABLE:
            # Not a vanished viewer (OSError below): history lives in the database.
            raise CloseError(
                CloseCode.UNAVAILABLE, "transcript store unavailable: since= needs it, retry"
            ) from None

    def _answer(self, queue: ViewerQueue, message: Message) -> int | None:
        """Answer one message from the viewer (through the queue, in order with the rest); the
        close code if it was the viewer leaving."""
        if message["type"] == "websocket.disconnect":
            self.websocket.client_state = WebSocketState.DISCONNECTED
            return peer_code(message.get("code"))
        self.services.metrics.message_received(ROLE_VIEWER, self.tenant_id)
        if not self.bucket.take(time.monotonic()):
            self.services.metrics.limit_hit("subscriber_messages", self.tenant_id)
            rate = self.services.settings.subscriber_msgs_per_s
            raise CloseError(
                CloseCode.RATE_LIMITED, f"subscriber message rate exceeded ({rate:g}/s)"
            )
        text = message.get("text")
        if text is None:
            if len(message.get("bytes") or b"") > MAX_CLIENT_MESSAGE_BYTES:  # as a text one
                raise CloseError(CloseCode.TOO_BIG, "message too large")
            self._reply(queue, 4400, "binary messages are not accepted")
            return None
        if len(text) > MAX_CLIENT_MESSAGE_BYTES or len(text.encode()) > MAX_CLIENT_MESSAGE_BYTES:
            raise CloseError(CloseCode.TOO_BIG, "message too large")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            self._reply(queue, 4400, "malformed JSON")
            return None
        if not isinstance(data, dict):
            self._reply(queue, 4400, 'a message must be a JSON object with a "type" field')
            return None
        kind = data.get("type")
        if kind == "ping":
            # Through the queue: a pong stays in order behind queued messages.
            queue.offer(PongMessage(meeting_id=self.meeting_id).encode())
        elif kind == "refresh" and self.conn is not None and self.conn.token is not None:
            queue.offer(self.conn.token.answer_refresh(data.get("token")))
        else:
            self._reply(queue, 4400, "unknown message type; allowed: ping, refresh")
        return None

    def _reply(self, queue: ViewerQueue, code: int, text: str) -> None:
        queue.offer(ErrorMessage(meeting_id=self.meeting_id, code=code, message=text).encode())
