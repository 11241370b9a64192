"""Post-meeting notes through real gateways, over SQLite and PostgreSQL: made once a meeting of
real (synthesised) speech ends and once a recording job succeeds, stored, announced to viewers
(`notes.ready` status) and to webhooks, regenerated on request; and with the `llm` backend
through a real llama.cpp server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.client.ingest import stream_pcm
from gateway.client.urls import ingest_url
from store.migrate import upgrade
from tests.e2e.harness import Gateway, KeyPair
from tests.e2e.speech import Watcher, watch
from tests.e2e.test_recordings import upload
from tests.e2e.test_webhooks import delete, register
from tests.e2e.webhook_receiver import Receiver
from tests.files.media import encode
from tests.insights.llama_server import llama_server
from tests.synth import espeak_pcm
from tests.util import wait_until

DEADLINE_S = 180.0
DECISION = "We decided to move the product launch to Friday."


def notes_of(gw: Gateway, token: str, meeting: str) -> dict[str, Any]:
    response = gw.get(f"/api/v1/meetings/{meeting}/notes", token)
    assert response.status_code == 200, response.text
    return response.json()


def ready_notes(gw: Gateway, token: str, meeting: str, after: str | None = None) -> dict[str, Any]:
    """The stored notes, once ready (and generated after `after`, if given)."""

    def ready() -> dict[str, Any] | None:
        body = notes_of(gw, token, meeting)
        fresh = after is None or (body["generated_at"] or "") > after
        return body if body["state"] == "ready" and fresh else None

    return wait_until(ready, "notes not ready", DEADLINE_S)


def upload_decision(gw: Gateway, token: str, meeting: str, tmp_path: Path) -> None:
    """A recording of DECISION (espeak-ng), uploaded as FLAC: a job is queued."""
    pcm = np.frombuffer(espeak_pcm(DECISION), dtype="<i2").astype(np.float32) / 32768
    job = upload(gw, token, meeting, encode(pcm, tmp_path / "decision.flac", "flac"))
    assert job.status_code == 202, job.text


def _notes_ready(watcher: Watcher) -> list[dict[str, Any]]:
    return [m for m in watcher.of_type("status") if m.get("event") == "notes.ready"]


@pytest.mark.timeout(DEADLINE_S * 4)
async def test_notes_when_a_meeting_ends_announced_and_regenerated(
    database_url: str,
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    receiver: Receiver,
    meeting: str,
) -> None:
    await upgrade(database_url)
    gw = start_gateway(database_url, MEETING_IDLE_S="1", WEBHOOKS_ALLOW_PRIVATE="true")
    admin, ingest = keypair.token(roles=["admin"]), keypair.token(roles=["ingest"])
    viewer = keypair.token(roles=["viewer"])
    endpoint = register(gw, admin, receiver.url, events=["notes.ready"]).json()
    every = register(gw, admin, f"{receiver.url}&every=1").json()
    assert "notes.ready" in every["events"]  # by default
    assert delete(gw, f"/api/v1/webhooks/{every['id']}", admin).status_code == 204
    assert gw.get(f"/api/v1/meetings/{meeting}/notes", viewer).status_code == 404  # no meeting

    watcher = await watch(gw.subscribe_url(meeting, viewer))
    try:
        summary = await stream_pcm(
            ingest_url(gw.http, meeting),
            ingest,
            espeak_pcm(DECISION),
            sample_rate=16000,
            channels=1,
            speed=4.0,
            close_timeout_s=DEADLINE_S,
        )
        assert summary.close_code == 1000 and summary.finals >= 1
        # No stream for MEETING_IDLE_S: the meeting ends, its notes are made and announced.
        await watcher.wait_for(lambda w: len(_notes_ready(w)) == 1, timeout=DEADLINE_S)
        notes = ready_notes(gw, viewer, meeting)
        assert notes["backend"] == "rules" and notes["finals"] == summary.finals
        assert len(notes["decisions"]) == 1 and "decided" in notes["decisions"][0].lower()
        assert _notes_ready(watcher)[0]["finals"] == summary.finals
        events = await asyncio.to_thread(
            wait_until, lambda: receiver.events(endpoint["secret"]), "no notes.ready webhook"
        )
        assert [e["type"] for e in events] == ["notes.ready"]
        assert events[0]["data"] == {
            "tenant_id": "acme",
            "meeting_id": meeting,
            "backend": "rules",
            "finals": summary.finals,
        }

        # Regenerated on request (an editor or the ingest client may ask; a viewer may not).
        refused = gw.post(f"/api/v1/meetings/{meeting}/notes", viewer)
        assert refused.status_code == 403
        assert "'editor' or 'ingest'" in refused.json()["error"]["message"]
        asked = gw.post(f"/api/v1/meetings/{meeting}/notes", ingest)
        assert asked.status_code == 202 and asked.json()["state"] == "pending"
        again = await asyncio.to_thread(ready_notes, gw, viewer, meeting, notes["generated_at"])
        assert again["decisions"] == notes["decisions"]
        await watcher.wait_for(lambda w: len(_notes_ready(w)) == 2, timeout=DEADLINE_S)
    finally:
        await watcher.close()


@pytest.mark.timeout(DEADLINE_S * 4)
async def test_notes_after_a_recording_job(
    database_url: str,
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
) -> None:
    await upgrade(database_url)
    gw = start_gateway(database_url, RECORDINGS_DIR=str(tmp_path / "recordings"))
    ingest, viewer = keypair.token(roles=["ingest"]), keypair.token(roles=["viewer"])
    upload_decision(gw, ingest, meeting, tmp_path)
    # Before the job ends: a preview from the rules backend, nothing stored yet.
    preview = notes_of(gw, viewer, meeting)
    assert preview["state"] in ("none", "pending", "ready") and preview["backend"] == "rules"
    notes = await asyncio.to_thread(ready_notes, gw, viewer, meeting)
    assert notes["backend"] == "rules" and notes["finals"] >= 1
    # One shape whatever the state: `error` is there, null unless the notes failed.
    assert notes.keys() == preview.keys() and notes["error"] is None
    assert len(notes["decisions"]) == 1 and "decided" in notes["decisions"][0].lower()


@pytest.mark.timeout(DEADLINE_S * 4)
async def test_notes_and_super_tips_from_an_llm_backend(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    """INSIGHTS_BACKEND=llm against a real llama.cpp server. A stream with `ai_mode: super` has
    its live tips asked of the LLM (a `standard` one of the rules); the notes are the model's (a
    135M model: their content is not checked), or, if its answer does not fit the schema, the
    request ends `failed` after its attempts with the reason, never with made-up notes."""
    with llama_server() as url:
        gw = start_gateway(
            None,
            RECORDINGS_DIR=str(tmp_path / "recordings"),
            INSIGHTS_BACKEND="llm",
            INSIGHTS_LLM_URL=url,
            INSIGHTS_LLM_MODEL="smollm2",
            INSIGHTS_MIN_INTERVAL_S="0",
            NOTES_MAX_ATTEMPTS="1",
        )
        ingest, viewer = keypair.token(roles=["ingest"]), keypair.token(roles=["viewer"])
        summary = await stream_pcm(
            ingest_url(gw.http, meeting),
            ingest,
            espeak_pcm(DECISION),
            sample_rate=16000,
            channels=1,
            speed=4.0,
            ai_mode="super",
            close_timeout_s=DEADLINE_S,
        )
        assert summary.close_code == 1000 and summary.finals

        def llm_tip_calls() -> bool:
            metrics = gw.get("/metrics").text
            return 'insights_calls_total{backend="llm",purpose="tips"' in metrics

        await asyncio.to_thread(wait_until, llm_tip_calls, "no tip asked of the llm", DEADLINE_S)
        assert 'backend="rules",purpose="tips"' not in gw.get("/metrics").text

        upload_decision(gw, ingest, meeting, tmp_path)

        def settled() -> dict[str, Any] | None:
            body = notes_of(gw, viewer, meeting)
            return body if body["state"] in ("ready", "failed") else None

        notes = await asyncio.to_thread(wait_until, settled, "notes not settled", DEADLINE_S)
        if notes["state"] == "ready":
            assert notes["backend"] == "llm" and isinstance(notes["summary"], str)
        else:
            assert "did not fit" in notes["error"]
