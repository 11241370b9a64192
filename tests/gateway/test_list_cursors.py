"""A meetings-list cursor is its tenant's: another tenant's, or one of an earlier release tied to
no tenant, is refused."""

from __future__ import annotations

from pathlib import Path

from gateway.tokens import mint_token
from tests.gateway.in_process import gateway_app


async def test_a_cursor_tied_to_no_tenant_is_refused(tmp_path: Path) -> None:
    """An earlier release's cursor (no tenant in it) let any tenant page on below another
    tenant's meeting, for as long as cursors live: they never expire."""
    async with gateway_app(tmp_path) as (app, client, private):
        services = app.state.services
        token = mint_token(private.read_bytes(), tenant="t2", user="u", roles=["viewer"])
        headers = {"Authorization": f"Bearer {token}"}
        earlier = await services.cursors.seal(
            "meetings", {"c": "2026-12-07T10:00:00+00:00", "m": "secret"}
        )
        answer = await client.get("/api/v1/meetings", params={"cursor": earlier}, headers=headers)
        assert answer.status_code == 400, answer.text
        assert "earlier release" in answer.json()["error"]["message"]
