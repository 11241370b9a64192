"""A meeting's notes as `GET .../notes` answers them while they are retried."""

from __future__ import annotations

from pathlib import Path

from gateway.tokens import mint_token
from store.notes import PENDING, NotesStore
from tests.gateway.in_process import gateway_app


async def test_notes_being_retried_answer_no_error(tmp_path: Path) -> None:
    """docs/protocol.md: `error` null unless `state` is `failed`; a request between two attempts
    answered `pending` with the last attempt's error."""
    async with gateway_app(tmp_path, notes_poll_s=3600) as (app, client, private):
        services = app.state.services
        await services.store.claim_meeting("acme", "m1")
        notes = NotesStore(services.store.engine)
        await notes.request("acme", "m1", "request")
        claim = await notes.claim("test", lease_s=60)
        assert claim is not None
        await notes.attempt_failed(
            claim, "test", "InsightsUnavailable: x", retry_in_s=600, max_attempts=3
        )
        token = mint_token(private.read_bytes(), tenant="acme", user="u", roles=["viewer"])
        answer = await client.get(
            "/api/v1/meetings/m1/notes", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200, answer.text
        assert (answer.json()["state"], answer.json()["error"]) == (PENDING, None)
