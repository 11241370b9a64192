"""Deepgram Live (`/v1/listen` over WebSocket) through the official `deepgram-sdk` (7.x).

One WebSocket per ingest stream. PCM goes out as sent (linear16 at the stream's rate and
channels), gathered into messages of `send_batch_ms` (100 ms by default, within Deepgram's
advice of 20 to 100 ms chunks): a client's 20 ms frames cost one vendor message in five, which is
most of the relay's CPU (README, Performance). A partial batch goes out after `send_batch_ms`
anyway, and before `Finalize` and `CloseStream`. While no audio flows a `KeepAlive` goes out
every `keepalive_s`, so a paused client never meets Deepgram's 10 s idle close. `finalize` is
Deepgram's `Finalize`; `close` sends `CloseStream` and waits for the last Results. Interim results
become partials, `is_final` results finals; with diarization a final whose words change speaker
becomes one final per turn.

The API key lives only in the SDK client; errors are rebuilt from status codes (the SDK's
`ApiError` carries the request headers, key included), never chained or repr'd.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.types import ListenV1Error, ListenV1Results
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from ingest.engines.base import (
    Engine,
    EngineError,
    EngineEvent,
    EngineStream,
    StreamConfig,
    Word,
    queued_events,
)
from ingest.engines.turns import split_by_speaker
from shared.tasks import cancel_and_wait

# Languages Deepgram's streaming models serve (base codes; regional variants pass through).
LANGUAGES = frozenset(
    {"auto", "bg", "ca", "cs", "da", "de", "el", "en", "es", "et", "fi", "fr", "hi", "hu", "id",
     "it", "ja", "ko", "lt", "lv", "ms", "nl", "no", "pl", "pt", "ro", "ru", "sk", "sv", "th",
     "tr", "uk", "vi", "zh"}
)  # fmt: skip


def http_error(status: int | None, what: str = "deepgram") -> EngineError:
    """An `EngineError` for an HTTP status: 400/401/403 are final, 429/5xx/unknown retryable."""
    if status in (401, 403):
        return EngineError(f"{what} rejected the credentials (HTTP {status})", retryable=False,
                           reason="auth")  # fmt: skip
    if status == 400:
        return EngineError(f"{what} rejected the request (HTTP 400)", retryable=False,
                           reason="bad_request")  # fmt: skip
    if status == 429:
        return EngineError(f"{what} is rate limiting (HTTP 429)", reason="rate_limited")
    if status is not None and status >= 500:
        return EngineError(f"{what} server error (HTTP {status})", reason="server_error")
    return EngineError(f"{what} handshake failed (HTTP {status})", reason="connect")


@dataclass(frozen=True)
class DeepgramOptions:
    model: str = "nova-3"
    language: str | None = None  # None: the handshake's language
    url: str | None = None  # base URL override (self-hosted, tests): ws(s)://host:port
    keyterms: tuple[str, ...] = ()
    keepalive_s: float = 4.0
    endpointing_ms: int = 300
    utterance_end_ms: int = 1000
    diarize: bool = True
    close_timeout_s: float = 10.0
    send_batch_ms: int = 100  # 0: every frame as its own message
    # Deepgram answers audio within seconds (Results, empty in silence, and VAD events): a
    # stream that has had audio unanswered this long is stuck, and fails over while the
    # chain's replay buffer (120 s) still holds what it took meanwhile. Wall time, not audio:
    # a replayed backlog goes out in a burst far faster than any answer can come.
    unanswered_s: float = 60.0


class DeepgramEngine(Engine):
    name = "deepgram"

    def __init__(self, api_key: str, options: DeepgramOptions | None = None) -> None:
        self.options = options or DeepgramOptions()
        environment = DeepgramClientEnvironment.PRODUCTION
        if self.options.url:
            base = self.options.url.rstrip("/")
            http = base.replace("wss://", "https://").replace("ws://", "http://")
            environment = DeepgramClientEnvironment(
                base=http, production=base, agent=base, agent_rest=http
            )
        self._client = AsyncDeepgramClient(api_key=api_key, environment=environment)

    def __repr__(self) -> str:  # the SDK client holds the key: never show it
        return f"DeepgramEngine(model={self.options.model!r})"

    def supported_languages(self) -> frozenset[str]:
        return LANGUAGES

    def supports(self, language: str) -> bool:
        return language.split("-")[0].lower() in LANGUAGES

    def _language(self, config: StreamConfig) -> str:
        """DEEPGRAM_LANGUAGE, else the handshake's: `auto` is `multi`, `en-us` is `en-US`."""
        if self.options.language:
            return self.options.language
        if config.language == "auto":
            return "multi"
        base, _, region = config.language.partition("-")
        return f"{base}-{region.upper()}" if len(region) == 2 else config.language

    async def open(self, config: StreamConfig) -> DeepgramStream:
        o = self.options
        extra: dict[str, Any] = {}
        if o.keyterms:
            extra["keyterm"] = list(o.keyterms)
        connect = self._client.listen.v1.connect(
            model=o.model,
            language=self._language(config),
            encoding="linear16",
            sample_rate=config.sample_rate,
            channels=config.channels,
            interim_results="true",
            punctuate="true",
            smart_format="true",
            diarize="true" if o.diarize else "false",
            endpointing=o.endpointing_ms,
            utterance_end_ms=o.utterance_end_ms,
            vad_events="true",
            **extra,
        )
        try:
            conn = await connect.__aenter__()
        except ApiError as exc:
            raise http_error(exc.status_code) from None
        except Exception as exc:  # unreachable, reset, or the handshake failing otherwise
            message = f"deepgram handshake failed ({type(exc).__name__})"
            raise EngineError(message, reason="connect") from None
        batch_bytes = config.sample_rate * config.channels * 2 * o.send_batch_ms // 1000
        return DeepgramStream(connect, conn, o, batch_bytes)


