"""The CLI's uvicorn server: its first SIGTERM/SIGINT/SIGHUP drains this process's apps, then it
stops.

uvicorn's own `Server.handle_exit` stops at once (every WebSocket closed 1012 unflushed) and
records the signal, which it re-raises at exit, so the process dies of it. `GatewayServer` runs
`gateway.drain` for the apps whose lifespan is running first, then stops as uvicorn would,
without recording the signal: the process exits 0. Before any app is up there is nothing to
drain and uvicorn's own handling applies. Relies on `Server.handle_exit` being what uvicorn
installs for SIGINT/SIGTERM (`capture_signals`), and on `should_exit`/`force_exit` (listed in
gateway/server/__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from types import FrameType

import uvicorn

from gateway import drain
from gateway.observability.logs import get_logger

log = get_logger("gateway.drain")

DRAIN_MARGIN_S = 1.0  # past the apps' drain budget before the server stops anyway


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.draining = False
        self.drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        # A hangup (the terminal closed, a supervisor's signal) stops as SIGTERM does, with a
        # drain: its default action killed the process with every stream unflushed.
        with contextlib.suppress(ValueError):  # not the main thread: no signals to take
            signal.signal(signal.SIGHUP, self.handle_exit)
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or self.should_exit:
            if sig == signal.SIGINT:  # a second Ctrl-C: stop now, as uvicorn does
                self.force_exit = self.should_exit = True
            return
        if self.loop is None or not drain.pending():
            super().handle_exit(sig, frame)  # nothing to drain yet
            return
        self.draining = True
        # Signal handlers run between bytecodes of the loop's thread: schedule, don't run.
        self.loop.call_soon_threadsafe(self._start_drain, sig)

    def _start_drain(self, sig: int) -> None:
        log.info("signal received, draining", signal=signal.Signals(sig).name)
        self.drain_task = asyncio.create_task(self._drain_then_stop())

    async def _drain_then_stop(self) -> None:
        try:
            async with asyncio.timeout(drain.budget_s() + DRAIN_MARGIN_S):
                await drain.drain_all()
        except TimeoutError:
            log.warning("drain did not finish in time; stopping anyway")
        finally:
            self.should_exit = True
