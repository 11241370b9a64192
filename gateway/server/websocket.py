"""uvicorn's sans-I/O WebSocket protocol with direct frame writes for viewers, offered to the
application as an ASGI scope extension (`fanout.direct_frames`).

uvicorn's sans-I/O WebSocket protocol frames every `websocket.send` itself, per connection. This
subclass adds the capability `fanout.delivery` uses to write one pre-encoded frame (built once per
publish) to many transports: `scope["extensions"][DIRECT_FRAMES]["writer"]` is the protocol,
implementing `FrameWriter`. The application stays plain ASGI: under another server the extension
is absent and delivery falls back to `websocket.send`.

A frame is written with one `os.write` on the socket's descriptor (plain TCP only: behind TLS
every frame takes the transport's queued path, see `fanout.direct_frames.plain_socket_fd`),
skipping the transport's `write` (its checks cost about a tenth of a delivery), and only while
the transport's buffer is empty: its high-water mark is 0, so it pauses the protocol as soon as
it holds a byte and resumes it once drained. What the kernel does not take goes to the
transport's buffer, behind which every later byte then queues, so the stream stays in order.

It relies on uvicorn internals (listed in gateway/server/__init__.py, pinned in pyproject.toml,
checked by tests/gateway/test_server_websocket.py): `transport`, `writable` (cleared by
`pause_writing`), `close_sent`, `handshake_complete`, `conn` (the websockets `ServerProtocol`),
`queue`, `read_paused` and `send_receive_event_to_app` (reading pauses at READ_HIGH_WATER),
`request`/`response`, and that uvicorn writes its own frames (pings, pongs, close) whole from
the event loop thread, so whole frames written between them interleave safely.

Compression: viewer paths (`UNCOMPRESSED_PATH_PREFIXES`) refuse permessage-deflate. A direct frame
is the same bytes for every viewer, which a per-connection deflate context cannot share, and that
context costs about 33 KiB per idle viewer. Uncompressed frames are valid either way (RFC 7692:
RSV1 is per message), but refusing keeps the idle viewer small.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import Protocol, State

from fanout.direct_frames import DIRECT_FRAMES, plain_socket_fd
from gateway.server.parking import PARKING, Parked, Resume
from shared.lean_sync import LeanEvent, LeanQueue

# Messages queued for the application before reading pauses. uvicorn pauses after every message
# and resumes when the application takes it: two epoll_ctl calls per message, a tenth of an
# ingest stream's CPU. A few messages of slack (each at most the socket's size limit) keep the
# bound and drop the calls.
READ_HIGH_WATER = 8
UNCOMPRESSED_PATH_PREFIXES: tuple[str, ...] = ("/api/v1/ws/meetings/",)
# What the transport may hold for a peer that reads nothing before that peer is read no more:
# answers to what it sends (pongs to a ping flood) would otherwise grow without bound.
WRITE_BACKLOG_MAX = 1 << 20


# The attributes uvicorn's sans-I/O protocol sets on each connection (0.5x). Declared as slots
# here, they live in the object instead of a per-connection attribute dict of about 1.5 KiB (a
# dict past 30 keys no longer shares its keys with the class). An attribute a later uvicorn adds
# still works; it just goes to the dict (tests/gateway/test_server_websocket.py lists any missed).
UVICORN_ATTRIBUTES = (
    "app",
    "app_state",
    "asgi_version",
    "client",
    "close_timeout",
    "close_timer",
    "config",
    "conn",
    "connections",
    "curr_msg_data_type",
    "default_headers",
    "disconnected",
    "frames",
    "handshake_initiated",
    "initial_response",
    "last_ping_rtt",
    "logger",
    "loop",
    "pending_ping_payload",
    "ping_interval",
    "ping_sent_at",
    "ping_timeout",
    "ping_timer",
    "pong_timer",
    "queue",
    "read_paused",
    "request",
    "response",
    "root_path",
    "scheme",
    "scope",
    "server",
    "tasks",
    "transport",
    "writable",
)


class DirectFramesProtocol(WebSocketsSansIOProtocol):
    __slots__ = (
        *UVICORN_ATTRIBUTES,
        "_close_sent",
        "_handshake_complete",
        "direct_ready",
        "fd",
        "backlog_paused",
        "park_parser",
        "parked",
        "parked_context",
        "peer_lost",
    )

    def __init__(
        self, config: Config, server_state: Any, app_state: dict[str, Any], _loop: Any = None
    ) -> None:
        self.peer_lost = False
        self.backlog_paused = False  # see WRITE_BACKLOG_MAX
        self.park_parser = False  # viewers: see _park_frame_parser
        self.parked: Resume | None = None  # see gateway.server.parking
        self.parked_context: contextvars.Context | None = None
        self.fd = -1  # the socket's descriptor, written to while `direct_ready`
        # One flag for the hot path, kept current by the setters and callbacks below: the
        # handshake is complete, no close frame was sent, the peer is there and the transport's
        # buffer is empty (it pauses us as soon as it holds a byte).
        self.direct_ready = False
        self._close_sent = False
        self._handshake_complete = False
        super().__init__(config, server_state, app_state, _loop)
        # Same interfaces, no deque per idle connection (shared.lean_sync).
        self.queue = LeanQueue()  # type: ignore[assignment]
        self.writable = LeanEvent()  # type: ignore[assignment]
        self.writable.set()
        self._update_ready()

    # uvicorn assigns these as plain attributes; properties keep `direct_ready` in step.
    @property  # type: ignore[override]
    def close_sent(self) -> bool:
        return self._close_sent

    @close_sent.setter
    def close_sent(self, value: bool) -> None:
        self._close_sent = value
        self._update_ready()
        if value and self.read_paused and not self.backlog_paused:
            # The application is done reading: uvicorn discards what comes from here on, and
            # the peer's answering close waits behind what it sent. Reading paused on a full
            # queue would hold the socket for the close timeout (10 s), then reset it.
            self.read_paused = False
            self.transport.resume_reading()

    @property  # type: ignore[override]
    def handshake_complete(self) -> bool:
        return self._handshake_complete

    @handshake_complete.setter
    def handshake_complete(self, value: bool) -> None:
        self._handshake_complete = value
        self._update_ready()

    def _update_ready(self) -> None:
        writable = getattr(self, "writable", None)  # unset while uvicorn's __init__ runs
        self.direct_ready = (
            self.fd >= 0
            and self._handshake_complete
            and not self._close_sent
            and not self.peer_lost
            and writable is not None
            and writable.is_set()
        )

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # The transport pauses us (`direct_ready` clears) as soon as its buffer holds a byte and
        # resumes us once it is empty again: while ready, nothing is buffered, so bytes written
        # straight to the socket stay in order. Bytes the kernel does not take go to the buffer.
        self.fd = plain_socket_fd(transport)
        if self.fd >= 0:
            # (A TLS transport keeps its own limits: its high-water test is `>=`, so 0 would
            # pause it for good.)
            transport.set_write_buffer_limits(high=0)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.direct_ready = False

    def resume_writing(self) -> None:
        super().resume_writing()
        self._update_ready()
        if self.backlog_paused:
            self.backlog_paused = False
            if not self.read_paused:  # the application's own pause stays
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer_lost = True
        # uvicorn tells the application 1005 (no status) for any connection lost after the
        # handshake; one the peer dropped without a close frame ended 1006 (RFC 6455 7.1.5),
        # which is what dashboards and the README call a dropped connection.
        dropped = self._handshake_complete and self.conn.close_rcvd is None
        super().connection_lost(exc)
        if dropped:
            message = self.queue.last()
            if isinstance(message, dict) and message.get("type") == "websocket.disconnect":
                message["code"] = 1006
        # A transport lost while paused never resumes writing: release waiting writers (uvicorn
        # before 0.53 does not).
        self.writable.set()
        self._update_ready()

    def handle_connect(self, event: Request) -> None:
        if event.path.startswith(UNCOMPRESSED_PATH_PREFIXES):
            self.conn.available_extensions = []  # refuse permessage-deflate (see module doc)
            self.park_parser = True  # many and mostly idle: worth their bytes
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            extension = {"writer": self, "connection": self}  # one dict for both extensions
            scope["extensions"][DIRECT_FRAMES] = scope["extensions"][PARKING] = extension

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake is done: its request and response are never read again.
            self.request = self.response = None  # type: ignore[assignment]
            if self.park_parser:
                self._park_frame_parser()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn.parser is None:  # parked between frames: a fresh frame parser is the same state
            conn.parser = Protocol.parse(conn)
            next(conn.parser)  # runs to its `at_eof` wait
        super().data_received(data)
        if self._handshake_complete and self.park_parser:
            self._park_frame_parser()
        transport = self.transport
        if not self.backlog_paused and transport.get_write_buffer_size() > WRITE_BACKLOG_MAX:
            # The peer reads nothing, and what it sends makes answers (a ping flood's pongs):
            # read no more of it until it has read what waits (the heartbeat drops it if never).
            self.backlog_paused = True
            transport.pause_reading()

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and self.conn.state is not State.OPEN:
            # The peer's close came in the same read, and websockets answered it already:
            # uvicorn's 1007 for a text message that is not UTF-8 would raise InvalidState out
            # of data_received (asyncio logs a traceback). The close follows; drop the message.
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                self.logger.warning("invalid UTF-8 in a client's text message as it closed")
                return
        # uvicorn's own pauses reading unless `read_paused`: pause at READ_HIGH_WATER instead.
        # `receive` resumes once the application has taken every queued message.
        paused = self.read_paused
        self.read_paused = True
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = paused
        if not paused and not self._close_sent and self.queue.qsize() >= READ_HIGH_WATER:
            self.read_paused = True
            self.transport.pause_reading()

    # Parking (gateway.server.parking)

    async def run_asgi(self) -> None:
        # uvicorn's own, but an application that parked its connection returns without it
        # being closed.
        await self._run_app(lambda: self.app(self.scope, self.receive, self.send))

    def park(self, resume: Resume) -> Callable[[], None]:
        """Hand the connection's wait to the server: `resume()` runs, in a new task with the
        caller's context, on the next message or disconnect, or on `unpark()`. The caller then
        raises Parked. Returns `unpark`, bound once (a parked viewer keeps one such object)."""
        self.parked = resume
        self.parked_context = contextvars.copy_context()
        wake = self.queue.on_put = self.unpark  # type: ignore[attr-defined]
        return wake  # type: ignore[no-any-return]

    def unpark(self) -> None:
        """Resume a parked connection now (nothing happens unless it is parked)."""
        resume, context = self.parked, self.parked_context
        if resume is None:
            return
        self.parked = self.parked_context = None
        self.queue.on_put = None  # type: ignore[attr-defined]
        task = self.loop.create_task(self._run_app(resume), context=context)
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    def take_message(self) -> dict[str, Any] | None:
        """The next received message if one is queued, else None (uvicorn's `receive`, without
        waiting: reading resumes once the queue is empty)."""
        if self.queue.empty():
            return None
        message = self.queue.get_nowait()  # type: ignore[attr-defined]
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            self.transport.resume_reading()
        return message  # type: ignore[no-any-return]

    async def _run_app(self, app: Callable[[], Awaitable[Any]]) -> None:
        """uvicorn's `run_asgi` around `app()` (the application, or a parked handler resumed)."""
        try:
            result = await app()
        except Parked:
            return  # the socket stays open; `resume` runs on its next event
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        # Older uvicorn (before 0.52) has no close timer: it closes here unconditionally.
        if getattr(self, "close_timer", None) is None:
            self.transport.close()

    def _park_frame_parser(self) -> None:
        """Drop websockets' frame parser while it waits between frames (nothing buffered, in
        `at_eof`): its suspended generators cost about 450 bytes per idle connection, and the
        first one, `ServerProtocol.parse`, also keeps the handshake request (headers, and the
        token in its path). `data_received` starts a fresh one, in the same state."""
        conn = self.conn
        innermost = conn.parser
        while getattr(innermost, "gi_yieldfrom", None) is not None:
            innermost = innermost.gi_yieldfrom
        code = getattr(innermost, "gi_code", None)
        if code is None or code.co_name != "at_eof" or conn.reader.buffer or conn.reader.eof:
            return
        conn.parser = None  # type: ignore[assignment]

    # FrameWriter

    def try_write(self, frame: bytes) -> bool:
        # `direct_ready` clears in connection_lost, before asyncio closes the socket, so the
        # descriptor is still this connection's. `is_closing` covers a close uvicorn started
        # without a close frame of ours (echoing the peer's, shutting down, the app returning).
        if not self.direct_ready or self.transport.is_closing():
            return False
        try:
            written = os.write(self.fd, frame)
        except BlockingIOError:
            written = 0
        except OSError:
            # The peer is gone: the transport meets the same error, closes and reports it.
            self.peer_lost = True
            self.direct_ready = False
            self.transport.write(frame)
            return False
        if written != len(frame):
            self.transport.write(frame[written:])  # buffered in order; the transport pauses us
        return True

    def closing(self) -> bool:
        return self.peer_lost or self._close_sent or self.transport.is_closing()

    async def write(self, frame: bytes) -> None:
        await self.writable.wait()
        if (
            not self._handshake_complete
            or self._close_sent
            or self.peer_lost
            or self.transport.is_closing()
        ):
            raise ClientDisconnected()
        self.transport.write(frame)
