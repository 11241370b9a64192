"""Client side of the gateway's wire contract, shared by the dev scripts and end-to-end tests.

- URLs and tokens: `ingest_url`, `subscribe_url`, `dev_token`.
- Audio: `load_wav_pcm`, `conform_pcm`, `create_test_wav` (flite).
- Ingest: `plan_frames` (pacing under the server's frame-rate limit), `send_paced`, `stream_pcm`.
- Subscribing: `subscribe`, and `TranscriptView` to render partials/finals in a terminal.

The token goes in an `Authorization: Bearer` header unless `token_in_query=True`, so it does not
end up in access logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import ipaddress
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import numpy as np
import soxr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.frames import CloseCode

from gateway.tokens import mint_token

MAX_FRAME_BYTES = 32 * 1024
DEFAULT_MAX_FPS = 40.0
DEFAULT_FRAME_MS = 20
MIN_RATE, MAX_RATE = 8000, 48000
DEFAULT_TEST_TEXT = (
    "Hello everyone, this is a test of the meeting transcription gateway. "
    "The quick brown fox jumps over the lazy dog."
)

Message = dict[str, Any]
MessageHandler = Callable[[Message], Awaitable[None] | None]


class GatewayError(Exception):
    """The gateway refused us: an `error` message, a close before `ready`, or an HTTP rejection."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- URLs and tokens -------------------------------------------------------------------------


def _ws_base(base: str) -> str:
    """`http(s)://` or `ws(s)://` (or a bare host:port) as a ws base URL without trailing slash."""
    scheme, sep, rest = base.partition("://")
    if not sep:
        scheme, rest = "ws", base
    ws_scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(scheme.lower())
    if ws_scheme is None:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {base!r}")
    return f"{ws_scheme}://{rest.rstrip('/')}"


def _meeting_path(meeting: str) -> str:
    if not meeting:
        raise ValueError("meeting id must not be empty")
    return quote(meeting, safe="")


def ingest_url(base: str, meeting: str) -> str:
    return f"{_ws_base(base)}/api/v1/ws/ingest/meetings/{_meeting_path(meeting)}"


def subscribe_url(base: str, meeting: str, since: int | None = None) -> str:
    url = f"{_ws_base(base)}/api/v1/ws/meetings/{_meeting_path(meeting)}"
    return with_query(url, since=since)


def with_query(url: str, **params: object) -> str:
    """`url` with `params` set in its query string (replacing same-named ones; None skips)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += [(k, str(v)) for k, v in params.items() if v is not None]
    return urlunsplit(parts._replace(query=urlencode(query)))


def dev_token(key_path: str | Path, **claims: Any) -> str:
    """Mint a token with the private key at `key_path` (see scripts/generate_keys.py); `claims`
    are `gateway.tokens.mint_token`'s keyword arguments."""
    try:
        pem = Path(key_path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{key_path} not found: run `python scripts/generate_keys.py` or pass --token"
        ) from None
    return mint_token(pem, **claims)


# --- WAV audio -------------------------------------------------------------------------------

_WAVE_PCM, _WAVE_FLOAT, _WAVE_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE


@dataclass(frozen=True)
class _WavFormat:
    tag: int
    channels: int
    rate: int
    block_align: int


def load_wav_pcm(path: str | Path) -> tuple[bytes, int, int]:
    """(s16le interleaved PCM, sample rate, channels) from a WAV file.

    Reads integer PCM of 8/16/24/32 bits and 32/64-bit float, plain or WAVE_FORMAT_EXTENSIBLE
    (which Python 3.11's `wave` rejects, yet ffmpeg and sox write for 24-bit audio).
    """
    data = Path(path).read_bytes()
    try:
        fmt, payload = _parse_wav(data)
        return _to_s16le(payload, fmt), fmt.rate, fmt.channels
    except (ValueError, struct.error) as exc:
        raise ValueError(f"{path}: {exc}") from None


def _riff_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        # Slicing keeps what is there when a streamed file declares a bogus (huge) size.
        yield chunk_id, data[offset + 8 : offset + 8 + size]
        offset += 8 + size + (size & 1)  # chunks are word-aligned


