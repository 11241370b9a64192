"""The embedded engine: pocketsphinx (US English) in a pool of worker processes; with `finals`,
two-pass: pocketsphinx partials and a Whisper final per utterance (`two_pass`, `whisper`).

pocketsphinx holds the GIL for every decoding call, so decoding on threads of the gateway
process used one core at most (about five people talking at once) and delayed the event loop
(three streams: lag p99 18-25 ms, stalls up to 0.3 s). Recognition therefore runs in `workers`
processes started with "spawn" (never fork a process that runs an event loop and threads):
- a stream is pinned at `open` to the least-loaded worker, which holds its `Recognizer`
  (converter, VAD, utterance state, a pooled decoder) until the stream ends;
- the stream's pump sends its queued audio in batches of at most `batch_s`, one request in
  flight at a time, so its events come back in order and streams on a worker take turns;
- a worker that dies (crash, OOM kill) fails its streams with a retryable `EngineError`, and the
  next `open` starts a replacement in its slot.
See `process` for the pipe and its threads, `worker` for the worker process (this package).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import AsyncIterator, Callable

from pocketsphinx import Decoder

from ingest.engines.base import (
    CAPACITY,
    Engine,
    EngineError,
    EngineEvent,
    EngineStream,
    StreamConfig,
    queued_events,
)
from ingest.engines.local.ipc import Close, Feed, Finalize, Open, Release, Request, Warm
from ingest.engines.local.process import WorkerProcess
from ingest.engines.local.recognizer import (
    LANGUAGES,
    SAMPLE_RATE,
    Tuning,
    clean_word,
    default_decoder,
)
from ingest.engines.local.two_pass import partials_decoder
from ingest.engines.local.whisper import FinalsModel, base_language
from shared.tasks import cancel_and_wait

__all__ = [
    "SAMPLE_RATE",
    "LocalEngine",
    "LocalEngineStream",
    "Tuning",
    "clean_word",
    "default_decoder",
]

# A worker serves about 1 / 0.18 streams of continuous speech on one core; in meetings most
# streams are silent most of the time. Each stream also holds a ~90 MB decoder.
STREAMS_PER_WORKER = 8
# Two-pass (Whisper finals), bench/local_engine.py on a shared 2-core machine, real read speech
# at real-time pace: two workers kept final lag p95 under 1 s for 6 streams whenever the
# machine's load was under 4 (16 s at a load of 10); 8 to 12 streams stayed under 2 s in one
# run and lagged 3 to 5 s in another. 3 per worker keeps the 6 that held; `_refusal` watches
# the backlog for busy moments.
TWO_PASS_STREAMS_PER_WORKER = 3
# A worker whose oldest request has waited this long is behind: no new stream goes to it.
OVERLOAD_BACKLOG_S = 1.5


def usable_cpus() -> int:
    """Cores this process may use: its CPU set, capped by a cgroup v2 CPU quota (a container
    limited to 2 CPUs on a 32-core node must not start 32 workers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def _cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """Whole CPUs allowed by `cpu.max` ("max 100000" means no limit), rounded up."""
    try:
        quota, period = open(path).read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))


class _Op(enum.Enum):
    FINALIZE = "finalize"
    CLOSE = "close"


_END = None  # marks the end of the event queue


