"""The parent's side of one `LocalEngine` worker process: its pipe, two I/O threads, futures.

Pipe I/O blocks (a send blocks while the worker is busy and the pipe's buffer is full, a receive
waits for the worker), so it runs on two daemon threads and never on an event loop:
- the sender starts the process (a spawn takes a few ms), then writes queued requests in order;
- the reader settles each answer's future; at EOF (the worker stopped, crashed or was killed)
  it reaps the process and fails everything still waiting on it.
Answers are `concurrent.futures.Future`s, so any event loop can await them (`wrap_future`): the
engine may be used from more than one loop over its life (as the tests' shared engine is).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from multiprocessing.context import SpawnContext
from queue import SimpleQueue

from pocketsphinx import Decoder

from ingest.engines.base import EngineError, EngineEvent
from ingest.engines.local.ipc import Envelope, Failed, Request, Stop
from ingest.engines.local.whisper import FinalsModel
from ingest.engines.local.worker import serve

REAP_GRACE_S = 5.0  # a worker whose pipe hit EOF is exiting; past this, it is killed
WATCHDOG_POLL_S = 1.0  # how often the reader checks for a worker that stopped answering

LostCallback = Callable[[EngineError], None]


class WorkerProcess:
    """A started worker process. `load` is the engine's count of streams pinned here."""

    def __init__(
        self,
        context: SpawnContext,
        name: str,
        decoder_factory: Callable[[], Decoder],
        idle_decoders: int,
        *,
        finals: FinalsModel | None = None,
        stall_timeout_s: float = 30.0,
    ) -> None:
        self.name = name
        self._stall_timeout_s = stall_timeout_s
        self._stalled = False  # killed by the watchdog
        self.load = 0
        self.pid: int | None = None  # set once the process has started
        self.exited: Future[None] = Future()  # done once the process is reaped
        self._conn, self._child_conn = context.Pipe(duplex=True)
        self._process = context.Process(
            target=serve,
            args=(self._child_conn, decoder_factory, idle_decoders, finals),
            name=name,
            daemon=True,  # never outlives the gateway, even if aclose() is skipped
        )
        self._outbox: SimpleQueue[Envelope | None] = SimpleQueue()  # None stops the sender
        self._lock = threading.Lock()  # guards the fields below (loop and I/O threads use them)
        self._next_id = 0
        self._pending: dict[int, Future[list[EngineEvent]]] = {}
        self._sent_at: dict[int, float] = {}  # when each pending request was queued
        self._watchers: set[LostCallback] = set()
        self._stopping = False
        self._lost: str | None = None  # why the worker is gone, once it is
        self._sender = threading.Thread(target=self._send_loop, name=f"{name}-send", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name=f"{name}-read", daemon=True)
        self._sender.start()

    @property
    def alive(self) -> bool:
        return self._lost is None

    def call(self, request: Request) -> Future[list[EngineEvent]]:
        """Send a request; the future gets its events, or an `EngineError`."""
        future: Future[list[EngineEvent]] = Future()
        with self._lock:
            if self._lost is None:
                rid = self._next_id
                self._next_id += 1
                self._pending[rid] = future
                self._sent_at[rid] = time.monotonic()
                self._outbox.put((rid, request))
                return future
        future.set_exception(self.error())
        return future

    def backlog_s(self) -> float:
        """How long the oldest unanswered request has waited (0 when none): a worker that
        cannot keep up shows it here before its streams' finals fall seconds behind."""
        with self._lock:
            oldest = min(self._sent_at.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def post(self, request: Request) -> None:
        """Send a request that gets no answer (dropped if the worker is gone)."""
        with self._lock:
            if self._lost is None:
                self._outbox.put((None, request))

    def watch(self, callback: LostCallback) -> None:
        """Call `callback` (on an I/O thread) when the worker is gone; at once if it is."""
        with self._lock:
            if self._lost is None:
                self._watchers.add(callback)
                return
        callback(self.error())

    def unwatch(self, callback: LostCallback) -> None:
        with self._lock:
            self._watchers.discard(callback)

    def error(self) -> EngineError:
        """A fresh error for one stream (one instance raised in many tasks mixes tracebacks)."""
        return EngineError(f"local engine worker {self.name}: {self._lost or 'alive'}")

    async def shutdown(self, grace_s: float) -> None:
        """Ask the worker to stop; SIGTERM, then SIGKILL it if it has not after `grace_s`."""
        with self._lock:
            self._stopping = True
            if self._lost is None:
                self._outbox.put((None, Stop()))
        exited = asyncio.wrap_future(self.exited)
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.pid is not None and not self.exited.done():
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    pass
            await asyncio.wait({exited}, timeout=grace_s)
            if exited.done():
                return

    # -- I/O threads ------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        try:
            self._process.start()
        except Exception as exc:
            self._child_conn.close()
            self._finish(f"could not start: {exc!r}")
            return
        self.pid = self._process.pid
        # Only the worker holds its end now, so the reader sees EOF whenever the worker dies.
        self._child_conn.close()
        self._reader.start()
        while (envelope := self._outbox.get()) is not None:
            try:
                self._conn.send(envelope)
            except OSError:
                return  # the worker is gone: the reader sees EOF and reports it
            except Exception:
                # Not sent (or half sent): the pipe's framing can no longer be trusted.
                self._process.kill()
                return
            if isinstance(envelope[1], Stop):
                return

    def _read_loop(self) -> None:
        try:
            while True:
                if not self._conn.poll(WATCHDOG_POLL_S):
                    self._check_stall()
                    continue
                rid, result = self._conn.recv()
                with self._lock:
                    future = self._pending.pop(rid, None)
                    self._sent_at.pop(rid, None)
                if future is None:
                    continue
                try:
                    if isinstance(result, Failed):
                        error = EngineError(result.message, retryable=result.retryable)
                        future.set_exception(error)
                    else:
                        future.set_result(result)
                except InvalidStateError:
                    pass  # cancelled by its awaiter (an aborted stream)
        except (EOFError, OSError):
            pass  # the worker exited or died
        except Exception:
            self._process.kill()  # an answer we cannot read: the pipe is useless now
        self._process.join(REAP_GRACE_S)
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join()
        self._finish(self._describe_exit())

    def _check_stall(self) -> None:
        """A worker that stops answering (stuck in C, stopped, swapping) is killed, so its
        streams fail over instead of waiting forever; the pool starts a replacement."""
        with self._lock:
            oldest = min(self._sent_at.values(), default=None)
        if oldest is not None and time.monotonic() - oldest > self._stall_timeout_s:
            self._stalled = True
            self._process.kill()

    def _describe_exit(self) -> str:
        if self._stalled:
            return f"process {self.pid} stopped answering for {self._stall_timeout_s:g} s"
        code = self._process.exitcode
        if code == 0 and self._stopping:
            return "the local engine is shut down"
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"process {self.pid} was killed by {name}"
        return f"process {self.pid} exited with code {code}"

    def _finish(self, reason: str) -> None:
        """The worker is gone: fail what waits on it, stop the sender, release the pipe."""
        with self._lock:
            self._lost = reason
            pending = list(self._pending.values())
            self._pending.clear()
            self._sent_at.clear()
            watchers = list(self._watchers)
            self._watchers.clear()
        self._outbox.put(None)  # the sender stops here, or at a send that fails
        for future in pending:
            try:
                future.set_exception(self.error())
            except InvalidStateError:
                pass
        for callback in watchers:
            callback(self.error())
        if threading.current_thread() is not self._sender:
            self._sender.join()
        self._conn.close()
        # Not `self._process.close()`: another thread's `Process.start()` may be polling it
        # (multiprocessing's `_cleanup`); its fds close when the object is collected.
        self.exited.set_result(None)
