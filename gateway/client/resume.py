"""A subscription that survives the gateway going away: it reconnects with jittered exponential
backoff and resumes with `since=` the last final it saw, so no final is missed or repeated.

Close codes that mean "reconnect" (docs/protocol.md): 1001/1006 (the connection went away),
1011, 1012 (server restarting), 4408 (too slow), 4429 (limit, later), 4503 (dependency down).
Anything else (1000, 4400, 4401, 4403, ...) ends the subscription: retrying cannot help.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, WebSocketException

from gateway.client.connection import GatewayError, Message, MessageHandler, dispatch, open_ws
from gateway.client.connection import decode_message as decode
from gateway.client.subscribe import CloseInfo, close_on, ping_every
from gateway.client.urls import with_query
from shared.backoff import backoff_delay

VIEWER_RECONNECT_CODES = frozenset({1001, 1006, 1011, 1012, 4408, 4429, 4503})
LOST = 1006
RATE_LIMITED = 4429
RATE_LIMITED_BASE_S = 5.0  # the gateway asked us to come back later (as the viewer page does)


class SeenFinals:
    """The finals seen, for resuming: `through` is the number at and below which every final
    was seen (or, with no start given, from the first one seen on). Only a number seen before
    is a repeat: a lower final arriving after a higher one (another source, a recording) is new.
    """

    # A hole this far behind the newest final is not a late final but a number never used (a
    # replica died holding it): resuming below it would replay ever more of the meeting.
    MAX_AHEAD = 256
    # Seen numbers this far below `through` are forgotten: history never sends them again.
    KEEP_BELOW = 4096

    def __init__(self, through: int | None) -> None:
        self.through = through
        self._seen: set[int] = set()
        self._ahead = 0  # seen numbers above `through`

    def add(self, number: int) -> bool:
        """Note final `number`; False if it was seen before."""
        if number in self._seen:
            return False
        self._seen.add(number)
        if self.through is None:
            self.through = number
        elif number > self.through:
            self._ahead += 1
            self._advance()
            if self._ahead > self.MAX_AHEAD:  # past the hole
                self.through = min(n for n in self._seen if n > self.through) - 1
                self._advance()
        if len(self._seen) > 2 * self.KEEP_BELOW:
            self._seen = {n for n in self._seen if n > self.through - self.KEEP_BELOW}
        return True

    def restart(self) -> None:
        """Forget every final seen: the meeting is another one now (its id used again after a
        deletion), numbered from 1 again."""
        self.through, self._ahead = 0, 0
        self._seen.clear()

    def _advance(self) -> None:
        assert self.through is not None
        while self.through + 1 in self._seen:
            self.through += 1
            self._ahead -= 1


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential delays between reconnect attempts (see shared.backoff)."""

    base_s: float = 0.5
    cap_s: float = 10.0
    max_attempts: int | None = None  # None: keep trying

    def delay(self, attempt: int, code: int | None = None) -> float:
        """Before reconnect attempt `attempt` after a close with `code`: a 4429 (a limit: come
        back later) waits from RATE_LIMITED_BASE_S, not from `base_s`."""
        base = max(self.base_s, RATE_LIMITED_BASE_S) if code == RATE_LIMITED else self.base_s
        return backoff_delay(attempt, base, max(self.cap_s, base))

    def exhausted(self, attempt: int) -> bool:
        return self.max_attempts is not None and attempt >= self.max_attempts


