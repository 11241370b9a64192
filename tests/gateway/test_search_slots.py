"""Searches per tenant (SEARCHES_PER_TENANT): a search reads the index every tenant's finals
share, so one tenant's many at once are refused (429) rather than slowing every other tenant."""

from __future__ import annotations

from pathlib import Path

from gateway.tokens import mint_token
from tests.gateway.in_process import gateway_app


async def test_a_tenant_at_its_searches_gets_429_and_others_are_served(tmp_path: Path) -> None:
    async with gateway_app(tmp_path, searches_per_tenant=1) as (app, client, private):

        async def search(tenant: str) -> object:
            token = mint_token(private.read_bytes(), tenant=tenant, user="u", roles=["viewer"])
            headers = {"Authorization": f"Bearer {token}"}
            return await client.get("/api/v1/search", params={"q": "budget"}, headers=headers)

        searches = app.state.services.searches
        assert searches.take("acme", 1)  # a search of acme's running
        busy = await search("acme")
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert "SEARCHES_PER_TENANT" in busy.json()["error"]["message"]
        assert (await search("glob")).status_code == 200
        searches.give_back("acme")
        assert (await search("acme")).status_code == 200
        assert searches.held("acme") == searches.held("glob") == 0  # every search gave it back