def _parse_wav(data: bytes) -> tuple[_WavFormat, bytes]:
    fmt: _WavFormat | None = None
    for chunk_id, body in _riff_chunks(data):
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(body)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("data chunk before fmt chunk")
            return fmt, body
    raise ValueError("no fmt/data chunk")


def _parse_fmt(body: bytes) -> _WavFormat:
    tag, channels, rate, _byte_rate, block_align, _bits = struct.unpack_from("<HHIIHH", body)
    if tag == _WAVE_EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack_from("<H", body, 24)[0]  # the SubFormat GUID starts with the tag
    if channels < 1 or rate < 1 or block_align < channels or block_align % channels:
        raise ValueError(f"invalid format (channels={channels} rate={rate} align={block_align})")
    return _WavFormat(tag, channels, rate, block_align)


def _to_s16le(payload: bytes, fmt: _WavFormat) -> bytes:
    width = fmt.block_align // fmt.channels  # container bytes per sample
    raw = payload[: len(payload) - len(payload) % fmt.block_align]  # drop a torn last frame
    if fmt.tag == _WAVE_PCM and width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(raw, np.uint8).astype(np.int16) - 128) << 8
    elif fmt.tag == _WAVE_PCM and width == 2:
        samples = np.frombuffer(raw, "<i2")
    elif fmt.tag == _WAVE_PCM and width in (3, 4):
        # Keep each sample's two most significant bytes (little-endian: the last two).
        samples = np.frombuffer(raw, np.uint8).reshape(-1, width)[:, width - 2 :].copy().view("<i2")
    elif fmt.tag == _WAVE_FLOAT and width in (4, 8):
        floats = np.frombuffer(raw, "<f4" if width == 4 else "<f8")
        samples = np.clip(np.round(floats * 32767.0), -32768, 32767)
    else:
        raise ValueError(
            f"unsupported WAV encoding (format tag {fmt.tag:#06x}, {width * 8}-bit); "
            "convert it to 16-bit PCM, e.g. `sox in.wav -b 16 out.wav`"
        )
    return samples.astype("<i2").reshape(-1).tobytes()


def conform_pcm(
    pcm: bytes, rate: int, channels: int, *, max_channels: int = 2
) -> tuple[bytes, int, int]:
    """Fit audio into the handshake's limits: downmix to mono above `max_channels`, resample
    rates outside 8000..48000 Hz to the nearest bound. Audio already within limits is untouched."""
    samples = np.frombuffer(pcm, "<i2").reshape(-1, channels)
    if channels > max_channels:
        samples = np.round(samples.mean(axis=1, keepdims=True)).astype(np.int16)
        channels = 1
    target = min(max(rate, MIN_RATE), MAX_RATE)
    if target != rate:
        samples = soxr.resample(samples.astype(np.int16), rate, target)
        rate = target
    return np.ascontiguousarray(samples, dtype="<i2").tobytes(), rate, channels


