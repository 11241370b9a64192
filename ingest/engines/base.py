"""The speech engine interface every engine (local, Deepgram, Google) implements.

An engine opens one `EngineStream` per ingest stream. The stream accepts PCM exactly as the client
sent it (signed 16-bit little-endian, interleaved, at the handshake's rate and channel count); each
engine converts to what it needs. Results come back as `EngineEvent`s with audio-time offsets from
the start of that stream.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StreamConfig:
    sample_rate: int
    channels: int
    language: str  # "en", "tr", ... or "auto"
    ai_mode: str = "standard"  # "standard" | "super": engines may pick a bigger model for "super"
    # Whose stream it is: engines with a shared capacity (local) give each tenant a share of it.
    tenant_id: str | None = None


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start_ms: int
    end_ms: int
    confidence: float | None = None
    speaker: str | None = None


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """A recognition result. A partial may still change; a final never does."""

    is_final: bool
    text: str
    start_ms: int
    end_ms: int
    words: tuple[Word, ...] = field(default=())
    speaker: str | None = None
    confidence: float | None = None
    # Not a result: something the engine tells the meeting (e.g. "language.unsupported"); the
    # chain hands it to its listener and it never reaches the segment pipeline.
    notice: str | None = None


# The `EngineError.reason` of an engine that refuses a stream because it is full, not failing:
# the chain passes the stream on without counting it against the engine's breaker.
CAPACITY = "capacity"
# The reason of a stream the chain gave up opening within its time: not an answer from the engine.
TIMEOUT = "timeout"

# Other names an engine goes by (ASR_ENGINE, a recording's `engine`): one spelling everywhere.
ENGINE_ALIASES = {"gcp": "google"}


def engine_name(name: str) -> str:
    """`name` as the gateway knows it: lowercased, an alias resolved."""
    name = name.strip().lower()
    return ENGINE_ALIASES.get(name, name)


class EngineError(Exception):
    """The engine failed; `retryable` says whether another attempt (or engine) may succeed.

    `reason` is a short word for counters and logs ("auth", "rate_limited", "server_error",
    "timeout", "closed", ...). Messages never carry credentials.
    """

    def __init__(self, message: str, *, retryable: bool = True, reason: str = "error") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason


class EngineUnavailable(EngineError):
    """No engine of the chain can serve the stream (close 4503, reason `engine_unavailable`)."""

    def __init__(self, message: str = "no speech engine can serve this stream") -> None:
        super().__init__(message, retryable=False, reason="engine_unavailable")


class EngineStream(abc.ABC):
    """One recognition stream. `events()` ends after `close()` has flushed the last final."""

    @abc.abstractmethod
    async def send(self, pcm: bytes) -> None:
        """Feed PCM. Must not block the event loop on recognition work."""

    def offer(self, pcm: bytes) -> bool:
        """Take `pcm` at once if that needs no wait and no I/O (a batch or queue with room);
        False: nothing was taken, `send` it. Never raises (`send` reports a dead stream). Audio
        taken here and audio sent keep their order. The per-frame path: a frame taken here
        costs no coroutine."""
        return False

    @abc.abstractmethod
    async def finalize(self) -> None:
        """Flush the current utterance: its final is emitted even without a pause."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush everything; `events()` yields the remaining finals, then ends."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[EngineEvent]:
        """The stream's results, in order."""

    async def abort(self) -> None:
        """Stop without flushing (the client vanished and nothing more is wanted)."""
        await self.close()


class Engine(abc.ABC):
    name: str

    @abc.abstractmethod
    def supported_languages(self) -> frozenset[str]:
        """Language codes this engine serves ("auto" included if it can detect)."""

    def supports(self, language: str) -> bool:
        return language in self.supported_languages()

    @abc.abstractmethod
    async def open(self, config: StreamConfig) -> EngineStream:
        """Open a stream; raises `EngineError` if the engine cannot serve it."""

    def has_capacity(self) -> bool:
        """Whether a new stream could be opened now (readiness); engines with limits override."""
        return True

    def auto_language(self) -> str | None:
        """The language a `language: auto` stream is transcribed in when this engine cannot
        detect one (an English-only model: "en"); None when it detects."""
        return None

    async def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Load models or connect ahead of the first stream."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release shared resources (thread pools, clients)."""


EventQueue = asyncio.Queue["EngineEvent | EngineError | None"]


async def queued_events(queue: EventQueue) -> AsyncIterator[EngineEvent]:
    """`EngineStream.events()` for a stream that queues its results: events in order, an
    `EngineError` raised, `None` the end (left in the queue, so a later call ends at once too)."""
    while True:
        item = await queue.get()
        if item is None:
            queue.put_nowait(None)
            return
        if isinstance(item, EngineError):
            raise item
        yield item
