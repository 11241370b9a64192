"""The engine chain: which engine serves a stream, and mid-stream failover that loses no speech.

`EngineChain.open` gives the first engine of the chain that serves the language and whose
circuit breaker allows it, retrying retryable errors with exponential backoff and jitter (never
auth or bad-request errors). The `FailoverStream` it returns keeps the audio since the last final
in a `ReplayBuffer`; when the engine dies mid-stream it opens the next one (then the same one
again, if the error was retryable) and replays that audio, so the new engine hears everything
not yet finalized. Event times are shifted into the ingest stream's time and never go backwards.
Switching back to the primary happens only for new streams, once its breaker lets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from ingest.engines.base import (
    CAPACITY,
    TIMEOUT,
    Engine,
    EngineError,
    EngineEvent,
    EngineStream,
    EngineUnavailable,
    StreamConfig,
    queued_events,
)
from ingest.engines.breaker import CircuitBreaker
from ingest.engines.replay import ReplayBuffer
from ingest.engines.reporter import EngineReporter, NoEngineReporter
from ingest.engines.results import checked_event
from shared.backoff import backoff_delay
from shared.tasks import cancel_and_wait

log = structlog.get_logger("ingest.engines.chain")

RECENT_FINALS = 16  # finals a vendor's resend is compared with
PLACED_AFTER_LOG_EVERY = 100

# An engine's times rounded to the millisecond may pass the audio's end (floored) by this much.
ROUNDING_MS = 2

# Called with (old engine, new engine, reason) after a mid-stream switch.
SwitchListener = Callable[[str, str, str], None]
# Called with (engine, notice) for an engine's notice events (`EngineEvent.notice`).
NoticeListener = Callable[[str, str], None]

REPLAY_CHUNK_MS = 100  # replayed audio goes out in frames of this size, as a client's would


@dataclass(frozen=True)
class ChainPolicy:
    breaker_failures: int = 3
    breaker_cooldown_s: float = 30.0
    breaker_successes: int = 1
    open_timeout_s: float = 5.0  # to open a stream on one engine, retries included
    failover_open_timeout_s: float = 1.5  # one attempt during a mid-stream switch
    retry_attempts: int = 3  # per engine at open; rounds over the chain at failover
    retry_base_s: float = 0.2
    retry_max_s: float = 2.0
    replay_max_s: float = 120.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """shared.backoff's delay, drawn from `rng` (seeded in tests)."""
        return backoff_delay(attempt, self.retry_base_s, self.retry_max_s, rng.random)


@dataclass
class _Leg:
    """One engine stream serving part of the ingest stream, from `base_ms` on."""

    engine: Engine
    stream: EngineStream
    base_ms: int
    dead: asyncio.Event = field(default_factory=asyncio.Event)
    error: EngineError | None = None
    # Tasks inside an operation on this leg (see `FailoverStream._call`), and those of them
    # that the leg's death interrupted.
    callers: set[asyncio.Task[Any]] = field(default_factory=set)
    interrupted: set[asyncio.Task[Any]] = field(default_factory=set)
    saw_final: bool = False

    @property
    def name(self) -> str:
        return self.engine.name


