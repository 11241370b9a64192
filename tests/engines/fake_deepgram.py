"""A protocol-faithful Deepgram Live fake: a `websockets` server speaking `/v1/listen`.

Checks `Authorization: Token <key>` on the upgrade (HTTP 401 otherwise), parses the query
(`encoding=linear16`, `sample_rate`, `channels`, ...), reads binary audio and the JSON control
messages (`KeepAlive`, `Finalize`, `CloseStream`), closes an idle stream with 1011 `NET-0001`
after `idle_timeout_s` without audio or KeepAlive, and answers with `Results` (interim and final,
words with `punctuated_word` and `speaker`), `Metadata` at the end, then close 1000. Recognition
is the toy recognizer's (words encoded in the audio). Knobs let tests break it: refuse upgrades
with a status, or die (close 1011 / drop the TCP connection) after some audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.engines.toy_asr import ToyRecognizer, ToyResult


@dataclass
class FakeSession:
    query: dict[str, list[str]]
    controls: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, type)
    finalized_at: list[int] = field(default_factory=list)  # audio bytes heard before each Finalize
    audio_bytes: int = 0
    audio_messages: int = 0
    close_code: int | None = None
    close_reason: str = ""
    ended: bool = False
    ended_at: float | None = None  # time.monotonic() when the connection ended


@dataclass
class FakeDeepgram:
    api_key: str = "test-key"
    idle_timeout_s: float = 10.0
    reject_status: int | None = None  # refuse every upgrade with this HTTP status
    die_after_bytes: int | None = None  # close 1011 after this much audio (per connection)
    drop_after_bytes: int | None = None  # drop the TCP connection after this much audio
    die_on_finalize: bool = False  # close 1011 instead of answering Finalize
    finalizes_answered: int = 0  # ... after answering this many Finalizes (per connection)
    breaks_left: int | None = None  # how many connections the three knobs above break (None: all)
    mute: bool = (
        False  # take audio and controls, answer nothing (not even CloseStream), never close
    )
    # Each Results message as a dict, and how many came before it: the messages sent instead
    # (a vendor that repeats itself or sends values no client expects).
    rewrite: Callable[[dict[str, Any], int], list[dict[str, Any]]] | None = None
    results_sent: int = 0
    slow_upgrades: int = 0  # answer this many upgrades after the first only after a delay
    upgrade_delay_s: float = 0.0
    sessions: list[FakeSession] = field(default_factory=list)
    rejected: int = 0
    _server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        return f"ws://{host}:{port}"

    async def start(self) -> FakeDeepgram:
        self._server = await serve(
            self._handler, "127.0.0.1", 0, process_request=self._check_request
        )
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _check_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if self.sessions and self.slow_upgrades > 0:  # a service slow to take a new stream
            self.slow_upgrades -= 1
            await asyncio.sleep(self.upgrade_delay_s)
        if urlsplit(request.path).path != "/v1/listen":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if self.reject_status is not None:
            self.rejected += 1
            return connection.respond(self.reject_status, "unavailable\n")
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            self.rejected += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid credentials\n")
        query = parse_qs(urlsplit(request.path).query)
        if query.get("encoding") != ["linear16"] or "sample_rate" not in query:
            return connection.respond(HTTPStatus.BAD_REQUEST, "bad query\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path).query)
        session = FakeSession(query)
        self.sessions.append(session)
        rate, channels = int(query["sample_rate"][0]), int(query.get("channels", ["1"])[0])
        interim = query.get("interim_results") == ["true"]
        endpoint = int(query.get("endpointing", ["300"])[0])
        recognizer = ToyRecognizer(rate, channels, endpoint_ms=endpoint)
        request_id = str(uuid.uuid4())
        if self.mute:  # a stuck service: the connection stays up, no result ever comes
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    session.audio_bytes += len(message) if isinstance(message, bytes) else 0
            return
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
                except TimeoutError:
                    await ws.close(1011, "NET-0001")
                    return
                if isinstance(message, bytes):
                    if not message:
                        break  # an empty frame ends the stream like CloseStream
                    session.audio_bytes += len(message)
                    session.audio_messages += 1
                    for result in recognizer.feed(message):
                        if result.is_final or interim:
                            await self._send_results(ws, result, request_id)
                    if await self._maybe_die(ws, session):
                        return
                    continue
                kind = json.loads(message).get("type")
                session.controls.append((time.monotonic(), kind))
                if kind == "Finalize":
                    session.finalized_at.append(session.audio_bytes)
                dying = self.die_on_finalize and self.breaks_left != 0
                if (
                    kind == "Finalize"
                    and dying
                    and len(session.finalized_at) > self.finalizes_answered
                ):
                    if self.breaks_left is not None:
                        self.breaks_left -= 1
                    await ws.close(1011, "internal error")
                    return
                if kind == "Finalize":
                    for result in recognizer.flush(from_finalize=True):
                        await self._send_results(ws, result, request_id)
                elif kind == "CloseStream":
                    break
            for result in recognizer.flush(from_finalize=False):
                await self._send_results(ws, result, request_id)
            duration = recognizer.position / rate
            metadata = {"type": "Metadata", "request_id": request_id, "duration": duration}
            await ws.send(json.dumps(metadata))
            await ws.close(1000)
        except ConnectionClosed:
            pass
        finally:
            session.ended = True
            session.ended_at = time.monotonic()
            session.close_code = ws.close_code
            session.close_reason = ws.close_reason or ""

    async def _send_results(self, ws: ServerConnection, result: ToyResult, request_id: str) -> None:
        message = _results(result, request_id)
        if self.rewrite is None:
            await ws.send(message)
            return
        for payload in self.rewrite(json.loads(message), self.results_sent):
            await ws.send(json.dumps(payload))
        self.results_sent += 1

    async def _maybe_die(self, ws: ServerConnection, session: FakeSession) -> bool:
        if self.breaks_left is not None and self.breaks_left <= 0:
            return False
        broken = any(
            limit is not None and session.audio_bytes >= limit
            for limit in (self.die_after_bytes, self.drop_after_bytes)
        )
        if broken and self.breaks_left is not None:
            self.breaks_left -= 1
        if self.die_after_bytes is not None and session.audio_bytes >= self.die_after_bytes:
            await ws.close(1011, "internal error")
            return True
        if self.drop_after_bytes is not None and session.audio_bytes >= self.drop_after_bytes:
            with contextlib.suppress(Exception):
                ws.transport.abort()
            return True
        return False


def _results(result: ToyResult, request_id: str) -> str:
    words = [
        {
            "word": w.text,
            "start": w.start_s,
            "end": w.end_s,
            "confidence": 0.9,
            "speaker": w.speaker,
            "punctuated_word": w.text.capitalize() if i == 0 else w.text,
        }
        for i, w in enumerate(result.words)
    ]
    transcript = " ".join(w["punctuated_word"] for w in words)
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": result.end_s - result.start_s,
            "start": result.start_s,
            "is_final": result.is_final,
            "speech_final": result.is_final and not result.from_finalize,
            "from_finalize": result.from_finalize,
            "channel": {
                "alternatives": [{"transcript": transcript, "confidence": 0.9, "words": words}]
            },
            "metadata": {
                "request_id": request_id,
                "model_info": {"name": "fake", "version": "0", "arch": "fake"},
                "model_uuid": str(uuid.uuid4()),
            },
        }
    )
