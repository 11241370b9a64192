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
            "checks": {"database": True, "bus": True, "engines": True, "not_draining": True},
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
            assert set(ready.json()["checks"]) == {"database", "bus", "engines", "not_draining"}
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
