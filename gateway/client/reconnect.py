"""An ingest that survives the gateway going away: reconnect, re-send what no final covers yet,
and keep streaming into the same meeting (whose numbering simply continues).

Which audio is covered is learnt from the meeting itself: the client also follows the meeting as
a viewer (its token needs the `viewer` role too) and reads the finals of its own source. A final's
`end_ms` is audio time of the stream that produced it, and every new stream restarts audio time at
0, so the client remembers where in its audio each stream began (`AudioCoverage`).

Ingest close codes that mean "reconnect": 1006 (the connection dropped), 1011, 1012 (server
restarting), 4408 (no audio for INGEST_IDLE_S, audio still to send), 4503 (dependency down), 4409
(the previous stream's lease outlives a crashed replica by up to 10 s) and 4429 (a limit: after a
longer wait, as the viewer's). Anything else ends the session, and so do `backoff`'s attempts spent
without a stream getting finals. Audio may be sent twice around a crash (what a lost final covered
is re-sent), never lost. A final names the stream whose audio it transcribes (`stream_id`) and is
credited to it; a stream's coverage is also capped by what it was sent. (A gateway of an earlier
release does not name it: its finals are credited to the stream the meeting last announced for the
source, `stream.started`, which a viewer that resubscribed with `since=` across a restart may not
have seen; it then credited the new stream's finals to the old one, and their audio was re-sent and
stored twice.)

Before a stream resumes, the client's view of the previous stream must be complete: it has seen
the stream's `stream.ended` (which follows its last finals), or a subscription made after the
stream's connection ended has become live (its `since=` history, read from the store, holds every
final the stream stored: a stream is closed only after its last finals are stored). Resuming from
a view that lacked a stored final re-sent the audio that final covered, and the new stream (a new
`stream_id`, audio time from 0) stored it again under the next number (a drain: the final stored,
the viewer socket closed 1012 before it arrived, the restart slower than the old 5 s wait). When
no `stream.ended` comes within PREVIOUS_STREAM_WAIT_S (a crashed replica never sends it) the view
is re-subscribed to read that history. Only if the view cannot be completed within
RESUME_SYNC_WAIT_S more does the stream resume from what is known (audio may then be sent
twice, never lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Unpack

from websockets.exceptions import WebSocketException

from gateway.client.connection import (
    GatewayError,
    Message,
    MessageHandler,
    dispatch,
    open_ws,
    read_all,
)
from gateway.client.ingest import (
    AudioOptions,
    await_ready,
    prepare_stream,
    wind_down,
)
from gateway.client.keepalive import IngestKeepalive
from gateway.client.pacing import (
    FramePlan,
    send_paced,
)
from gateway.client.resume import LOST, Backoff, follow
from gateway.client.subscribe import CloseInfo

# 4408: the stream sent no audio for INGEST_IDLE_S (capture paused while the socket stayed up).
INGEST_RECONNECT_CODES = frozenset({1001, LOST, 1011, 1012, 4408, 4409, 4429, 4503})
PREVIOUS_STREAM_WAIT_S = 5.0  # at the end of the session: for the last stream's last finals
RESUME_SYNC_WAIT_S = 60.0  # before a resume: for a complete view of the previous stream
INGEST_BACKOFF = Backoff(max_attempts=30)


@dataclass
class AudioCoverage:
    """How much of the client's audio (in bytes from its start) is covered by finals, across
    the streams of one session. Pure: fed with the meeting's messages and the `ready`s."""

    source: str
    sample_rate: int
    channels: int
    began_at: dict[str, int] = field(default_factory=dict)  # stream_id -> byte offset
    sent: dict[str, int] = field(default_factory=dict)  # stream_id -> bytes it was sent
    ended: set[str] = field(default_factory=set)  # streams whose `stream.ended` was seen
    _end_ms: dict[str, int] = field(default_factory=dict)  # stream_id -> last final's end_ms
    _announced: str | None = None  # the stream of our source the meeting last announced

    def began(self, stream_id: str, offset: int) -> None:
        self.began_at[stream_id] = offset

    def observe(self, message: Message) -> None:
        if message.get("source") != self.source:
            return
        kind = message.get("type")
        if kind == "status" and isinstance(message.get("stream_id"), str):
            if message.get("event") == "stream.started":
                self._announced = message["stream_id"]
            elif message.get("event") == "stream.ended":
                self.ended.add(message["stream_id"])
        elif kind == "transcript.final":
            # The final names its stream (a gateway of this release); an older one's is
            # credited to the stream the meeting last announced.
            named = message.get("stream_id")
            stream = named if isinstance(named, str) else self._announced
            end_ms = message.get("end_ms")
            if stream is not None and isinstance(end_ms, int):
                self._end_ms[stream] = max(self._end_ms.get(stream, 0), end_ms)

    @property
    def covered(self) -> int:
        """Bytes from the start of the audio that finals cover (whole sample frames)."""
        block = 2 * self.channels
        best = 0
        for stream, end_ms in self._end_ms.items():
            if stream in self.began_at:
                covered = end_ms * self.sample_rate // 1000 * block
                if stream in self.sent:  # a final never covers more than its stream was sent
                    covered = min(covered, self.sent[stream])
                best = max(best, self.began_at[stream] + covered)
        return best

    @property
    def covered_ms(self) -> int:
        return self.covered * 1000 // (2 * self.channels * self.sample_rate)

    def resume_point(self, offset: int) -> Message | None:
        """Where audio from byte `offset` lies in a previous stream, for a handshake's
        `resumes` (the gateway places the new stream's audio there on the meeting's clock):
        the last stream begun at or before it, and how far into that stream's audio."""
        point: Message | None = None
        best = -1
        for stream_id, began in self.began_at.items():  # in the order the streams began
            if best <= began <= offset:
                best = began
                from_ms = (offset - began) * 1000 // (2 * self.channels * self.sample_rate)
                point = {"stream_id": stream_id, "from_ms": from_ms}
        return point


