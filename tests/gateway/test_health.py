"""Health endpoints of the real application (in process, embedded defaults)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.gateway.in_process import gateway_app


async def test_readiness_follows_draining_while_liveness_stays(tmp_path: Path) -> None:
    async with gateway_app(tmp_path) as (app, client, _):
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "checks": {
                "database": True,
                "bus": True,
                "outbox": True,
                "engines": True,
                "not_draining": True,
            },
        }
        app.state.services.draining = True  # what a graceful drain does first
        draining = await client.get("/readyz")
        assert draining.status_code == 503
        assert draining.json()["checks"]["not_draining"] is False
        assert (await client.get("/healthz")).status_code == 200


async def test_every_readiness_route_reports_the_same_checks(tmp_path: Path) -> None:
    async with gateway_app(tmp_path) as (app, client, _):
        for path in ("/readyz", "/readyz/ingest", "/readyz/live"):
            ready = await client.get(path)
            assert ready.status_code == 200, path
            assert set(ready.json()["checks"]) == {
                *("database", "bus", "outbox", "engines", "not_draining")
            }
        app.state.services.draining = True
        for path in ("/readyz", "/readyz/ingest", "/readyz/live"):
            assert (await client.get(path)).status_code == 503, path


async def test_live_readiness_does_not_wait_on_a_database_that_hangs(tmp_path: Path) -> None:
    """A database that accepts connections and never answers (a partition) held the probe for
    the store's own 5 s, past the Deployment probe's 3 s: every replica failed it at once."""
    async with gateway_app(tmp_path) as (app, client, _):

        async def hangs() -> bool:
            await asyncio.Event().wait()
            return True

        app.state.services.store.healthy = hangs
        ready = await asyncio.wait_for(client.get("/readyz/live"), 30)
        assert ready.status_code == 200 and ready.json()["checks"]["database"] is False


async def test_a_hanging_database_check_is_shared_by_the_probes_and_never_cancelled() -> None:
    """Cancelling SQLAlchemy's connect or query still waits out the connection's close (2 s
    with asyncpg), which put each probe past its timeout: one check runs, the probes wait on
    it for a second each, and the next probe after it ends starts a new one."""
    from gateway.http.api import _healthy_within

    class Hanging:
        def __init__(self) -> None:
            self.calls = 0
            self.cancelled = False
            self.answer = asyncio.Event()

        async def healthy(self) -> bool:
            self.calls += 1
            try:
                await self.answer.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
            return True

    store = Hanging()
    assert [await _healthy_within(store, 0.05) for _ in range(3)] == [False] * 3
    assert store.calls == 1 and not store.cancelled
    store.answer.set()
    assert await _healthy_within(store, 5) is True
    assert await _healthy_within(store, 5) is True and store.calls == 2