def create_test_wav(path: str | Path, text: str = DEFAULT_TEST_TEXT, *, voice: str = "slt") -> Path:
    """Synthesise `text` to a WAV at `path` with flite (16 kHz mono for the built-in voices)."""
    flite = shutil.which("flite")
    if flite is None:
        raise RuntimeError("flite is not installed (apt-get install flite); pass a WAV instead")
    path = Path(path)
    try:
        proc = subprocess.run(
            [flite, "-voice", voice, "-t", text, "-o", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError("flite did not finish within 120 s") from None
    if proc.returncode != 0 or not path.is_file() or path.stat().st_size <= 44:
        raise RuntimeError(f"flite failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return path


# --- Pacing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FramePlan:
    """How to cut and pace PCM: `frame_bytes` per binary frame, one frame per `interval_s`."""

    frame_bytes: int
    interval_s: float
    sample_rate: int
    channels: int

    @property
    def frame_samples(self) -> int:
        """Samples per channel in a full frame."""
        return self.frame_bytes // (2 * self.channels)

    @property
    def fps(self) -> float:
        return 1.0 / self.interval_s

    @property
    def speed(self) -> float:
        """Achieved seconds of audio per second of wall time (may be below the requested speed
        when the 32 KiB cap and the frame budget both bind)."""
        return self.frame_samples / self.sample_rate / self.interval_s


def plan_frames(
    sample_rate: int,
    channels: int,
    *,
    speed: float = 1.0,
    max_fps: float = DEFAULT_MAX_FPS,
    frame_ms: int = DEFAULT_FRAME_MS,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> FramePlan:
    """Frames of `frame_ms` audio at `speed`x real time, grown (up to `max_frame_bytes`) so that
    no more than `max_fps` frames go out per second. `speed=math.inf` means as fast as allowed."""
    if not speed > 0 or not max_fps > 0 or frame_ms <= 0 or sample_rate <= 0 or channels <= 0:
        raise ValueError("speed, max_fps, frame_ms, sample_rate and channels must be positive")
    block = 2 * channels  # one s16 sample for every channel
    cap = max_frame_bytes // block
    if cap < 1:
        raise ValueError(f"max_frame_bytes={max_frame_bytes} cannot hold one sample frame")
    if math.isinf(speed):
        samples = cap
    else:
        nominal = max(1, round(sample_rate * frame_ms / 1000))
        within_budget = math.ceil(sample_rate * speed / max_fps)
        samples = min(max(nominal, within_budget), cap)
    # When the cap binds, slow down rather than exceed the frame budget.
    interval = max(samples / (sample_rate * speed), 1.0 / max_fps)
    return FramePlan(samples * block, interval, sample_rate, channels)


def iter_frames(pcm: bytes, frame_bytes: int) -> Iterator[bytes]:
    for start in range(0, len(pcm), frame_bytes):
        yield pcm[start : start + frame_bytes]


class FrameSink(Protocol):
    async def send(self, message: bytes, /) -> None: ...


async def send_paced(
    ws: FrameSink,
    pcm: bytes,
    plan: FramePlan,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[int, int]:
    """Send `pcm` as binary frames on `plan`'s schedule; (frames, bytes) sent.

    Stops early when `should_stop()` turns true or the connection closes. After a stall it does
    not burst to catch up (the server's limiter would answer 4429): the schedule restarts.
    """
    frames = sent = 0
    next_at = time.monotonic()
    for frame in iter_frames(pcm, plan.frame_bytes):
        if should_stop is not None and should_stop():
            break
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await ws.send(frame)
        except ConnectionClosed:
            break
        frames, sent = frames + 1, sent + len(frame)
        next_at = max(next_at + plan.interval_s, time.monotonic())
    return frames, sent


# --- WebSocket plumbing ----------------------------------------------------------------------


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.asynccontextmanager
async def open_ws(
    url: str,
    token: str | None,
    *,
    token_in_query: bool = False,
    open_timeout_s: float = 10.0,
    **connect_kwargs: Any,
) -> AsyncIterator[ClientConnection]:
    """A client connection authenticated with `token`; an HTTP rejection raises GatewayError."""
    headers: dict[str, str] = {}
    if token and token_in_query:
        url = with_query(url, token=token)
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    # A local gateway must not be reached through HTTP(S)_PROXY from the environment.
    connect_kwargs.setdefault("proxy", None if _is_loopback(url) else True)
    connect_kwargs.setdefault("close_timeout", 5.0)  # don't hang a Ctrl-C on a silent server
    try:
        ws = await connect(
            url, additional_headers=headers, open_timeout=open_timeout_s, **connect_kwargs
        )
    except InvalidStatus as exc:
        body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
        raise GatewayError(exc.response.status_code, body or str(exc)) from exc
    try:
        yield ws
    except (GatewayError, TimeoutError):
        raise  # the server refused or went quiet: nothing went wrong on our side
    except Exception:
        await ws.close(CloseCode.INTERNAL_ERROR)  # a bug of ours, say in on_message
        raise
    finally:
        # Cancellation (Ctrl-C, a test leaving) closes normally, where websockets' own context
        # manager would report 1011 for any exception. A no-op when already closed.
        await ws.close()


def decode_message(raw: str | bytes) -> Message:
    """A server message as a dict; non-JSON or non-object payloads are wrapped, not dropped."""
    if isinstance(raw, bytes):
        return {"type": "<binary>", "size": len(raw)}
    try:
        msg = json.loads(raw)
    except ValueError:
        return {"type": "<text>", "text": raw}
    return msg if isinstance(msg, dict) else {"type": "<json>", "value": msg}


async def _dispatch(handler: MessageHandler | None, msg: Message) -> None:
    if handler is not None:
        result = handler(msg)
        if inspect.isawaitable(result):
            await result


async def _read_all(ws: ClientConnection, deliver: Callable[[Message], Awaitable[None]]) -> None:
    """Deliver every message until the connection closes, whatever the close code."""
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            await deliver(decode_message(raw))


def _close_of(exc: ConnectionClosed) -> tuple[int, str]:
    return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "connection lost")


# --- Ingest ----------------------------------------------------------------------------------


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


async def _await_ready(
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
        raise GatewayError(*_close_of(exc)) from None
    await deliver(msg)
    if msg.get("type") == "ready":
        return msg
    if msg.get("type") == "error":
        code = msg.get("code")
        raise GatewayError(code if isinstance(code, int) else 1011, str(msg.get("message", "")))
    raise GatewayError(1002, f"expected a ready message, got {msg!r}")


async def _wind_down(
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
    source: str = "mic",
    language: str = "en",
    ai_mode: str = "standard",
    device_id: str = "devclient",
    speed: float = 1.0,
    max_fps: float = DEFAULT_MAX_FPS,
    frame_ms: int = DEFAULT_FRAME_MS,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    on_message: MessageHandler | None = None,
    finalize_at_end: bool = False,
    close: bool = True,
    linger_s: float = 0.0,
    token_in_query: bool = False,
    ready_timeout_s: float = 10.0,
    close_timeout_s: float = 30.0,
) -> StreamSummary:
    """Run one ingest stream: handshake, paced PCM, optional finalize, then close.

    Every server message (including `ready`) goes to `on_message` (sync or async) while audio is
    being sent. Raises GatewayError if the stream is refused before `ready`, TimeoutError if no
    answer comes within `ready_timeout_s`. Errors after `ready` (e.g. 4429) do not raise: they are
    in the summary's `errors` and `close_code`. With `close=False` no `close` message is sent: the
    client reads for `linger_s` more seconds, then drops the connection itself.
    """
    if len(pcm) % (2 * channels):
        raise ValueError(f"PCM length {len(pcm)} is not whole s16 samples for {channels} ch")
    plan = plan_frames(
        sample_rate,
        channels,
        speed=speed,
        max_fps=max_fps,
        frame_ms=frame_ms,
        max_frame_bytes=max_frame_bytes,
    )
    handshake = {
        "type": "handshake",
        "source": source,
        "sample_rate": sample_rate,
        "channels": channels,
        "language": language,
        "ai_mode": ai_mode,
        "device_id": device_id,
    }
    messages: list[Message] = []

    async def deliver(msg: Message) -> None:
        messages.append(msg)
        await _dispatch(on_message, msg)

    async with open_ws(url, token, token_in_query=token_in_query) as ws:
        ready = await _await_ready(ws, handshake, deliver, ready_timeout_s)
        started = time.monotonic()
        reader = asyncio.create_task(_read_all(ws, deliver))
        try:
            frames, sent = await send_paced(ws, pcm, plan, should_stop=reader.done)
            server_closed, timed_out = await _wind_down(
                ws,
                reader,
                finalize=finalize_at_end,
                close=close,
                linger_s=linger_s,
                close_timeout_s=close_timeout_s,
            )
            await reader  # re-raises an exception from on_message
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
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


# --- Subscribing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CloseInfo:
    code: int
    reason: str


async def _ping_every(ws: ClientConnection, interval_s: float) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.sleep(interval_s)
            await ws.send(json.dumps({"type": "ping"}))


async def _close_on(ws: ClientConnection, stop: asyncio.Event) -> None:
    await stop.wait()
    await ws.close()


async def subscribe(
    url: str,
    token: str | None,
    *,
    since: int | None = None,
    on_message: MessageHandler,
    token_in_query: bool = False,
    ping_interval_s: float | None = None,
    stop: asyncio.Event | None = None,
) -> CloseInfo:
    """Pass every message of a meeting subscription to `on_message` until the connection closes.

    Returns how it closed (an `error` message before the close also reaches `on_message`). Set
    `stop` (or cancel the task) to leave; `ping_interval_s` sends application-level pings.
    """
    url = with_query(url, since=since)
    async with open_ws(url, token, token_in_query=token_in_query) as ws:
        helpers = []
        if ping_interval_s:
            helpers.append(asyncio.create_task(_ping_every(ws, ping_interval_s)))
        if stop is not None:
            helpers.append(asyncio.create_task(_close_on(ws, stop)))
        try:
            await _read_all(ws, lambda msg: _dispatch(on_message, msg))
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
    return CloseInfo(ws.close_code or 1006, ws.close_reason or "")


# --- Terminal rendering ----------------------------------------------------------------------

_CLEAR_LINE = "\r\x1b[2K"


def format_ms(ms: int | float | None) -> str:
    """Milliseconds as mm:ss.mmm (minutes keep growing past 59)."""
    total = max(0, int(ms or 0))
    minutes, rest = divmod(total, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{minutes:02d}:{seconds:02d}.{millis:03d}"


def format_segment(msg: Message) -> str:
    """`#N [mm:ss.mmm-mm:ss.mmm] (source) text`."""
    span = f"{format_ms(msg.get('start_ms'))}-{format_ms(msg.get('end_ms'))}"
    return f"#{msg.get('segment_no')} [{span}] ({msg.get('source') or '?'}) {msg.get('text') or ''}"


def describe(msg: Message) -> str:
    """One line for a non-transcript message: `[type] key=value ...` (nulls left out)."""
    shown = {k: v for k, v in msg.items() if k not in ("type", "ts") and v is not None}
    fields = " ".join(f"{k}={v}" for k, v in shown.items())
    return f"[{msg.get('type')}] {fields}".rstrip()


SegmentKey = tuple[str, int]


class TranscriptView:
    """Keeps a meeting's finals and in-flight partials and renders them to a terminal.

    On a TTY the partials share one status line rewritten in place; finals and other messages are
    printed as lines above it. Elsewhere (pipes, logs) partials are lines prefixed with `~`,
    printed only when their text changes.
    """

    def __init__(
        self, out: TextIO | None = None, *, tty: bool | None = None, width: int | None = None
    ) -> None:
        self.out = out if out is not None else sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self._width = width
        self.finals: dict[SegmentKey, Message] = {}
        self.partials: dict[SegmentKey, Message] = {}
        self._status_visible = False

    @staticmethod
    def key(msg: Message) -> SegmentKey:
        return (str(msg.get("source") or "?"), int(msg.get("segment_no") or 0))

    def handle(self, msg: Message) -> None:
        kind = msg.get("type")
        if kind == "transcript.partial":
            self._on_partial(msg)
        elif kind == "transcript.final":
            self._on_final(msg)
        else:
            self.note(describe(msg))

    def ordered_finals(self) -> list[Message]:
        """Finals by segment number (then source), whatever order they arrived in."""
        return [m for _, m in sorted(self.finals.items(), key=lambda kv: (kv[0][1], kv[0][0]))]

    def text(self) -> str:
        return " ".join(str(m.get("text") or "") for m in self.ordered_finals()).strip()

    def note(self, line: str) -> None:
        """Print a line above the partials."""
        self._print_line(line)

    def close(self) -> None:
        """End the status line so whatever is printed next starts on a fresh line."""
        if self.tty and self._status_visible:
            self.out.write("\n")
            self._status_visible = False
            self.out.flush()

    def _on_partial(self, msg: Message) -> None:
        key = self.key(msg)
        if key in self.finals:
            return  # a late partial must not resurrect a segment that is already final
        previous = self.partials.get(key)
        self.partials[key] = msg
        if self.tty:
            self._draw_status()
        elif previous is None or previous.get("text") != msg.get("text"):
            self._print_line("~" + format_segment(msg))

    def _on_final(self, msg: Message) -> None:
        key = self.key(msg)
        previous = self.finals.get(key)
        self.finals[key] = msg
        # The final replaces its partial; earlier partials of that source can never finish now.
        for stale in [k for k in self.partials if k[0] == key[0] and k[1] <= key[1]]:
            del self.partials[stale]
        if previous is None or previous.get("text") != msg.get("text"):
            self._print_line(format_segment(msg))
        elif self.tty:
            self._draw_status()

    def _print_line(self, line: str) -> None:
        if self.tty:
            self.out.write(_CLEAR_LINE + line + "\n")
            self._status_visible = False
            self._draw_status()
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def _draw_status(self) -> None:
        line = " | ".join("~" + format_segment(m) for _, m in sorted(self.partials.items()))
        if not line and not self._status_visible:
            return
        width = self._width or shutil.get_terminal_size().columns
        if len(line) >= width:  # a wrapped line could not be rewritten in place; keep the tail
            line = "…" + line[-(width - 2) :]
        self.out.write(_CLEAR_LINE + line)
        self._status_visible = bool(line)
        self.out.flush()


# --- Shared command-line plumbing for scripts/ -----------------------------------------------


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """Options every dev script shares: where the gateway is and how to get a token."""
    parser.add_argument("--meeting", required=True, help="meeting id")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL")
    parser.add_argument("--token", help="JWT to use (default: mint a dev token with --key)")
    parser.add_argument("--tenant", default="dev", help="tenant_id of a minted token")
    parser.add_argument("--user", default="dev", help="sub of a minted token")
    parser.add_argument("--key", default="keys/jwt.key", help="private key to mint tokens with")
    parser.add_argument("--kid", help="kid header of a minted token")
    parser.add_argument("--audience", default=os.environ.get("JWT_AUDIENCE", "meetings"))
    parser.add_argument("--issuer", default=os.environ.get("JWT_ISSUER", "our-app"))
    parser.add_argument(
        "--token-in-query",
        action="store_true",
        help="send the token as ?token= (as browsers must) instead of an Authorization header",
    )


def token_from_args(args: argparse.Namespace, roles: Sequence[str]) -> str:
    """--token, or a dev token for just this meeting minted with --key."""
    if args.token:
        return str(args.token)
    return dev_token(
        args.key,
        tenant=args.tenant,
        user=args.user,
        roles=roles,
        meetings=[args.meeting],
        audience=args.audience,
        issuer=args.issuer,
        kid=args.kid,
    )


def positive_float(text: str) -> float:
    """argparse type for speeds and intervals (`inf` allowed)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def run_cli(main: Coroutine[Any, Any, int]) -> int:
    """Run a script's coroutine; report expected failures in one line instead of a traceback."""
    try:
        return asyncio.run(main)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except GatewayError as exc:
        print(f"gateway refused: code={exc.code} {exc.message}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError, WebSocketException) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


__all__ = [
    "DEFAULT_MAX_FPS",
    "MAX_FRAME_BYTES",
    "CloseInfo",
    "FramePlan",
    "GatewayError",
    "StreamSummary",
    "TranscriptView",
    "add_connection_args",
    "conform_pcm",
    "create_test_wav",
    "decode_message",
    "describe",
    "dev_token",
    "format_ms",
    "format_segment",
    "ingest_url",
    "iter_frames",
    "load_wav_pcm",
    "open_ws",
    "plan_frames",
    "positive_float",
    "run_cli",
    "send_paced",
    "stream_pcm",
    "subscribe",
    "subscribe_url",
    "token_from_args",
    "with_query",
]