@dataclass
class StreamRun:
    """One connection of a reconnecting ingest."""

    stream_id: str | None
    offset: int  # byte offset in the audio this stream started from
    bytes_sent: int
    close_code: int
    close_reason: str


@dataclass
class ReconnectSummary:
    runs: list[StreamRun]
    messages: list[Message]  # every ingest message, in order, across connections
    coverage: AudioCoverage
    elapsed_s: float

    @property
    def close_code(self) -> int:
        return self.runs[-1].close_code if self.runs else LOST

    @property
    def ok(self) -> bool:
        return self.close_code == 1000

    @property
    def streams(self) -> int:
        """Connections the gateway took (a `ready`); `runs` also holds the refused attempts."""
        return sum(1 for run in self.runs if run.stream_id is not None)

    @property
    def reconnects(self) -> int:
        return self.streams - 1


async def stream_pcm_reconnecting(
    ingest_url: str,
    subscribe_url: str,
    token: str | None,
    pcm: bytes,
    *,
    sample_rate: int,
    channels: int,
    backoff: Backoff = INGEST_BACKOFF,
    on_message: MessageHandler | None = None,
    on_transcript: MessageHandler | None = None,
    on_reconnect: Callable[[str, int, float], None] | None = None,
    token_in_query: bool = False,
    ready_timeout_s: float = 10.0,
    close_timeout_s: float = 30.0,
    **audio: Unpack[AudioOptions],
) -> ReconnectSummary:
    """Stream `pcm` into a meeting until all of it was sent and the stream closed normally,
    reconnecting (jittered exponential backoff) whenever the gateway goes away.

    `on_message` gets the ingest connections' messages, `on_transcript` the meeting's (as a
    viewer), `on_reconnect(what, close_code, delay_s)` each reconnect ("ingest" or "viewer").
    Raises GatewayError if the first connection is refused for a reason retrying cannot fix.
    """
    plan, handshake = prepare_stream(pcm, sample_rate, channels, audio)
    coverage = AudioCoverage(str(handshake["source"]), sample_rate, channels)
    changed = asyncio.Event()  # the meeting said something: coverage may have moved

    async def on_meeting(message: Message) -> None:
        coverage.observe(message)
        changed.set()
        await dispatch(on_transcript, message)

    messages: list[Message] = []

    async def deliver(message: Message) -> None:
        messages.append(message)
        await dispatch(on_message, message)

    viewer_closed: list[CloseInfo] = []  # why the viewer side last had to reconnect

    def viewer_reconnect(closed: CloseInfo, delay: float) -> None:
        viewer_closed[:] = [closed]
        if on_reconnect is not None:
            on_reconnect("viewer", closed.code, delay)

    live_subscriptions = 0  # how many times the viewer side became live (its history in)

    def viewer_live() -> None:
        nonlocal live_subscriptions
        live_subscriptions += 1
        changed.set()

    started = time.monotonic()
    resubscribe = asyncio.Event()
    stop_viewer = asyncio.Event()
    connected = asyncio.Event()
    viewer = asyncio.create_task(
        follow(
            subscribe_url,
            token,
            on_message=on_meeting,
            backoff=Backoff(backoff.base_s, backoff.cap_s),
            token_in_query=token_in_query,
            stop=stop_viewer,
            connected=connected,
            on_reconnect=viewer_reconnect,
            on_each_live=viewer_live,
            resubscribe=resubscribe,
        )
    )
    runs: list[StreamRun] = []
    try:
        await _until_live(viewer, connected, ready_timeout_s, viewer_closed)
        attempt = 0
        live_at_end = 0  # live subscriptions when the previous stream's connection ended
        covered_before = -1  # the coverage when the previous stream began
        while True:
            previous = runs[-1].stream_id if runs else None
            if previous is not None:
                # Resume only from a complete view of the previous stream (module docstring).
                def complete(p: str = previous, mark: int = live_at_end) -> bool:
                    return p in coverage.ended or live_subscriptions > mark or viewer.done()

                await _until(complete, changed, PREVIOUS_STREAM_WAIT_S)
                if not complete():  # no `stream.ended` (a crash): read the store's history
                    resubscribe.set()
                    await _until(complete, changed, RESUME_SYNC_WAIT_S)
            # Attempts count again from 0 once a stream got finals: streams that end before any
            # (refused 4429 each time a couple of seconds in) would otherwise resend forever.
            if coverage.covered > covered_before:
                attempt = 0
            covered_before = coverage.covered
            run = await _one_stream(
                ingest_url,
                token,
                pcm,
                plan,
                handshake,
                coverage,
                deliver,
                token_in_query=token_in_query,
                ready_timeout_s=ready_timeout_s,
                close_timeout_s=close_timeout_s,
            )
            runs.append(run)
            live_at_end = live_subscriptions
            if run.close_code == 1000 and run.offset + run.bytes_sent >= len(pcm):
                break
            if run.close_code not in INGEST_RECONNECT_CODES and run.close_code != 1000:
                if run.stream_id is None and len(runs) == 1:
                    raise GatewayError(run.close_code, run.close_reason)
                break
            if backoff.exhausted(attempt):
                break
            delay = backoff.delay(attempt, run.close_code)  # 4429: later
            attempt += 1
            if on_reconnect is not None:
                on_reconnect("ingest", run.close_code, delay)
            await asyncio.sleep(delay)
        last = runs[-1].stream_id
        if last is not None:  # let the last finals reach on_transcript
            await _until(lambda: last in coverage.ended, changed, PREVIOUS_STREAM_WAIT_S)
    finally:
        stop_viewer.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await viewer
        if not viewer.done():
            viewer.cancel()
    return ReconnectSummary(runs, messages, coverage, time.monotonic() - started)


