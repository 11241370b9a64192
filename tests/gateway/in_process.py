"""The real application on embedded defaults, in process, with an HTTP client (no server)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.config import Settings
from gateway.services import Services, build_services
from gateway.tokens import generate_keypair
from store.migrate import upgrade


@contextlib.asynccontextmanager
async def gateway_app(
    directory: Path, **settings: Any
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient, Path]]:
    """The app started (lifespan) with its keys and SQLite file in `directory`, `settings` on
    top; the app, a client of it, and the private key's path (for minting tokens)."""
    private, public = generate_keypair(directory)
    app = create_app(
        Settings(
            jwt_public_key_path=public,
            database_url=f"sqlite+aiosqlite:///{directory / 'gateway.db'}",
            local_engine_workers=1,
            **settings,
        )
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway") as client,
    ):
        yield app, client, private


def service_settings(database_url: str, directory: Path) -> Settings:
    """Settings for the gateway's services with no speech engine loaded (Deepgram is named,
    never used), their key and files in `directory`."""
    _, public = generate_keypair(directory, force=True)
    return Settings(
        database_url=database_url,
        jwt_public_key_path=public,
        outbox_dir=directory / "outbox",
        recordings_dir=directory / "recordings",
        asr_engine="deepgram",  # no engine is used; this one starts without a model
        deepgram_api_key="dg-test-not-used",
    )


@contextlib.asynccontextmanager
async def built_services(database_url: str, directory: Path) -> AsyncIterator[Services]:
    """The gateway's services (`service_settings`) on `database_url`, migrated first."""
    await upgrade(database_url)
    async with contextlib.AsyncExitStack() as stack:
        yield await build_services(service_settings(database_url, directory), stack)