class LocalEngineStream(EngineStream):
    """Feeds the stream's recognizer in its worker process, one request at a time, in order.

    `send` only queues audio; it waits (never blocks) while more than `max_backlog_s` seconds
    of audio are queued, which pushes back on a client the workers cannot keep up with.
    `events()` has a single consumer. After a failure (the worker's, or its process dying),
    `events()` raises the `EngineError` and `send`/`finalize` raise it too.
    """

    def __init__(
        self,
        engine: LocalEngine,
        worker: WorkerProcess,
        sid: int,
        config: StreamConfig,
        *,
        max_backlog_s: float,
        batch_s: float,
    ) -> None:
        self._engine = engine
        self._worker = worker
        self._sid = sid
        self._tenant_id = config.tenant_id
        bytes_per_s = config.sample_rate * config.channels * 2
        self._max_backlog = int(bytes_per_s * max_backlog_s)
        self._batch_bytes = max(1, int(bytes_per_s * batch_s))
        self._inbox: deque[bytes | _Op | EngineError] = deque()
        self._backlog = 0
        self._has_input = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._events: asyncio.Queue[EngineEvent | EngineError | None] = asyncio.Queue()
        self._error: EngineError | None = None
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._pump(), name="local-engine-stream")
        worker.watch(self._on_worker_lost)

    @property
    def worker_pid(self) -> int | None:
        """The process decoding this stream."""
        return self._worker.pid

    def offer(self, pcm: bytes) -> bool:
        if not pcm or self._error is not None or self._closing or self._task.done():
            return False
        if self._backlog >= self._max_backlog:
            return False  # `send` waits for room
        self._put(bytes(pcm))
        return True

    async def send(self, pcm: bytes) -> None:
        self._check_usable()
        while self._backlog >= self._max_backlog and not self._task.done():
            self._has_room.clear()
            await self._has_room.wait()
        self._check_usable()
        if pcm:
            self._put(bytes(pcm))

    async def finalize(self) -> None:
        self._check_usable()
        self._put(_Op.FINALIZE)

    async def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._put(_Op.CLOSE)
        await asyncio.wait({self._task})  # every final is queued for events() after this

    async def abort(self) -> None:
        # The request in flight (at most `batch_s` of audio) still runs; its answer is dropped.
        self._closing = True
        with contextlib.suppress(Exception):
            await cancel_and_wait(self._task)

    def events(self) -> AsyncIterator[EngineEvent]:
        return queued_events(self._events)

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise EngineError("the stream is closed", retryable=False)

    def _put(self, item: bytes | _Op) -> None:
        self._inbox.append(item)
        if isinstance(item, bytes):
            self._backlog += len(item)
        self._has_input.set()

    def _on_worker_lost(self, error: EngineError) -> None:
        """Called on the worker's reader thread: wake the pump even if it is idle."""
        try:
            self._loop.call_soon_threadsafe(self._interrupt, error)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting for this stream any more

    def _interrupt(self, error: EngineError) -> None:
        if not self._task.done():
            self._inbox.appendleft(error)
            self._has_input.set()

    async def _next(self) -> bytes | _Op | EngineError:
        """The next control op, or queued audio coalesced up to one batch."""
        while not self._inbox:
            self._has_input.clear()
            await self._has_input.wait()
        first = self._inbox.popleft()
        if not isinstance(first, bytes):
            return first
        chunks = [first]
        size = len(first)
        while self._inbox and isinstance(self._inbox[0], bytes) and size < self._batch_bytes:
            chunk = self._inbox.popleft()
            assert isinstance(chunk, bytes)
            chunks.append(chunk)
            size += len(chunk)
        self._backlog -= size
        if self._backlog < self._max_backlog:
            self._has_room.set()
        return b"".join(chunks)

    async def _pump(self) -> None:
        sid = self._sid
        try:
            while True:
                item = await self._next()
                if isinstance(item, EngineError):
                    raise item
                request: Request
                if item is _Op.CLOSE:
                    request = Close(sid)
                elif item is _Op.FINALIZE:
                    request = Finalize(sid)
                else:
                    assert isinstance(item, bytes)
                    request = Feed(sid, item)
                for event in await asyncio.wrap_future(self._worker.call(request)):
                    self._events.put_nowait(event)
                if item is _Op.CLOSE:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, EngineError):
                error = exc
            else:
                error = EngineError(f"local engine failed: {exc!r}")
                error.__cause__ = exc
            self._error = error
            self._events.put_nowait(error)
        finally:
            self._closing = True
            self._events.put_nowait(_END)
            self._has_room.set()  # wake a send() waiting for room
            self._inbox.clear()
            self._worker.unwatch(self._on_worker_lost)
            self._engine._release(self._worker, sid, self._tenant_id)


