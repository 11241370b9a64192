"""Searches per tenant (SEARCHES_PER_TENANT): a search reads the index every tenant's finals
share, so one tenant's many at once are refused (429) rather than slowing every other tenant."""

from __future__ import annotations

from pathlib import Path

import httpx

from gateway.app import create_app
from gateway.config import Settings
from gateway.tokens import generate_keypair, mint_token


async def test_a_tenant_at_its_searches_gets_429_and_others_are_served(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path)
    settings = Settings(
        jwt_public_key_path=public,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        local_engine_workers=1,
        searches_per_tenant=1,
    )

    def viewer(tenant: str) -> dict[str, str]:
        token = mint_token(private.read_bytes(), tenant=tenant, user="u", roles=["viewer"])
        return {"Authorization": f"Bearer {token}"}

    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
    ):
        searches = app.state.services.searches
        assert searches.take("acme", 1)  # a search of acme's running
        busy = await client.get("/api/v1/search", params={"q": "budget"}, headers=viewer("acme"))
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert "SEARCHES_PER_TENANT" in busy.json()["error"]["message"]
        other = await client.get("/api/v1/search", params={"q": "budget"}, headers=viewer("glob"))
        assert other.status_code == 200
        searches.give_back("acme")
        again = await client.get("/api/v1/search", params={"q": "budget"}, headers=viewer("acme"))
        assert again.status_code == 200
        assert searches.held("acme") == searches.held("glob") == 0  # every search gave it back