class DeepgramStream(EngineStream):
    def __init__(
        self, connect: Any, conn: Any, options: DeepgramOptions, batch_bytes: int = 0
    ) -> None:
        self._connect = connect  # the SDK's context manager, exited when the stream ends
        self._conn = conn
        self._options = options
        self._batch = bytearray()  # audio not sent yet (fewer than batch_bytes)
        self._batch_bytes = batch_bytes
        self._batch_timer: asyncio.TimerHandle | None = None
        self._events: asyncio.Queue[EngineEvent | EngineError | None] = asyncio.Queue()
        self._closing = False
        self._unanswered_since: float | None = None  # first audio sent after the last message
        self._audio_sent_at = 0.0  # when audio last went out (keepalives aside)
        self._stuck_reported = False
        self._last_sent = time.monotonic()
        self._receiver = asyncio.create_task(self._receive(), name="deepgram-receive")
        self._keepalive = asyncio.create_task(self._keep_alive(), name="deepgram-keepalive")

    def offer(self, pcm: bytes) -> bool:
        # Into a batch that stays short of full: no send now (one leaves when full or due).
        if not pcm or self._closing or self._receiver.done():
            return False
        if len(self._batch) + len(pcm) >= self._batch_bytes:
            return False  # also when batching is off (batch_bytes 0)
        self._batch += pcm
        if self._batch_timer is None:
            delay = self._options.send_batch_ms / 1000
            self._batch_timer = asyncio.get_running_loop().call_later(delay, self._batch_due)
        return True

    async def send(self, pcm: bytes) -> None:
        if not pcm or self.offer(pcm):  # an empty binary frame would close the Deepgram stream
            return
        if self._batch_bytes <= 0:
            await self._op(self._conn.send_media(bytes(pcm)))
            self._check_answered()
            return
        self._batch += pcm  # the batch is full now, or the stream is closed (`_op` says so)
        await self._send_batch()

    async def finalize(self) -> None:
        await self._send_batch()
        await self._op(self._conn.send_finalize())

    async def close(self) -> None:
        if not self._closing:
            with contextlib.suppress(Exception):
                await self._send_batch()
            self._closing = True
            with contextlib.suppress(Exception):
                await self._op(self._conn.send_close_stream())
        try:
            async with asyncio.timeout(self._options.close_timeout_s):
                await asyncio.wait({self._receiver})
        except TimeoutError:
            # The finals of the audio it holds never came: a failure (the chain replays that
            # audio to the next engine), not the clean end a CloseStream answered is.
            self._events.put_nowait(
                EngineError("deepgram did not answer the close in time", reason="timeout")
            )
        await self._shutdown()

    async def abort(self) -> None:
        self._closing = True
        self._cancel_batch_timer()
        self._receiver.cancel()
        await self._shutdown()

    def events(self) -> AsyncIterator[EngineEvent]:
        return queued_events(self._events)

    async def _send_batch(self) -> None:
        """Send the audio gathered so far. Taking the batch and writing it happen in one step of
        the event loop (the SDK writes before its first wait), so batches go out in order."""
        self._cancel_batch_timer()
        if self._batch:
            data, self._batch = bytes(self._batch), bytearray()
            await self._op(self._conn.send_media(data))
            self._check_answered()

    def _check_answered(self) -> None:
        """After audio went out: fail the stream once audio has been unanswered too long."""
        now = time.monotonic()
        paused = now - self._audio_sent_at > self._options.keepalive_s
        self._audio_sent_at = now
        # After a pause, what went before may wait for more audio to be answered: count anew.
        if self._unanswered_since is None or paused:
            self._unanswered_since = now
        elif now - self._unanswered_since >= self._options.unanswered_s:
            if not self._stuck_reported and not self._closing:
                self._stuck_reported = True  # said once: the chain replaces this stream
                seconds = self._options.unanswered_s
                message = f"deepgram answered no audio for {seconds:g} s"
                self._events.put_nowait(EngineError(message, reason="timeout"))

    def _batch_due(self) -> None:
        self._batch_timer = None
        if self._batch and not self._closing:
            task = asyncio.ensure_future(self._send_batch())
            # A failure here is the connection's: the receiver reports it, the replay covers it.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _cancel_batch_timer(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None

    async def _op(self, operation: Any) -> None:
        if self._receiver.done() and not self._closing:
            operation.close()
            raise EngineError("deepgram stream is closed", reason="closed")
        try:
            await operation
        except ConnectionClosed as exc:
            raise _closed_error(exc) from None
        self._last_sent = time.monotonic()

    async def _keep_alive(self) -> None:
        interval = self._options.keepalive_s
        while not self._closing:
            await asyncio.sleep(max(0.05, interval - (time.monotonic() - self._last_sent)))
            if self._closing or time.monotonic() - self._last_sent < interval:
                continue
            try:
                await self._op(self._conn.send_keep_alive())
            except EngineError:
                return  # the receiver reports the death

    async def _receive(self) -> None:
        try:
            async for message in self._conn:
                self._unanswered_since = None
                if isinstance(message, ListenV1Results):
                    for event in results_to_events(message):
                        self._events.put_nowait(event)
                elif isinstance(message, ListenV1Error):
                    self._events.put_nowait(
                        EngineError("deepgram reported an error", reason="server_error")
                    )
                    return
            # The server closed the socket cleanly (after CloseStream: the last Results came).
            self._events.put_nowait(
                None if self._closing else EngineError("deepgram ended the stream", reason="ended")
            )
        except ConnectionClosedOK:
            self._events.put_nowait(
                None if self._closing else EngineError("deepgram ended the stream", reason="ended")
            )
        except ConnectionClosed as exc:
            self._events.put_nowait(_closed_error(exc))
        except Exception as exc:
            self._events.put_nowait(EngineError(f"deepgram receive failed ({type(exc).__name__})"))

    async def _shutdown(self) -> None:
        self._cancel_batch_timer()
        self._closing = True
        receiving = not self._receiver.done()
        try:
            with contextlib.suppress(Exception):
                await cancel_and_wait(self._keepalive, self._receiver)
        finally:  # the connection is closed even if our caller is cancelled meanwhile
            if receiving:
                self._events.put_nowait(None)
            connect, self._connect = self._connect, None
            if connect is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await connect.__aexit__(None, None, None)


def _closed_error(exc: ConnectionClosed) -> EngineError:
    code = exc.rcvd.code if exc.rcvd is not None else None
    return EngineError(f"deepgram closed the connection (code {code})", reason="closed")


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _speaker(number: object) -> str | None:
    """Deepgram numbers speakers; anything else is no label."""
    if isinstance(number, bool) or not isinstance(number, int | float) or number != int(number):
        return None
    return f"S{int(number)}"


def results_to_events(message: ListenV1Results) -> list[EngineEvent]:
    """A Results message as engine events: one partial, or one final per speaker turn."""
    alternatives = message.channel.alternatives
    start, end = _ms(message.start), _ms(message.start + message.duration)
    is_final = bool(message.is_final)
    if not alternatives:
        return [EngineEvent(is_final=is_final, text="", start_ms=start, end_ms=end)]
    best = alternatives[0]
    words = tuple(
        Word(
            text=w.punctuated_word or w.word,
            start_ms=_ms(w.start),
            end_ms=_ms(w.end),
            confidence=w.confidence,
            speaker=_speaker(w.speaker),
        )
        for w in best.words or ()
    )
    event = EngineEvent(is_final, best.transcript, start, end, words, None, best.confidence)
    return split_by_speaker(event)
