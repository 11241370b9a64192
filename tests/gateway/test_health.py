"""Health endpoints of the real application (in process, embedded defaults)."""

from __future__ import annotations

from pathlib import Path

import httpx

from gateway.app import create_app
from gateway.config import Settings
from gateway.tokens import generate_keypair


async def test_readiness_follows_draining_while_liveness_stays(tmp_path: Path) -> None:
    _, public = generate_keypair(tmp_path)
    settings = Settings(
        jwt_public_key_path=public,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        local_engine_workers=1,
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway") as client,
    ):
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
