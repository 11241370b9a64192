"""A recording's engines in order per chunk, each behind a breaker, as the live chain
(`ingest.engines.chain`) is for streams. Pure but for the engines' calls and its waits: the
clock and the jitter are passed in."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import structlog

from ingest.engines.base import EngineError
from ingest.engines.breaker import CircuitBreaker
from ingest.engines.results import MAX_MS, checked_final
from ingest.files.base import AudioChunk, FileEngine, FileOptions, FileSegment
from shared.backoff import backoff_delay

log = structlog.get_logger("ingest.files.chain")

RETRY_BASE_S = 0.5  # a chunk's retry on the same engine: 0.5 s, 1 s, 2 s, ... (half jittered)
RETRY_CAP_S = 30.0
OUTAGE_POLL_MIN_S = 1.0  # between passes over the engines while all are down


class FileEngineChain(FileEngine):
    """Engines tried in order per chunk, each behind a breaker; retryable errors are retried
    with backoff, then the chunk moves to the next engine (as live failover does). When every
    engine is down (each failed retryably or its breaker is open) the chunk waits out the
    outage, a breaker cool-down at a time, for up to `outage_s`: a vendor's bad minutes do not
    fail a durable job. Which engine served each chunk (index, channel) is kept in `served`."""

    def __init__(
        self,
        engines: list[FileEngine],
        breakers: dict[str, CircuitBreaker],
        *,
        attempts: int,
        outage_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not engines:
            raise ValueError("no file engine")
        self.engines = engines
        self.breakers = breakers
        self.attempts = attempts
        self.outage_s = outage_s
        self._clock, self._rand = clock, rand
        first = engines[0]
        self.name = first.name
        self.chunk_seconds = first.chunk_seconds
        self.max_concurrency = first.max_concurrency
        self.can_diarize = first.can_diarize
        self.served: dict[tuple[int, int | None], str] = {}

    def supported_languages(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for engine in self.engines:
            out |= engine.supported_languages()
        return out

    def supports(self, language: str) -> bool:
        return any(engine.supports(language) for engine in self.engines)

    async def transcribe_chunk(self, chunk: AudioChunk, options: FileOptions) -> list[FileSegment]:
        give_up_at = self._clock() + self.outage_s
        while True:
            try:
                return await self._each_engine(chunk, options)
            except EngineError as exc:
                left = give_up_at - self._clock()
                if not exc.retryable or left <= 0:
                    raise
                wait = min(left, max(OUTAGE_POLL_MIN_S, self._next_allowed_in()))
                log.warning("recording chunk waits for an engine", chunk=chunk.index, wait_s=wait)
                await asyncio.sleep(wait)

    def _next_allowed_in(self) -> float:
        """A breaker cool-down: the soonest an engine that failed may be tried again."""
        return min(self.breakers[engine.name].cooldown_s for engine in self.engines)

    async def transcribe_whole(
        self, path: Path, options: FileOptions
    ) -> tuple[list[FileSegment], str] | None:
        """The original file, whole, from the first engine serving the language when that engine
        takes files whole (Deepgram's pre-recorded API) and one this big: (segments, engine).
        None to go by chunks: the first engine cuts chunks itself, or the whole file failed
        (the chunks then go through the chain as usual)."""
        engine = next((e for e in self.engines if e.supports(options.language)), None)
        if engine is None or not engine.whole_file:
            return None
        if not engine.accepts_file_bytes((await asyncio.to_thread(path.stat)).st_size):
            return None
        result = await self._attempts(engine, partial(engine.transcribe_file, path, options))
        return (result, engine.name) if isinstance(result, list) else None

    async def _each_engine(self, chunk: AudioChunk, options: FileOptions) -> list[FileSegment]:
        last: EngineError | None = None
        served_language = False
        for engine in self.engines:
            if not engine.supports(options.language):
                continue
            served_language = True
            result = await self._attempts(
                engine,
                partial(engine.transcribe_chunk, chunk, options),
                chunk=chunk.index,
                span=(chunk.start_ms, chunk.end_ms),
            )
            if isinstance(result, list):
                self.served[chunk.index, chunk.channel] = engine.name
                return result
            last = result or last
        if last is not None:
            raise last
        if served_language:  # every engine's breaker is open
            raise EngineError("every engine is unavailable (circuit open)", retryable=True)
        raise EngineError("no engine serves this language", retryable=False)

    async def _attempts(
        self,
        engine: FileEngine,
        call: Callable[[], Awaitable[list[FileSegment]]],
        *,
        chunk: int | None = None,
        span: tuple[int, int] = (0, MAX_MS),
    ) -> list[FileSegment] | EngineError | None:
        """`call` on `engine`, up to `attempts` times behind its breaker: its segments, else the
        last error (None when the breaker let no attempt through). Any exception is a failure
        of the engine (a vendor's answer the SDK cannot read raises its own), so the breaker
        counts it, a half-open probe is released and the next engine gets its turn."""
        breaker = self.breakers[engine.name]
        last: EngineError | None = None
        for attempt in range(self.attempts):
            if not breaker.allow(self._clock()):
                break
            try:
                # Checked here: a malformed answer fails this engine, the next gets its turn.
                low, high = span
                segments = [checked_final(s, low_ms=low, high_ms=high) for s in await call()]
            except asyncio.CancelledError:  # a half-open probe that never answered
                breaker.release_probe()
                raise
            except Exception as exc:
                breaker.record_failure(self._clock())
                if isinstance(exc, EngineError):
                    last = exc
                else:
                    log.debug("recording engine raised", engine=engine.name, exc_info=True)
                    last = EngineError(f"{engine.name} failed ({type(exc).__name__})")
                log.warning(
                    "recording chunk failed" if chunk is not None else "recording file failed",
                    engine=engine.name,
                    chunk=chunk,
                    reason=last.reason,
                    retryable=last.retryable,
                )
                if not last.retryable:
                    break
                await asyncio.sleep(backoff_delay(attempt, RETRY_BASE_S, RETRY_CAP_S, self._rand))
                continue
            breaker.record_success(self._clock())
            return segments
        return last
