"""One ingest stream: handshake, paced PCM, optional finalize, then close."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypedDict, Unpack

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway.client.connection import (
    GatewayError,
    Message,
    MessageHandler,
    close_of,
    decode_message,
    dispatch,
    open_ws,
    read_all,
)
from gateway.client.keepalive import IngestKeepalive
from gateway.client.pacing import (
    DEFAULT_FRAME_MS,
    DEFAULT_MAX_FPS,
    MAX_FRAME_BYTES,
    FramePlan,
    plan_frames,
    send_paced,
)


def handshake_message(
    source: str, sample_rate: int, channels: int, language: str, ai_mode: str, device_id: str
) -> Message:
    """The ingest handshake (docs/protocol.md); the server validates it."""
    return {
        "type": "handshake",
        "source": source,
        "sample_rate": sample_rate,
        "channels": channels,
        "language": language,
        "ai_mode": ai_mode,
        "device_id": device_id,
    }


class AudioOptions(TypedDict, total=False):
    """How a client stream describes its audio and paces it: the keyword arguments
    `stream_pcm` and `stream_pcm_reconnecting` share (defaults in `prepare_stream`)."""

    source: str  # "mic" or "system"
    language: str  # "en"
    ai_mode: str  # "standard"
    device_id: str  # "devclient"
    speed: float  # 1.0: real time
    max_fps: float  # DEFAULT_MAX_FPS
    frame_ms: int  # DEFAULT_FRAME_MS
    max_frame_bytes: int  # MAX_FRAME_BYTES


def prepare_stream(
    pcm: bytes, sample_rate: int, channels: int, audio: AudioOptions
) -> tuple[FramePlan, Message]:
    """The frame plan and handshake of a stream of `pcm`; ValueError for a partial sample."""
    if len(pcm) % (2 * channels):
        raise ValueError(f"PCM length {len(pcm)} is not whole s16 samples for {channels} ch")
    plan = plan_frames(
        sample_rate,
        channels,
        speed=audio.get("speed", 1.0),
        max_fps=audio.get("max_fps", DEFAULT_MAX_FPS),
        frame_ms=audio.get("frame_ms", DEFAULT_FRAME_MS),
        max_frame_bytes=audio.get("max_frame_bytes", MAX_FRAME_BYTES),
    )
    handshake = handshake_message(
        audio.get("source", "mic"),
        sample_rate,
        channels,
        audio.get("language", "en"),
        audio.get("ai_mode", "standard"),
        audio.get("device_id", "devclient"),
    )
    return plan, handshake


@dataclass
class StreamSummary:
    ready: Message
    messages: list[Message]  # every server message in order, `ready` first
    close_code: int | None
    close_reason: str
    frames_sent: int
    bytes_sent: int
    elapsed_s: float
    server_closed: bool  # the server ended the connection (not us after linger/timeout)
    timed_out: bool  # we sent `close` and the server did not close within close_timeout_s
    plan: FramePlan

    @property
    def errors(self) -> list[Message]:
        return [m for m in self.messages if m.get("type") == "error"]

    @property
    def ok(self) -> bool:
        return self.close_code == 1000 and not self.errors and not self.timed_out

    @property
    def finals(self) -> int | None:
        """How many finals the stream produced, as its `closed` message says (None without it)."""
        closed = [m for m in self.messages if m.get("type") == "closed"]
        return int(closed[-1]["finals"]) if closed else None


async def await_ready(
    ws: ClientConnection,
    handshake: Message,
    deliver: Callable[[Message], Awaitable[None]],
    timeout_s: float,
) -> Message:
    # A server that refuses the token at once may have closed already; its `error` message is
    # still waiting to be read, so a failed send is not the end of the story.
    with contextlib.suppress(ConnectionClosed):
        await ws.send(json.dumps(handshake))
    try:
        async with asyncio.timeout(timeout_s):
            msg = decode_message(await ws.recv())
    except ConnectionClosed as exc:
        raise GatewayError(*close_of(exc)) from None
    await deliver(msg)
    if msg.get("type") == "ready":
        return msg
    if msg.get("type") == "error":
        code = msg.get("code")
        raise GatewayError(code if isinstance(code, int) else 1011, str(msg.get("message", "")))
    raise GatewayError(1002, f"expected a ready message, got {msg!r}")


async def wind_down(
    ws: ClientConnection,
    reader: asyncio.Task[None],
    *,
    finalize: bool,
    close: bool,
    linger_s: float,
    close_timeout_s: float,
) -> tuple[bool, bool]:
    """Send finalize/close as asked and wait for the server; (server_closed, timed_out)."""
    if reader.done():
        return True, False
    with contextlib.suppress(ConnectionClosed):
        if finalize:
            await ws.send(json.dumps({"type": "finalize"}))
        if close:
            await ws.send(json.dumps({"type": "close"}))
    await asyncio.wait({reader}, timeout=close_timeout_s if close else linger_s)
    if reader.done():
        return True, False
    await ws.close()
    return False, close


async def stream_pcm(
    url: str,
    token: str | None,
    pcm: bytes,
    *,
    sample_rate: int,
    channels: int,
    on_message: MessageHandler | None = None,
    finalize_at_end: bool = False,
    close: bool = True,
    linger_s: float = 0.0,
    token_in_query: bool = False,
    ready_timeout_s: float = 10.0,
    close_timeout_s: float = 30.0,
    **audio: Unpack[AudioOptions],
) -> StreamSummary:
    """Run one ingest stream: handshake, paced PCM, optional finalize, then close.

    Every server message (including `ready`) goes to `on_message` (sync or async) while audio is
    being sent. Raises GatewayError if the stream is refused before `ready`, TimeoutError if no
    answer comes within `ready_timeout_s`. Errors after `ready` (e.g. 4429) do not raise: they are
    in the summary's `errors` and `close_code`. With `close=False` no `close` message is sent: the
    client reads for `linger_s` more seconds, then drops the connection itself.
    """
    plan, handshake = prepare_stream(pcm, sample_rate, channels, audio)
    messages: list[Message] = []

    async def deliver(msg: Message) -> None:
        messages.append(msg)
        await dispatch(on_message, msg)

    # Its own keepalive (gateway.client.keepalive), not websockets': see there.
    async with open_ws(url, token, token_in_query=token_in_query, ping_interval=None) as ws:
        ready = await await_ready(ws, handshake, deliver, ready_timeout_s)
        started = time.monotonic()
        reader = asyncio.create_task(read_all(ws, deliver))
        keepalive = IngestKeepalive(ws)
        heartbeat = asyncio.create_task(keepalive.run())
        try:
            frames, sent = await send_paced(keepalive, pcm, plan, should_stop=reader.done)
            server_closed, timed_out = await wind_down(
                ws,
                reader,
                finalize=finalize_at_end,
                close=close,
                linger_s=linger_s,
                close_timeout_s=close_timeout_s,
            )
            await reader  # re-raises an exception from on_message
        finally:
            heartbeat.cancel()
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, heartbeat, return_exceptions=True)
    return StreamSummary(
        ready=ready,
        messages=messages,
        close_code=ws.close_code,
        close_reason=ws.close_reason or "",
        frames_sent=frames,
        bytes_sent=sent,
        elapsed_s=time.monotonic() - started,
        server_closed=server_closed,
        timed_out=timed_out,
        plan=plan,
    )