async def _until_live(
    viewer: asyncio.Task[CloseInfo],
    connected: asyncio.Event,
    timeout: float,
    closes: Sequence[CloseInfo] = (),
) -> None:
    waiter = asyncio.create_task(connected.wait())
    try:
        await asyncio.wait({viewer, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if viewer.done():
        closed = viewer.result()
        raise GatewayError(closed.code, f"cannot follow the meeting: {closed.reason}")
    if not connected.is_set():
        last = f" (last closed {closes[-1].code}: {closes[-1].reason})" if closes else ""
        raise TimeoutError(f"the meeting subscription did not come up in time{last}")


async def _until(predicate: Callable[[], bool], changed: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while not predicate():
                changed.clear()
                await changed.wait()


async def _one_stream(
    url: str,
    token: str | None,
    pcm: bytes,
    plan: FramePlan,
    handshake: Message,
    coverage: AudioCoverage,
    deliver: Callable[[Message], Awaitable[None]],
    *,
    token_in_query: bool,
    ready_timeout_s: float,
    close_timeout_s: float,
) -> StreamRun:
    """Connect, resume from what finals cover, send the rest, close; how it ended."""
    offset = coverage.covered
    stream_id: str | None = None
    sent = 0
    if (point := coverage.resume_point(offset)) is not None:
        handshake = {**handshake, "resumes": point}  # placed where its audio was spoken
    try:
        async with open_ws(url, token, token_in_query=token_in_query, ping_interval=None) as ws:
            ready = await await_ready(ws, handshake, deliver, ready_timeout_s)
            stream_id = str(ready.get("stream_id"))
            # Finals may have arrived while we connected (only when the view of the previous
            # stream could not be completed): not re-sent, at the cost of placing this stream
            # that much early.
            offset = coverage.covered
            coverage.began(stream_id, offset)
            reader = asyncio.create_task(read_all(ws, deliver))
            keepalive = IngestKeepalive(ws)
            heartbeat = asyncio.create_task(keepalive.run())
            try:
                _, sent = await send_paced(keepalive, pcm[offset:], plan, should_stop=reader.done)
                coverage.sent[stream_id] = sent
                await wind_down(
                    ws,
                    reader,
                    finalize=False,
                    close=True,
                    linger_s=0.0,
                    close_timeout_s=close_timeout_s,
                )
                await reader
            finally:
                heartbeat.cancel()
                if not reader.done():
                    reader.cancel()
                await asyncio.gather(reader, heartbeat, return_exceptions=True)
        return StreamRun(stream_id, offset, sent, ws.close_code or LOST, ws.close_reason or "")
    except GatewayError as exc:
        return StreamRun(stream_id, offset, sent, exc.code, exc.message)
    except (OSError, TimeoutError, WebSocketException) as exc:
        return StreamRun(stream_id, offset, sent, LOST, f"connection failed: {type(exc).__name__}")