class EngineChain:
    """Engines in order of preference, each with its circuit breaker."""

    def __init__(
        self,
        engines: list[Engine],
        policy: ChainPolicy | None = None,
        reporter: EngineReporter | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not engines:
            raise ValueError("the engine chain names no engine")
        self.engines = engines
        self.policy = policy or ChainPolicy()
        self.reporter = reporter or NoEngineReporter()
        self.clock = clock
        self.rng = rng or random.Random()
        self.breakers = {
            engine.name: CircuitBreaker(
                self.policy.breaker_failures,
                self.policy.breaker_cooldown_s,
                self.policy.breaker_successes,
            )
            for engine in engines
        }

    def breaker_tripped(self, name: str) -> bool:
        """Whether the engine failed and has not been seen working since (its breaker)."""
        return self.breakers[name].tripped(self.clock())

    def can_take_stream(self) -> bool:
        """Whether some engine has room for a stream and its breaker lets one try now."""
        now = self.clock()
        return any(
            engine.has_capacity() and self.breakers[engine.name].lets_a_stream_try(now)
            for engine in self.engines
        )

    def languages(self) -> list[str]:
        return sorted(set().union(*(engine.supported_languages() for engine in self.engines)))

    def serving(self, language: str) -> list[Engine]:
        """The engines that serve `language`, first choice first."""
        return [engine for engine in self.engines if engine.supports(language)]

    def supports(self, language: str) -> bool:
        return bool(self.serving(language))

    async def warm_up(self) -> None:
        for engine in self.engines:
            await engine.warm_up()

    async def aclose(self) -> None:
        for engine in self.engines:
            await engine.aclose()

    async def open(
        self, config: StreamConfig, on_switch: SwitchListener | None = None
    ) -> FailoverStream:
        """A stream on the first engine that can serve it; `EngineUnavailable` if none can."""
        for engine in self.serving(config.language):
            if not self.breakers[engine.name].allow(self.clock()):
                continue
            # One engine gets `open_timeout_s` in all, retries included, before the next one.
            deadline = time.monotonic() + self.policy.open_timeout_s
            for attempt in range(self.policy.retry_attempts):
                remaining = deadline - time.monotonic()
                try:
                    stream = await self._open_one(engine, config, remaining)
                except EngineError as exc:
                    if exc.reason == CAPACITY:
                        self.breakers[engine.name].release_probe()
                        break  # full, not broken: no retry, and no mark against it
                    delay = self.policy.backoff(attempt, self.rng)
                    last = attempt == self.policy.retry_attempts - 1
                    if not exc.retryable or last or time.monotonic() + delay >= deadline:
                        self.breakers[engine.name].record_failure(self.clock())
                        break
                    await asyncio.sleep(delay)
                    continue
                return FailoverStream(self, config, _Leg(engine, stream, 0), on_switch)
        raise EngineUnavailable()

    async def _open_one(self, engine: Engine, config: StreamConfig, timeout: float) -> EngineStream:
        try:
            async with asyncio.timeout(timeout):
                stream = await engine.open(config)
        except TimeoutError:
            self.reporter.engine_failed(engine.name, "timeout")
            raise EngineError(
                f"{engine.name}: opening a stream timed out", reason=TIMEOUT
            ) from None
        except EngineError as exc:
            self.reporter.engine_failed(engine.name, exc.reason)
            raise
        self.reporter.engine_opened(engine.name)
        return stream

    def failover_candidates(self, language: str, failed: Engine, retryable: bool) -> list[Engine]:
        """The engines after the failed one, then those before it, then itself (if it may
        recover), among those serving the language."""
        serving = self.serving(language)
        if failed not in serving:
            return serving
        index = serving.index(failed)
        order = serving[index + 1 :] + serving[:index]
        return [*order, failed] if retryable else order


class _OrderLock:
    """An asyncio.Lock that counts who holds it or waits for it. `Lock.locked()` reads False
    between a release and the woken waiter's turn: a frame offered then would overtake the
    operation that waited (a finalize, a close)."""

    __slots__ = ("_lock", "users")

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.users = 0

    async def __aenter__(self) -> None:
        self.users += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self.users -= 1
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()
        self.users -= 1


class FailoverStream(EngineStream):
    """The ingest stream's view of its engines: one `EngineStream` that survives their deaths.

    `send`, `finalize` and `close` go to the current engine; a single pump task reads its
    events, detects its death and switches. `events()` raises `EngineUnavailable` when no engine
    is left. `engine_name` names the engine currently serving.
    """

    def __init__(
        self,
        chain: EngineChain,
        config: StreamConfig,
        leg: _Leg,
        on_switch: SwitchListener | None,
    ) -> None:
        self.chain = chain
        self.config = config
        self.on_switch = on_switch
        self.on_notice: NoticeListener | None = None
        self._leg = leg
        self._replay = ReplayBuffer(
            config.sample_rate, config.channels, int(chain.policy.replay_max_s * 1000)
        )
        self._lock = _OrderLock()  # orders audio: sends vs. a switch's replay
        self._out: asyncio.Queue[EngineEvent | EngineError | None] = asyncio.Queue()
        self._closing = False
        self._error: EngineError | None = None
        self._floor_ms = 0  # start of the last final: nothing may start before it
        # The recent finals' text, speaker and end, to spot one sent again (also after another
        # channel's or speaker's final); and the furthest end of any final (finals of two
        # channels or speakers interleave, ending out of order).
        self._recent_finals: deque[tuple[str, str | None, int]] = deque(maxlen=RECENT_FINALS)
        self._finals_end = 0
        self._placed_after = 0  # finals given a time the audio cannot have, for the log
        # Where the client asked to finalize (replay positions) that no final has reached yet:
        # a new engine replays the audio and is asked to finalize at each of these points again.
        self._finalize_marks: list[int] = []
        self.switches: list[tuple[str, str, str]] = []
        self._pump_task = asyncio.create_task(self._pump(), name="engine-failover-pump")

    @property
    def engine_name(self) -> str:
        return self._leg.name

    @property
    def auto_language(self) -> str | None:
        """See `Engine.auto_language`, for the engine serving now."""
        return self._leg.engine.auto_language()

    async def send(self, pcm: bytes) -> None:
        self._check_usable()
        if not pcm:
            return
        leg = self._leg
        # The per-frame path: a stream that takes the frame at once (a batch or queue with room)
        # needs no lock and no `_call`, unless a switch or another operation holds the audio's
        # order. Nothing runs between the offer and the replay append (no await).
        if not self._lock.users and not leg.dead.is_set() and leg.stream.offer(pcm):
            self._replay.append(pcm)
            return
        async with self._lock:
            self._replay.append(pcm)
            leg = self._leg
            if not leg.dead.is_set():
                await self._call(leg, leg.stream.send(pcm))

    async def finalize(self) -> None:
        self._check_usable()
        async with self._lock:
            replay, marks = self._replay, self._finalize_marks
            # Marks the buffer no longer holds audio before, and repeats, add nothing.
            held_from = replay.position - replay.buffered_bytes
            marks[:] = [mark for mark in marks if mark > held_from]
            if not marks or marks[-1] != replay.position:
                marks.append(replay.position)
            leg = self._leg
            if not leg.dead.is_set():
                await self._call(leg, leg.stream.finalize())

    async def close(self) -> None:
        self._closing = True
        if not self._pump_task.done():
            async with self._lock:
                leg = self._leg
                if not leg.dead.is_set():
                    await self._call(leg, leg.stream.close())
        await asyncio.wait({self._pump_task})

    async def abort(self) -> None:
        self._closing = True
        await cancel_and_wait(self._pump_task)  # the pump handles its own errors
        leg = self._leg
        if not leg.saw_final:
            # Neither a success nor a failure: a half-open probe must not stay claimed for good.
            self.chain.breakers[leg.name].release_probe()
        with contextlib.suppress(Exception):
            await leg.stream.abort()
        self._out.put_nowait(None)

    def events(self) -> AsyncIterator[EngineEvent]:
        return queued_events(self._out)

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error

    async def _call(self, leg: _Leg, operation: Coroutine[Any, Any, Any]) -> None:
        """Run an operation on the leg's stream; its failure (or death meanwhile) marks the leg
        dead for the pump to replace, and the audio stays in the replay buffer.

        The operation runs in the caller's task: this is the per-frame path, and a task (plus
        `asyncio.wait`) per frame cost more than the send itself. A leg that dies meanwhile
        interrupts the caller (cancelled, then un-cancelled here) so a send blocked on a dead
        connection returns at once; a caller that gives up (a send timeout) cancels it too.
        """
        task = asyncio.current_task()
        assert task is not None
        if leg.dead.is_set():
            operation.close()
            return
        failure: EngineError | None = None
        leg.callers.add(task)
        try:
            await operation
        except asyncio.CancelledError:
            if task in leg.interrupted:
                leg.interrupted.discard(task)
                if task.uncancel() == 0:
                    return  # interrupted by the leg's death only
            raise
        except EngineError as exc:
            failure = exc
        except Exception as exc:
            failure = EngineError(f"{leg.name}: {type(exc).__name__}")
        else:
            if task in leg.interrupted:  # the operation swallowed the interruption
                leg.interrupted.discard(task)
                task.uncancel()
        finally:
            leg.callers.discard(task)
        if failure is not None:
            self._mark_dead(leg, failure)

    @staticmethod
    def _mark_dead(leg: _Leg, error: EngineError) -> None:
        if not leg.dead.is_set():
            leg.error = error
            leg.dead.set()
            for caller in leg.callers:  # operations blocked on the dead stream return now
                leg.interrupted.add(caller)
                caller.cancel()

    async def _pump(self) -> None:
        try:
            while True:
                leg = self._leg
                failure = await self._drain(leg)
                if failure is None:
                    self.chain.breakers[leg.name].record_success(self.chain.clock())
                    break
                if not await self._switch(leg, failure):
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave events() waiting forever
            self._fail(EngineUnavailable(f"engine failover failed: {type(exc).__name__}"))
        self._out.put_nowait(None)

    async def _drain(self, leg: _Leg) -> EngineError | None:
        """Forward the leg's events until it ends: None if it ended because we closed it."""
        reader = asyncio.create_task(self._read(leg))
        dead = asyncio.create_task(leg.dead.wait())
        try:
            await asyncio.wait({reader, dead}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the pump was cancelled (abort): no reader may outlive it
            reader.cancel()
            raise
        finally:
            dead.cancel()
        if not reader.done():
            with contextlib.suppress(Exception):
                await cancel_and_wait(reader)
            return leg.error or EngineError(f"{leg.name}: stream failed")
        exc = reader.exception()
        if exc is None:
            if self._closing:
                return None
            return EngineError(f"{leg.name}: results ended early", reason="ended")
        if isinstance(exc, EngineError):
            return exc
        return EngineError(f"{leg.name}: {type(exc).__name__}")

    async def _read(self, leg: _Leg) -> None:
        async for event in leg.stream.events():
            if event.notice is not None:
                if self.on_notice is not None:
                    self.on_notice(leg.name, event.notice)
                continue
            # A malformed result fails the engine here (EngineError: a failover), and times
            # stay within the audio this leg was given.
            heard_ms = max(self._replay.end_ms - leg.base_ms, 0)
            checked = checked_event(event, heard_ms=heard_ms)
            if checked.is_final and not leg.saw_final:
                leg.saw_final = True  # the engine works: a half-open breaker may close
                self.chain.breakers[leg.name].record_success(self.chain.clock())
            if checked.is_final and event.start_ms > heard_ms + ROUNDING_MS:
                # A time the audio cannot have: the text is kept, after the last final, and
                # moves neither the floor nor the replay (later finals stay where they are).
                checked = self._after_last_final(leg, checked)
            else:
                checked = self._to_stream_time(leg, checked)
            if checked is not None:
                self._out.put_nowait(checked)

    def _repeated(self, event: EngineEvent, end: int) -> bool:
        """A final sent again: a recent final's text and speaker, ending where it ended or
        before. (Another speaker's or channel's same words are not a repeat.)"""
        key = (event.text, event.speaker)
        return any(
            key == (text, speaker) and end <= kept for text, speaker, kept in self._recent_finals
        )

    def _keep_final(self, event: EngineEvent, end: int) -> None:
        self._recent_finals.append((event.text, event.speaker, end))
        self._finals_end = max(self._finals_end, end)

    def _after_last_final(self, leg: _Leg, event: EngineEvent) -> EngineEvent | None:
        at = max(self._finals_end, self._floor_ms)
        if self._repeated(event, at):
            return None
        # Logged the first time and every hundredth: a vendor doing it all along says so once.
        self._placed_after += 1
        if self._placed_after % PLACED_AFTER_LOG_EVERY == 1:
            log.warning(
                "engine final placed after the previous one",
                engine=leg.name,
                count=self._placed_after,
            )
        self._keep_final(event, at)
        words = tuple(replace(w, start_ms=at, end_ms=at) for w in event.words)
        return replace(event, start_ms=at, end_ms=at, words=words)

    def _to_stream_time(self, leg: _Leg, event: EngineEvent) -> EngineEvent | None:
        """`event` on the stream's clock; None for a final the engine sent again."""
        base, floor = leg.base_ms, self._floor_ms
        start = max(event.start_ms + base, floor)
        end = max(event.end_ms + base, start)
        # A final sent again after later ones is clamped to the floor: compare where it says.
        if event.is_final and self._repeated(event, event.end_ms + base):
            return None
        words = tuple(
            replace(w, start_ms=max(w.start_ms + base, floor), end_ms=max(w.end_ms + base, floor))
            for w in event.words
        )
        shifted = replace(event, start_ms=start, end_ms=end, words=words)
        if event.is_final:
            self._keep_final(event, end)
            # A final answers the finalizes up to its end, not later ones: the engine may also
            # end an utterance of its own accord while a finalize further on is outstanding.
            reached = self._replay.position_at(end)
            self._finalize_marks[:] = [mark for mark in self._finalize_marks if mark > reached]
            self._floor_ms = start
            self._replay.release_until(end)
        return shifted

    async def _switch(self, old: _Leg, failure: EngineError) -> bool:
        """Move to the next engine and replay the audio it has not heard; False if none can."""
        chain = self.chain
        chain.reporter.engine_failed(old.name, failure.reason)
        chain.breakers[old.name].record_stream_death(chain.clock(), id(self))
        self._mark_dead(old, failure)
        # Tearing the dead stream down runs beside opening the next one: it must not delay it.
        teardown = asyncio.create_task(_abort_quietly(old.stream))
        try:
            return await self._replace(old, failure)
        finally:
            await asyncio.wait({teardown})

    async def _replace(self, old: _Leg, failure: EngineError) -> bool:
        chain = self.chain
        async with self._lock:
            new = await self._open_replacement(old, failure)
            if new is None:
                self._fail(EngineUnavailable())
                return False
            start_ms, pieces = self._replay.pending_cut(self._finalize_marks)
            # Audio after the last final that the replay's bound (ENGINE_REPLAY_MAX_S) dropped
            # is heard by no engine: said, since what was spoken there is lost.
            if (unheard_ms := start_ms - self._finals_end) > 0:
                log.warning(
                    "failover: audio past the replay's bound is not replayed",
                    engine=new.name,
                    seconds=round(unheard_ms / 1000, 1),
                )
            new.base_ms = start_ms
            self._leg = new
            chain.reporter.engine_failover(old.name, new.name)
            self.switches.append((old.name, new.name, failure.reason))
            if self.on_switch is not None:
                self.on_switch(old.name, new.name, failure.reason)
            frame = self._replay.frame_bytes
            step = max(frame, self._replay.bytes_per_s * REPLAY_CHUNK_MS // 1000 // frame * frame)
            # Each finalize goes where the client asked for it, not after all the audio: frames
            # sent after it (before the old engine's death was noticed) would join its final.
            for index, audio in enumerate(pieces):
                for offset in range(0, len(audio), step):
                    if new.dead.is_set():
                        break
                    await self._call(new, new.stream.send(audio[offset : offset + step]))
                if index < len(pieces) - 1 and not new.dead.is_set():
                    await self._call(new, new.stream.finalize())
            if self._closing and not new.dead.is_set():
                await self._call(new, new.stream.close())
        return True

    async def _open_replacement(self, old: _Leg, failure: EngineError) -> _Leg | None:
        """Rounds over the candidates: the first quick (the 2 s target), later ones with the
        full open timeout, so a slow but working engine (a loaded machine) still takes over."""
        chain, policy = self.chain, self.chain.policy
        candidates = chain.failover_candidates(self.config.language, old.engine, failure.retryable)
        for round_no in range(max(2, policy.retry_attempts)):
            timeout = policy.failover_open_timeout_s if round_no == 0 else policy.open_timeout_s
            if round_no:
                await asyncio.sleep(policy.backoff(round_no - 1, chain.rng))
            for engine in list(candidates):
                breaker = chain.breakers[engine.name]
                if not breaker.allow(chain.clock()):
                    continue
                try:
                    stream = await chain._open_one(engine, self.config, timeout)
                except EngineError as exc:
                    if exc.reason in (CAPACITY, TIMEOUT):
                        # Full, or slow to answer (a replacement worker starting on a loaded
                        # machine): the later, longer rounds are for it, which its breaker
                        # would deny if each timeout counted against it.
                        breaker.release_probe()
                    else:
                        breaker.record_failure(chain.clock())
                    if not exc.retryable:
                        candidates.remove(engine)
                    continue
                return _Leg(engine, stream, 0)
        return None

    def _fail(self, error: EngineError) -> None:
        self._error = error
        self._out.put_nowait(error)


ABORT_TIMEOUT_S = 2.0


async def _abort_quietly(stream: EngineStream) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(ABORT_TIMEOUT_S):
            await stream.abort()