async def follow(
    url: str,
    token: str | None,
    *,
    on_message: MessageHandler,
    since: int | None = None,
    backoff: Backoff = Backoff(),
    token_in_query: bool = False,
    ping_interval_s: float | None = None,
    stop: asyncio.Event | None = None,
    connected: asyncio.Event | None = None,
    on_reconnect: Callable[[CloseInfo, float], None] | None = None,
    on_each_live: Callable[[], None] | None = None,
    resubscribe: asyncio.Event | None = None,
) -> CloseInfo:
    """Pass every message of a meeting to `on_message`, reconnecting as long as it helps.

    Each reconnect asks for `since=` the highest final `segment_no` at and below which every
    final was seen (finals of two sources, or of a recording and a live stream, may arrive out
    of order: the highest seen could skip a lower one still on its way), or, without `since` and
    before any final, the number before the first partial seen; else `since` as given. A final
    the history sends again (seen above that number) is not passed on twice. `connected` is
    set once the first subscription is live (answered a ping), `on_each_live()` is called each
    time a subscription becomes live (its history has been delivered), `on_reconnect(close,
    delay_s)` hears about every reconnect. Setting `resubscribe` replaces the subscription by a
    fresh one at once (its `since=` history is read from the store). Returns how the
    subscription finally closed; set `stop` (or cancel) to leave.
    """
    stop = stop or asyncio.Event()
    # Also set when the gateway says the meeting is not the one seen (`since.beyond`).
    resubscribe = resubscribe or asyncio.Event()
    seen = SeenFinals(since)
    attempt = 0

    async def deliver(message: Message) -> None:
        kind, number = message.get("type"), message.get("segment_no")
        if resubscribe.is_set() and kind in ("transcript.final", "transcript.partial"):
            return  # the rest of a subscription being replaced: the fresh one has them in order
        if kind == "status" and message.get("event") == "since.beyond":
            # The meeting seen was deleted and its id used again: `on_message` drops what it
            # holds, and a fresh subscription reads the new meeting from its first final.
            seen.restart()
            await dispatch(on_message, message)
            resubscribe.set()
            return
        if isinstance(number, int):
            if kind == "transcript.final" and not seen.add(number):
                return  # a repeat (history after a reconnect)
            if kind == "transcript.partial" and seen.through is None:
                # Live only and no final yet: a partial's number is that of its coming final,
                # so everything from there on is new to us.
                seen.through = number - 1
        await dispatch(on_message, message)

    while True:
        resubscribe.clear()  # the subscription made now is the fresh one asked for
        live = asyncio.Event()

        def on_live(live: asyncio.Event = live) -> None:
            live.set()
            if connected is not None:
                connected.set()
            if on_each_live is not None:
                on_each_live()

        try:
            closed = await _subscribe_once(
                with_query(url, since=seen.through),
                token,
                deliver,
                on_live,
                stop,
                token_in_query=token_in_query,
                ping_interval_s=ping_interval_s,
                resubscribe=resubscribe,
            )
        except GatewayError as exc:  # refused at the HTTP level
            closed = CloseInfo(exc.code, exc.message)
        except (OSError, TimeoutError, WebSocketException) as exc:
            closed = CloseInfo(LOST, f"connection failed: {type(exc).__name__}")
        if live.is_set():
            attempt = 0
        if resubscribe.is_set() and not stop.is_set():
            continue
        if stop.is_set() or closed.code not in VIEWER_RECONNECT_CODES:
            return closed
        if backoff.exhausted(attempt):
            return closed
        delay = backoff.delay(attempt, closed.code)
        attempt += 1
        if on_reconnect is not None:
            on_reconnect(closed, delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        if stop.is_set():
            return closed


async def _subscribe_once(
    url: str,
    token: str | None,
    deliver: Callable[[Message], Awaitable[None]],
    on_live: Callable[[], None],
    stop: asyncio.Event,
    *,
    token_in_query: bool,
    ping_interval_s: float | None,
    resubscribe: asyncio.Event | None = None,
) -> CloseInfo:
    async with open_ws(url, token, token_in_query=token_in_query) as ws:
        # The pong proves the subscription is live (history, if any, arrives before it).
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"type": "ping"}))
        helpers = [asyncio.create_task(close_on(ws, stop))]
        if resubscribe is not None:
            helpers.append(asyncio.create_task(close_on(ws, resubscribe)))
        if ping_interval_s:
            helpers.append(asyncio.create_task(ping_every(ws, ping_interval_s)))
        try:
            await _read(ws, deliver, on_live)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
    return CloseInfo(ws.close_code or LOST, ws.close_reason or "")


async def _read(
    ws: ClientConnection, deliver: Callable[[Message], Awaitable[None]], on_live: Callable[[], None]
) -> None:
    live = False
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            message = decode(raw)
            if message.get("type") == "pong" and not live:
                live = True
                on_live()
                continue  # our own ping's answer
            await deliver(message)
