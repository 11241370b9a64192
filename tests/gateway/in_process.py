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
from gateway.tokens import generate_keypair


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
