"""Graceful drain on SIGTERM/SIGINT, done by the application before the server stops.

Left to itself, uvicorn answers SIGTERM by closing every WebSocket at once with 1012 (without
flushing what an ingest stream has accepted), waits for tasks, runs the lifespan shutdown and then
re-raises the signal, so the process dies of SIGTERM. The CLI's server
(`gateway.server.server.GatewayServer`, in every worker process with `--workers N`) answers the
first SIGTERM/SIGINT by running `Drain` for each app registered here first:

1. `/readyz` answers 503 at once and new connections are closed 1012;
2. every ingest stream is ended with 1012: its engine is flushed and its last finals stored and
   published (gateway/ws/ingest.py does that for every way a stream ends);
3. deliveries settle: the drain waits until nothing was sent to a viewer for SETTLE_QUIET_S, so
   the last finals reach the meeting's viewers;
4. viewers are closed 1012 ("server restarting, reconnect with since"), DRAIN_BATCH at a time.

Then the server stops as usual and the process exits 0, all within `DRAIN_TIMEOUT_S`. A second
SIGINT during the drain forces the exit (uvicorn's own behaviour).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from gateway.close_codes import CloseCode
from gateway.observability.logs import get_logger
from gateway.services import Services
from gateway.shutdown_budget import RESERVE_FRACTION
from gateway.ws.live import RESTARTING, LiveConnection

log = get_logger("gateway.drain")

DRAIN_BATCH = 100  # viewers closed at once
# How long one batch is waited for before the next is told: a close that goes unread gives up
# after gateway.ws.common.CLOSE_TIMEOUT_S (5 s), and a healthy batch is done in milliseconds.
BATCH_WAIT_S = 1.0
SETTLE_QUIET_S = 0.3
VIEWER_SHARE = 0.25  # of the drain budget, kept for closing viewers after the ingest flush
VIEWERS_RESTARTING = "server restarting, reconnect with since"


class Drain:
    """Drains one app's connections within a time budget."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.timeout_s = services.settings.drain_timeout_s

    @property
    def budget_s(self) -> float:
        """The drain's own share of DRAIN_TIMEOUT_S (the rest is the shutdown after it)."""
        return self.timeout_s * (1 - RESERVE_FRACTION)

    async def run(self) -> None:
        services = self.services
        services.draining = True
        started = time.monotonic()
        deadline = started + self.budget_s
        ingests = services.connections.with_role("ingest")
        log.info(
            "draining",
            ingest=len(ingests),
            viewers=len(services.connections.with_role("viewer")),
            timeout_s=self.timeout_s,
        )
        for connection in ingests:
            connection.end(CloseCode.SERVICE_RESTART, RESTARTING)
        if services.recordings is not None:
            # Recording jobs go back to the queue at their last checkpoint (another replica or
            # this one after restart resumes them); bounded like the ingest flush.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.budget_s * VIEWER_SHARE):
                    await services.recordings.drain()
        flushed = await _finished(ingests, deadline - self.budget_s * VIEWER_SHARE)
        await self._settle(deadline)
        viewers = await self._close_viewers(deadline)
        left = len(services.connections)
        log.info(
            "drained",
            elapsed_s=round(time.monotonic() - started, 3),
            ingest_flushed=flushed,
            ingest_total=len(ingests),
            viewers_closed=viewers,
            connections_left=left,
        )

    async def _settle(self, deadline: float) -> None:
        """Wait until the viewers' sockets have been quiet for SETTLE_QUIET_S: the last finals
        published by the flushed streams (through the bus, possibly another hop) are out."""
        metrics = self.services.metrics
        last, quiet_since = metrics.deliveries, time.monotonic()
        while time.monotonic() < deadline - self.budget_s * VIEWER_SHARE / 2:
            await asyncio.sleep(SETTLE_QUIET_S / 6)
            if metrics.deliveries != last:
                last, quiet_since = metrics.deliveries, time.monotonic()
            elif time.monotonic() - quiet_since >= SETTLE_QUIET_S:
                return

    async def _close_viewers(self, deadline: float) -> int:
        """Close every remaining connection (viewers, and streams that registered meanwhile),
        DRAIN_BATCH at a time; how many were closed. A batch gets BATCH_WAIT_S: one viewer that
        does not read its close (it is aborted after CLOSE_TIMEOUT_S) must not hold the rest."""
        registry = self.services.connections
        told: list[LiveConnection] = []
        while time.monotonic() < deadline:
            told_ids = {id(c) for c in told}
            live = [*registry.with_role("viewer"), *registry.with_role("ingest")]
            batch = [c for c in live if id(c) not in told_ids][:DRAIN_BATCH]
            if not batch:
                break
            for connection in batch:
                message = VIEWERS_RESTARTING if connection.role == "viewer" else RESTARTING
                connection.end(CloseCode.SERVICE_RESTART, message)
            told.extend(batch)
            await _finished(batch, min(deadline, time.monotonic() + BATCH_WAIT_S))
        await _finished(told, deadline)  # the stragglers, within what is left
        return sum(c.finished.is_set() for c in told)


async def _finished(connections: list[LiveConnection], deadline: float) -> int:
    """Wait (until `deadline`) for the connections' handlers to return; how many did."""
    waits = [asyncio.create_task(c.finished.wait()) for c in connections]
    if waits:
        await asyncio.wait(waits, timeout=max(0.0, deadline - time.monotonic()))
        for task in waits:
            task.cancel()
    return sum(c.finished.is_set() for c in connections)


# --- The apps of this process, drained by the server (gateway/server/server.py) -------------

_drains: list[Drain] = []


@contextlib.contextmanager
def registered(services: Services) -> Iterator[Drain]:
    """For the app's lifespan: make its connections drainable by the server's exit handler."""
    drain = Drain(services)
    _drains.append(drain)
    try:
        yield drain
    finally:
        _drains.remove(drain)


def pending() -> bool:
    """Whether any app of this process has connections to drain (its lifespan is running)."""
    return bool(_drains)


def budget_s() -> float:
    """The longest drain budget of this process's apps."""
    return max((d.budget_s for d in _drains), default=0.0)


async def drain_all() -> None:
    await asyncio.gather(*(drain.run() for drain in list(_drains)), return_exceptions=True)
