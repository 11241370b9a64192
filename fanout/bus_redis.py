"""`RedisBus`: the bus across replicas, on Redis pub/sub (channel = prefix [+ "db<n>:"] + topic).

One pub/sub connection per process, owned by one reader task that dispatches messages to the
local handlers; a topic with many local handlers is SUBSCRIBEd once. Publishing uses a separate
pooled client with timeouts and raises `BusUnavailable` rather than hanging; during a burst a
publish waits (bounded) for a pooled connection instead of failing (shared.redis_pool).

Why not `redis.asyncio.client.PubSub`: it reconnects on its own, inside `get_message()` (even
with `retries=0`, its failure callback reconnects before re-raising) and then re-subscribes from
its own `channels` dict, which is updated only after a SUBSCRIBE was sent successfully, so a
subscribe issued while the link is down is silently lost; and a second PubSub opened on error
next to the silently-revived first one subscribes twice. Here the handler table is the single
source of truth: the reader owns a plain `redis.asyncio` connection, and after any failure
discards it, waits (exponential backoff with jitter) and opens a fresh one that SUBSCRIBEs every
topic that has handlers. A PING sent when the link has been idle detects half-open connections.
Once the connection is set up (redis-py: address, TLS, AUTH, CLIENT SETNAME), its transport is
handed to `_Link`, a protocol that feeds the socket's bytes to hiredis and dispatches each reply
from the transport's callback: reading through redis-py's stream and coroutine chain cost about
ten microseconds more per message, paid for every publish of every meeting.

Redis pub/sub is at-most-once: messages published while a replica is reconnecting are lost to
it. The bus reports that gap once its subscriptions are live again, and rooms detect gaps in
final numbers themselves; both are refilled from the store (gateway.pipeline.gap_repair).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from fanout.bus import Bus, BusUnavailable, Handler, Subscription
from fanout.in_flight import PARTIAL_TTL_MS, in_flight_change
from fanout.topics import is_status_topic
from shared.backoff import backoff_delay, describe
from shared.outage_log import OutageLines
from shared.redis_pool import DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT_S, blocking_client
from shared.tasks import cancel_and_wait, shared_task

log = logging.getLogger(__name__)

# asyncio.TimeoutError is the builtin TimeoutError on 3.11; OSError covers socket failures.
_NETWORK_ERRORS = (RedisError, OSError, TimeoutError)
# Status messages kept per status topic for gap repair (Bus.recent), and for how long.
STATUS_LOG_LENGTH = 32
STATUS_LOG_TTL_MS = 10 * 60 * 1000


# Replies dispatched per transport callback: under a flood, writers run between batches.
_REPLIES_PER_BATCH = 64


class _Link(asyncio.Protocol):
    """The pub/sub connection once set up: takes over its transport from redis-py, parses what
    arrives with hiredis and hands each reply to `on_reply` at once, and sends commands."""

    def __init__(
        self,
        conn: AbstractConnection,
        transport: asyncio.Transport,
        on_reply: Callable[[Any], None],
    ) -> None:
        self.conn = conn
        self._transport = transport
        self._on_reply = on_reply
        self._parser = hiredis.Reader()
        self._loop = asyncio.get_running_loop()
        self._paused = False
        self.lost: asyncio.Future[None] = self._loop.create_future()
        # Read here too: a link lost before the reader awaits it must not be logged as an
        # exception nobody retrieved.
        self.lost.add_done_callback(lambda lost: lost.cancelled() or lost.exception())
        self.last_rx = self._loop.time()  # the loop's time of the last bytes received
        self.ping_sent_at: float | None = None  # an unanswered PING
        self.silent = False  # the watchdog gave up on the link
        transport.set_protocol(self)

    @property
    def closed(self) -> bool:
        return self.lost.done() or self._transport.is_closing()

    def send(self, *args: str) -> None:
        if self.closed:
            raise RedisConnectionError("redis pub/sub connection is closed")
        self._transport.write(b"".join(self.conn.pack_command(*args)))

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        self.last_rx, self.ping_sent_at = self._loop.time(), None
        if not self._paused:
            self._dispatch()

    def _dispatch(self) -> None:
        if self.closed:
            return  # a dropped link's last bytes: its successor reports the gap
        gets = self._parser.gets
        try:
            for _ in range(_REPLIES_PER_BATCH):
                reply = gets()
                if reply is False:
                    if self._paused:
                        self._paused = False
                        self._transport.resume_reading()
                    return
                if isinstance(reply, hiredis.ReplyError):
                    raise reply
                self._on_reply(reply)
        except Exception as exc:  # a protocol error, an error reply or a bug: reconnect
            self._fail(exc)
            return
        # A backlog still being handed out is a link that delivers, whatever reading it
        # waits: the watchdog must not take it for a silent one (and drop the backlog).
        self.last_rx, self.ping_sent_at = self._loop.time(), None
        if not self._paused:
            self._paused = True
            self._transport.pause_reading()
        self._loop.call_soon(self._dispatch)

    def _fail(self, exc: BaseException) -> None:
        if not self.lost.done():
            self.lost.set_exception(exc)
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or RedisConnectionError("redis closed the pub/sub connection"))


class _RedisSubscription(Subscription):
    def __init__(self, bus: RedisBus, topic: str, handler: Handler) -> None:
        self._bus, self._topic, self._handler = bus, topic, handler
        self._cancelled = False

    async def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            await self._bus._remove(self._topic, self._handler)


class RedisBus(Bus):
    def __init__(
        self,
        url: str,
        prefix: str = "",
        *,
        client_name: str | None = None,
        op_timeout_s: float = 2.0,
        subscribe_timeout_s: float = 5.0,
        ping_interval_s: float = 5.0,
        ping_timeout_s: float = 3.0,
        reconnect_base_s: float = 0.05,
        reconnect_cap_s: float = 3.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self.reached = False  # until its pub/sub link is first up
        self._link_outage = OutageLines(log)
        self.prefix = prefix
        # Names the pub/sub connection in CLIENT LIST (ops, and tests that kill it).
        self.client_name = client_name or f"{prefix}fanout-bus-{uuid.uuid4().hex[:12]}"
        self._op_timeout_s = op_timeout_s
        # A publish may first wait (bounded) for a pooled connection during a burst.
        self._publish_timeout_s = op_timeout_s + pool_timeout_s
        self._subscribe_timeout_s = subscribe_timeout_s
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._reconnect_base_s = reconnect_base_s
        self._reconnect_cap_s = reconnect_cap_s

        # Publishing retries on a fresh connection (a restarted Redis leaves every pooled
        # connection dead). A PUBLISH that reached Redis before its connection died is then
        # delivered twice: rooms drop a repeated final or status message (fanout.rooms).
        self._client = blocking_client(
            url,
            max_connections=max_connections,
            pool_timeout_s=pool_timeout_s,
            op_timeout_s=op_timeout_s,
        )
        # Only a factory for the pub/sub connection (parses the URL: TCP, TLS or unix socket).
        # RESP2 keeps pub/sub frames plain arrays; no redis-py retries, the reader reconnects.
        self._pubsub_factory = ConnectionPool.from_url(
            url,
            protocol=2,
            client_name=self.client_name,
            socket_timeout=op_timeout_s,
            socket_connect_timeout=op_timeout_s,
            retry=Retry(NoBackoff(), 0),
            # TCP keepalive on a TCP link (redis-py refuses the option for a unix socket).
            **({} if url.startswith("unix:") else {"socket_keepalive": True}),
        )

        # Pub/sub channels are global to a Redis server, whatever the database number: deployments
        # kept apart by it alone would hear each other's meetings. A database other than 0 is
        # part of the channel's name (0 keeps the names of earlier versions).
        db = int(self._pubsub_factory.connection_kwargs.get("db") or 0)
        self.channel_prefix = prefix + (f"db{db}:" if db else "")

        self._handlers: dict[str, list[Handler]] = {}
        self._link: _Link | None = None
        # Per topic on the current connection: the last command sent (True = SUBSCRIBE) and how
        # many of its (un)subscribe confirmations are still to come. A topic is live when its
        # last command was SUBSCRIBE and nothing is in flight (replies arrive in command order).
        self._sent: dict[str, bool] = {}
        self._inflight: dict[str, int] = {}
        self._lock = asyncio.Lock()  # orders (un)subscribe commands and connection setup
        self._state_changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.connects = 0  # pub/sub connections opened; > 1 means it has reconnected
        # Topics resubscribed after a reconnect whose confirmation is still to come: once all
        # are live, the gap (messages published while disconnected) is reported.
        self._resyncing: set[str] = set()
        # When the pub/sub connection was lost (None while connected): during a long outage new
        # subscribers fail at once instead of each waiting out `subscribe_timeout_s` in turn.
        self._down_since: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the reader; it connects in the background and keeps reconnecting, so a Redis
        that is down at startup does not fail the application (see `healthy`)."""
        self._ensure_reader()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            await cancel_and_wait(self._reader)
        self._handlers.clear()
        self._pulse()
        await self._client.aclose()
        await self._pubsub_factory.disconnect()

    async def healthy(self) -> bool:
        """True when the pub/sub link is up and Redis answers a PING in time."""
        link = self._link
        if self._closed or link is None or link.closed:
            return False
        try:
            async with asyncio.timeout(self._op_timeout_s):
                return bool(await self._client.ping())
        except _NETWORK_ERRORS:
            return False

    def subscribed_topics(self) -> set[str]:
        """Topics with local handlers (each is one SUBSCRIBE on the pub/sub connection)."""
        return set(self._handlers)

    def _ensure_reader(self) -> None:
        self._check_open()
        if self._reader is None:
            self._reader = shared_task(self._run(), name=f"redis-bus:{self.client_name}")

    # -- publish / subscribe ---------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        self._check_open()
        change = in_flight_change(topic, data)
        status = is_status_topic(topic)
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                if change is None and not status:
                    await self._client.publish(self.channel_prefix + topic, data)
                    return
                # In one transaction with the message: a status message is also kept (a few,
                # for minutes) for gap repair, read back by a viewer's replica whose pub/sub
                # link was down when it went out (`recent`); a partial is kept as its source's
                # in-flight one, which its final or the end of its stream drops (`partials`).
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.publish(self.channel_prefix + topic, data)
                    if status:
                        log_key = self._status_log_key(topic)
                        pipe.rpush(log_key, data)
                        pipe.ltrim(log_key, -STATUS_LOG_LENGTH, -1)
                        pipe.pexpire(log_key, STATUS_LOG_TTL_MS)
                    if change is not None:
                        partials_key = self._partials_key(change.topic)
                        if change.partial is None:
                            pipe.hdel(partials_key, change.source)
                        else:
                            # Stamped: the hash's TTL is renewed by any source's partial, so
                            # a crashed source's last one is aged out on reading (`partials`).
                            stamped = b"%d:%b" % (time.time() * 1000, change.partial)
                            pipe.hset(partials_key, change.source, stamped)
                            pipe.pexpire(partials_key, PARTIAL_TTL_MS)
                    await pipe.execute()
        except _NETWORK_ERRORS as exc:
            raise BusUnavailable(f"publish to {topic!r} failed: {describe(exc)}") from exc

    def _status_log_key(self, topic: str) -> str:
        return f"{self.prefix}status-log:{topic}"

    async def recent(self, topic: str) -> list[bytes]:
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                return list(await self._client.lrange(self._status_log_key(topic), 0, -1))
        except _NETWORK_ERRORS as exc:
            log.warning("redis bus: reading recent status messages failed: %s", describe(exc))
            return []

    def _partials_key(self, topic: str) -> str:
        return f"{self.prefix}partials:{topic}"

    async def partials(self, topic: str) -> list[bytes]:
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                kept = await self._client.hvals(self._partials_key(topic))
        except _NETWORK_ERRORS as exc:
            log.warning("redis bus: reading in-flight partials failed: %s", describe(exc))
            return []
        oldest = time.time() * 1000 - PARTIAL_TTL_MS  # wall clock: stamped by any replica
        fresh = []
        for value in kept:
            stamp, _, data = value.partition(b":")
            if stamp.isdigit() and int(stamp) >= oldest:
                fresh.append(data)
        return fresh

    async def forget(self, topic: str) -> None:
        async with asyncio.timeout(self._publish_timeout_s):
            await self._client.delete(self._status_log_key(topic), self._partials_key(topic))

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        """Returns once Redis has confirmed the subscription, so anything published afterwards
        is delivered (subscribe first, then read history). Raises `BusUnavailable` if that does
        not happen within `subscribe_timeout_s`; the handler is then not registered."""
        self._ensure_reader()
        down_since = self._down_since
        now = asyncio.get_running_loop().time()
        if down_since is not None and now - down_since > self._subscribe_timeout_s:
            raise BusUnavailable("redis pub/sub connection is down")
        subscription = _RedisSubscription(self, topic, handler)
        self._handlers.setdefault(topic, []).append(handler)
        try:
            await self._sync(topic)
            await self._wait_live(topic)
        except BaseException:
            await asyncio.shield(subscription.cancel())
            raise
        return subscription

    async def _remove(self, topic: str, handler: Handler) -> None:
        handlers = self._handlers.get(topic)
        if handlers is None or handler not in handlers:
            return
        handlers.remove(handler)
        if not handlers:
            del self._handlers[topic]
            await self._sync(topic)

    def _live(self, topic: str) -> bool:
        return self._sent.get(topic) is True and topic not in self._inflight

    def _pulse(self) -> None:
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    async def _wait_live(self, topic: str) -> None:
        try:
            async with asyncio.timeout(self._subscribe_timeout_s):
                while not self._live(topic):
                    if self._closed:
                        raise BusUnavailable("bus closed")
                    await self._state_changed.wait()
        except TimeoutError as exc:
            raise BusUnavailable(
                f"subscription to {topic!r} not confirmed within {self._subscribe_timeout_s}s"
            ) from exc

    async def _sync(self, topic: str) -> None:
        """Bring the server's subscription for `topic` in line with the handler table."""
        async with self._lock:
            link = self._link
            want = topic in self._handlers
            # Disconnected: nothing to send, the next connection subscribes from the table.
            if link is None or link.closed or self._sent.get(topic, False) == want:
                return
            # State first: the reader may process the reply before send_command returns.
            self._sent[topic] = want
            self._inflight[topic] = self._inflight.get(topic, 0) + 1
            command = "SUBSCRIBE" if want else "UNSUBSCRIBE"
            try:
                link.send(command, self.channel_prefix + topic)
            except _NETWORK_ERRORS as exc:
                # The connection is closing; the reader sees it and reconnects.
                log.warning("redis bus: %s %s failed: %s", command, topic, describe(exc))

    # -- the reader ------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            conn = self._pubsub_factory.make_connection()
            opened_at = loop.time()
            try:
                link = await self._open(conn)
                self._link_outage.succeeded()
                if self.connects > 1:
                    log.info("redis bus: pub/sub reconnected (%d topics)", len(self._handlers))
                await self._read(link)
            except _NETWORK_ERRORS as exc:
                # Once per outage at WARNING: each reconnect attempt fails the same way.
                self._link_outage.failed("redis bus: pub/sub connection lost: %s", describe(exc))
            except Exception:
                # A bug must not end delivery for the whole process: log and rebuild.
                log.exception("redis bus: reader failed")
            finally:
                await self._drop(conn)
            if loop.time() - opened_at > self._reconnect_cap_s:
                attempt = 0  # the link had been fine for a while: start over with short delays
            await asyncio.sleep(
                backoff_delay(attempt, self._reconnect_base_s, self._reconnect_cap_s)
            )
            attempt += 1

    async def _open(self, conn: AbstractConnection) -> _Link:
        async with asyncio.timeout(self._op_timeout_s):
            await conn.connect()  # also sends CLIENT SETNAME
        # redis-py internals (pinned in pyproject.toml): its stream's transport. Nothing is
        # left unread in redis-py's buffers: only the setup's replies came, and it read them.
        transport = conn._writer.transport  # type: ignore[attr-defined]
        link = _Link(conn, transport, self._handle)
        async with self._lock:
            self._link = link
            self.reached = True
            self._down_since = None
            self.connects += 1
            topics = list(self._handlers)
            self._sent = dict.fromkeys(topics, True)
            self._inflight = dict.fromkeys(topics, 1)
            self._resyncing = set(topics) if self.connects > 1 else set()
            if topics:
                link.send("SUBSCRIBE", *(self.channel_prefix + t for t in topics))
        return link

    async def _drop(self, conn: AbstractConnection) -> None:
        if self._down_since is None:  # lost, or never came up
            self._down_since = asyncio.get_running_loop().time()
        link = self._link
        if link is not None and link.conn is conn:
            self._link = None
            self._sent.clear()
            self._inflight.clear()
            self._pulse()
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)

    async def _read(self, link: _Link) -> None:
        """Wait while the link delivers, until it is lost or the watchdog gives up on it."""
        reader = asyncio.current_task()
        assert reader is not None
        # No timer per message: the watchdog PINGs an idle link and ends a silent one instead.
        watchdog = asyncio.get_running_loop().create_task(self._watch(link, reader))
        try:
            await link.lost
        except asyncio.CancelledError:
            if not link.silent or reader.uncancel() > 0:
                raise
            raise TimeoutError("redis pub/sub connection did not answer PING") from None
        finally:
            watchdog.cancel()

    async def _watch(self, link: _Link, reader: asyncio.Task[Any]) -> None:
        """PING a link idle for `ping_interval_s`; cancel the reader when a PING goes unanswered
        for `ping_timeout_s` (a half-open link: the socket stays up, nothing arrives)."""
        loop = asyncio.get_running_loop()
        poll_s = min(self._ping_interval_s, self._ping_timeout_s)
        while True:
            await asyncio.sleep(poll_s)
            now = loop.time()
            if link.ping_sent_at is None:
                if now - link.last_rx < self._ping_interval_s:
                    continue
                link.ping_sent_at = now
                try:
                    link.send("PING")
                except _NETWORK_ERRORS:
                    pass  # the reader hears of a broken link itself; a stuck one times out below
            elif now - link.ping_sent_at >= self._ping_timeout_s:
                link.silent = True
                reader.cancel()
                return

    def _topic(self, channel: Any) -> str:
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        prefix = self.channel_prefix
        return name[len(prefix) :] if name.startswith(prefix) else name

    def _handle(self, reply: Any) -> None:
        # RESP2 pub/sub replies: [b"message", channel, data], [b"subscribe"|b"unsubscribe",
        # channel, count], [b"pong", payload]; b"PONG" when nothing is subscribed.
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind = reply[0]
        if kind == b"message":
            self._deliver(list(self._handlers.get(self._topic(reply[1]), ())), reply[2])
        elif kind in (b"subscribe", b"unsubscribe"):
            topic = self._topic(reply[1])
            left = self._inflight.get(topic, 0) - 1
            if left > 0:
                self._inflight[topic] = left
                return
            self._inflight.pop(topic, None)
            if self._sent.get(topic) is False:
                del self._sent[topic]
            self._pulse()
            if topic in self._resyncing:
                self._resyncing.discard(topic)
                if not self._resyncing:
                    self._report_gap({t for t in self._handlers if self._live(t)})