class LocalEngine(Engine):
    """pocketsphinx in `workers` processes (default: one per usable core), started by `warm_up`
    or as streams need them. `max_streams` caps concurrent streams (default 8 per worker, 3 with
    Whisper finals): past it, or while every worker is behind, `open` raises a retryable
    `EngineError` so the gateway can fall back to the next engine (`has_capacity` says so first).

    `tenant_share` (0 < share <= 1) is the part of `max_streams` one tenant may hold at once
    (`tenant_max_streams`, at least 1), so a few idle sockets of one tenant cannot take every
    other tenant's capacity (at least 2, both sources of a meeting); past it `open` refuses that
    tenant's stream like a full engine.

    `finals` makes it two-pass: pocketsphinx partials, each utterance's final from that Whisper
    model (see `two_pass`); the supported languages are then the model's.

    `decoder_factory` runs in the workers, so it must be picklable (importable by name);
    `idle_decoders` is each worker's pool of decoders kept for reuse.
    """

    name = "local"

    def __init__(
        self,
        *,
        workers: int | None = None,
        max_streams: int | None = None,
        idle_decoders: int = 2,
        tuning: Tuning | None = None,
        max_backlog_s: float = 5.0,
        batch_s: float = 0.5,
        decoder_factory: Callable[[], Decoder] = default_decoder,
        stop_grace_s: float = 5.0,
        stall_timeout_s: float = 30.0,
        finals: FinalsModel | None = None,
        overload_backlog_s: float = OVERLOAD_BACKLOG_S,
        tenant_share: float = 1.0,
    ) -> None:
        self.workers = max(1, workers if workers is not None else usable_cpus())
        per_worker = STREAMS_PER_WORKER if finals is None else TWO_PASS_STREAMS_PER_WORKER
        self.max_streams = max_streams if max_streams is not None else per_worker * self.workers
        if not 0 < tenant_share <= 1:
            raise ValueError("tenant_share must be in (0, 1]")
        # At least two: both sources (mic, system) of one meeting.
        self.tenant_max_streams = max(
            min(2, self.max_streams), int(tenant_share * self.max_streams)
        )
        self.finals = finals
        self._languages = LANGUAGES if finals is None else finals.languages()
        self._multilingual = finals is not None and not finals.english_only()
        if finals is not None and decoder_factory is default_decoder:
            decoder_factory = partials_decoder
        self._overload_backlog_s = overload_backlog_s
        self._slots: list[WorkerProcess | None] = [None] * self.workers
        self._context = multiprocessing.get_context("spawn")
        self._idle_decoders = idle_decoders
        self._decoder_factory = decoder_factory
        self._tuning = tuning or Tuning()
        self._max_backlog_s = max_backlog_s
        self._batch_s = batch_s
        self._stop_grace_s = stop_grace_s
        self._stall_timeout_s = stall_timeout_s
        self._preload = 0  # decoders a (re)started worker creates up front, once warmed up
        self._stream_ids = itertools.count()
        self._active = 0
        self._by_tenant: dict[str | None, int] = {}  # open streams per tenant
        self._closed = False

    def supported_languages(self) -> frozenset[str]:
        return self._languages

    def supports(self, language: str) -> bool:
        code = language.lower()
        # A multilingual Whisper model serves "tr" and so "tr-TR"; pocketsphinx is US English.
        return code in self._languages or (
            self._multilingual and base_language(code) in self._languages
        )

    def auto_language(self) -> str | None:
        # pocketsphinx and English-only Whisper models transcribe everything as English.
        if self.finals is None or self.finals.english_only():
            return "en"
        return None

    def has_capacity(self) -> bool:
        """Whether a new stream would be served in real time: below `max_streams`, and some
        worker is keeping up (or a slot is free to start one)."""
        return self._refusal() is None

    def _refusal(self, tenant_id: str | None = None) -> str | None:
        if self._closed:
            return "the local engine is shut down"
        if self._active >= self.max_streams:
            return f"the local engine is at capacity ({self.max_streams} streams)"
        if tenant_id is not None and self.tenant_streams(tenant_id) >= self.tenant_max_streams:
            return (
                "the tenant holds its share of the local engine "
                f"({self.tenant_max_streams} of {self.max_streams} streams)"
            )
        running = [w for w in self._slots if w is not None and w.alive]
        if len(running) == self.workers:
            behind = min(w.backlog_s() for w in running)
            if behind > self._overload_backlog_s:
                return f"the local engine cannot keep up (every worker is {behind:.1f} s behind)"
        return None

    @property
    def active_streams(self) -> int:
        return self._active

    def tenant_streams(self, tenant_id: str | None) -> int:
        """Streams `tenant_id` holds open on this engine now."""
        return self._by_tenant.get(tenant_id, 0)

    def worker_pids(self) -> list[int]:
        """Pids of the live, started worker processes (for tests and ops)."""
        return [w.pid for w in self._slots if w is not None and w.alive and w.pid is not None]

    async def warm_up(self, decoders: int = 1) -> None:
        """Start every worker and have each create `decoders` idle decoders (capped by
        `idle_decoders`), so the first streams pay neither process start nor `Decoder()`."""
        if self._closed:
            return
        if self.finals is not None and not any(self._slots):
            self.finals = await asyncio.to_thread(self.finals.fetched)
        self._preload = max(self._preload, decoders)
        workers = [self._worker_at(index) for index in range(self.workers)]
        await asyncio.gather(*(asyncio.wrap_future(w.call(Warm(decoders))) for w in workers))

    async def open(self, config: StreamConfig) -> LocalEngineStream:
        if self._closed:
            raise EngineError("the local engine is shut down", retryable=False)
        if not self.supports(config.language):
            raise EngineError(
                f"the local engine does not support language {config.language!r} "
                f"(supported: {', '.join(sorted(self._languages))})",
                retryable=False,
            )
        if config.channels < 1 or not 8000 <= config.sample_rate <= 48000:
            raise EngineError(
                f"unsupported audio format: {config.sample_rate} Hz, {config.channels} channels",
                retryable=False,
            )
        refusal = self._refusal(config.tenant_id)
        if refusal is not None:
            # Full, not failing: the chain passes the stream on without marking the engine.
            raise EngineError(refusal, reason=CAPACITY)
        worker = self._pick_worker()
        sid = next(self._stream_ids)
        self._active += 1
        self._by_tenant[config.tenant_id] = self.tenant_streams(config.tenant_id) + 1
        worker.load += 1
        try:
            await asyncio.wrap_future(worker.call(Open(sid, config, self._tuning)))
        except BaseException:  # cancellation included: the slot must be given back
            self._release(worker, sid, config.tenant_id)
            raise
        return LocalEngineStream(
            self, worker, sid, config, max_backlog_s=self._max_backlog_s, batch_s=self._batch_s
        )

    async def aclose(self) -> None:
        """Stop every worker (SIGTERM/SIGKILL stragglers) and reap it; streams still open end
        with an `EngineError`."""
        self._closed = True
        workers = [w for w in self._slots if w is not None]
        self._slots = [None] * self.workers
        await asyncio.gather(*(w.shutdown(self._stop_grace_s) for w in workers))

    # -- internals ----------------------------------------------------------------------------

    def _pick_worker(self) -> WorkerProcess:
        """The least-loaded worker that keeps up; an empty slot counts as idle but loses ties to
        a running worker (which may have warm decoders), so workers start only as needed."""

        def rank(index: int) -> tuple[bool, int, bool, int]:
            worker = self._slots[index]
            if worker is None or not worker.alive:
                return (False, 0, True, index)
            behind = worker.backlog_s() > self._overload_backlog_s
            return (behind, worker.load, False, index)

        return self._worker_at(min(range(self.workers), key=rank))

    def _worker_at(self, index: int) -> WorkerProcess:
        """Slot `index`'s worker, started if it never was or is gone (crashed, killed)."""
        worker = self._slots[index]
        if worker is None or not worker.alive:
            worker = WorkerProcess(
                self._context,
                f"local-asr-{index}",
                self._decoder_factory,
                self._idle_decoders,
                finals=self.finals,
                stall_timeout_s=self._stall_timeout_s,
            )
            if self._preload:
                worker.call(Warm(self._preload))  # done (or failed) before any Open is answered
            self._slots[index] = worker
        return worker

    def _release(self, worker: WorkerProcess, sid: int, tenant_id: str | None = None) -> None:
        """A stream ended (or failed to open): free its slot and its recognizer."""
        self._active -= 1
        held = self.tenant_streams(tenant_id) - 1
        if held > 0:
            self._by_tenant[tenant_id] = held
        else:
            self._by_tenant.pop(tenant_id, None)
        worker.load -= 1
        worker.post(Release(sid))  # after any request of the stream still in the pipe
