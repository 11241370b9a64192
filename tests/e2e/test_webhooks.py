"""Webhooks through a real gateway, over SQLite and PostgreSQL: endpoints registered by an admin,
meeting.started / meeting.ended from a real ingest stream, recording.succeeded / .failed from real
uploads, meeting.deleted; every delivery verified with the Standard Webhooks reference verifier;
retried across a receiver outage and a gateway restart; private addresses refused."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from store.migrate import upgrade
from tests.e2e.harness import Gateway, KeyPair, handshake
from tests.e2e.test_input_bounds import log_records
from tests.e2e.test_recordings import upload
from tests.e2e.webhook_receiver import Receiver
from tests.files.media import encode
from tests.openapi_check import assert_answer_matches
from tests.util import wait_until

DEADLINE_S = 120.0
FRAME_100MS_16K = b"\x00\x00" * 1600


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(gw: Gateway, token: str, url: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.http}/api/v1/webhooks",
        json={"url": url, **body},
        headers=_auth(token),
        timeout=30,
        verify=gw.verify,
    )


def rotate(gw: Gateway, token: str, endpoint_id: str, **params: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.http}/api/v1/webhooks/{endpoint_id}/secret",
        params=params,
        headers=_auth(token),
        timeout=30,
        verify=gw.verify,
    )


def delete(gw: Gateway, path: str, token: str | None = None) -> httpx.Response:
    return httpx.delete(
        f"{gw.http}{path}", headers=_auth(token) if token else {}, timeout=30, verify=gw.verify
    )


def deliveries(gw: Gateway, token: str, endpoint_id: str) -> list[dict[str, Any]]:
    response = gw.get(f"/api/v1/webhooks/{endpoint_id}/deliveries", token)
    assert response.status_code == 200, response.text
    return response.json()["deliveries"]


async def stream_then_delete(gw: Gateway, keypair: KeyPair, meeting: str) -> None:
    """A meeting that existed (one ingest stream opened it), deleted: one meeting.deleted."""
    async with connect(gw.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
        await ws.send(handshake())
        assert json.loads(await ws.recv())["type"] == "ready"
    assert delete(gw, f"/api/v1/meetings/{meeting}", keypair.token(roles=["admin"])).is_success


def attempted(gw: Gateway, token: str, endpoint_id: str, times: int) -> dict[str, Any]:
    """The endpoint's latest delivery, once it has been attempted `times` times."""

    def latest() -> dict[str, Any] | None:
        log = deliveries(gw, token, endpoint_id)
        return log[0] if log and log[0]["attempts"] >= times else None

    return wait_until(latest, f"no delivery attempted {times} times")


@pytest.mark.timeout(DEADLINE_S * 4)
async def test_lifecycle_recording_and_deletion_events_are_signed_and_delivered(
    database_url: str,
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    receiver: Receiver,
    meeting: str,
    tmp_path: Path,
) -> None:
    await upgrade(database_url)
    gw = start_gateway(
        database_url,
        WEBHOOKS_ALLOW_PRIVATE="true",  # the receiver is on loopback
        MEETING_IDLE_S="1",
        RECORDINGS_DIR=str(tmp_path / "recordings"),
    )
    admin, ingest = keypair.token(roles=["admin"]), keypair.token(roles=["ingest"])
    events = [
        "meeting.started",
        "meeting.ended",
        "recording.succeeded",
        "recording.failed",
        "meeting.deleted",
    ]  # and notes.ready, by default (tests/e2e/test_notes.py)
    created = register(gw, admin, receiver.url, description="our CRM", events=events)
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["events"] == events
    secret = endpoint["secret"]
    assert "secret" not in gw.get(f"/api/v1/webhooks/{endpoint['id']}", admin).json()
    # The same URL spelled otherwise is the same endpoint.
    respelled = receiver.url.replace("http://127.0.0.1:", "HTTP://127.0.0.1:0")
    again = register(gw, admin, respelled, events=events)
    assert again.status_code == 409 and endpoint["id"] in again.json()["error"]["message"]

    # A live stream: started while it runs, ended a second after it closes.
    async with connect(gw.ingest_url(meeting, ingest)) as ws:
        await ws.send(handshake())
        assert json.loads(await ws.recv())["type"] == "ready"
        for _ in range(5):
            await ws.send(FRAME_100MS_16K)
        # (In a thread: the client keeps answering the gateway's pings meanwhile.)
        await asyncio.to_thread(wait_until, lambda: receiver.events(secret), "no meeting.started")
    wait_until(lambda: len(receiver.events(secret)) >= 2, "no meeting.ended")

    # Recordings: silence succeeds (no finals); a file cut mid-way fails.
    quiet = encode(np.zeros(16000 * 4, np.float32), tmp_path / "quiet.flac", "flac")
    ok = upload(gw, ingest, meeting, quiet).json()
    whole = encode(np.zeros(16000 * 20, np.float32), tmp_path / "whole.mp3", "mp3")
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    bad = upload(gw, ingest, meeting, cut).json()
    wait_until(lambda: len(receiver.events(secret)) >= 4, "no recording events")

    # Deletion.
    deleted = delete(gw, f"/api/v1/meetings/{meeting}", admin)
    assert deleted.status_code == 204
    wait_until(lambda: len(receiver.events(secret)) >= 5, "no meeting.deleted")

    events = receiver.events(secret)  # every one verified with the reference algorithm
    by_type = {event["type"]: event["data"] for event in events}
    assert [e["type"] for e in events[:2]] == ["meeting.started", "meeting.ended"]
    assert set(by_type) == set(endpoint["events"]) and len(events) == 5
    assert all(d["meeting_id"] == meeting and d["tenant_id"] == "acme" for d in by_type.values())
    assert by_type["recording.succeeded"]["job_id"] == ok["id"]
    assert by_type["recording.failed"]["job_id"] == bad["id"]
    assert by_type["recording.failed"]["status"] == "failed"
    # Whose job failed, in the gateway's own log too (the on-call tester: job id only).
    (ended,) = [
        r
        for r in log_records(gw)
        if r.get("event") == "recording job ended" and r.get("status") == "failed"
    ]
    assert (ended["tenant"], ended["meeting"], ended["job_id"]) == ("acme", meeting, bad["id"])
    # meeting.ended says when the stream ended, before the round that saw it idle.
    ended_at = datetime.fromisoformat(by_type["meeting.ended"]["ended_at"])
    assert ended_at < datetime.fromisoformat(events[1]["timestamp"])
    headers = [h for h, _ in receiver.received]
    assert len({h["webhook-id"] for h in headers}) == 5
    assert all(h["host"] == f"127.0.0.1:{receiver.port}" for h in headers)
    assert all(h["content-type"] == "application/json" for h in headers)

    # The receiver answers before the worker records the answer: wait for the record.
    def all_delivered() -> bool:
        log = deliveries(gw, admin, endpoint["id"])
        return len(log) == 5 and {d["status"] for d in log} == {"delivered"}

    wait_until(all_delivered, "deliveries not all recorded as delivered")
    log = deliveries(gw, admin, endpoint["id"])
    assert all(d["attempts"] == 1 and d["last_status_code"] == 204 for d in log)
    # The answers fit the served OpenAPI document, as a generated client reads them.
    spec = gw.get("/api/v1/openapi.json").json()
    assert_answer_matches(spec, "POST", "/api/v1/webhooks", endpoint, 201)
    assert_answer_matches(spec, "GET", "/api/v1/webhooks", gw.get("/api/v1/webhooks", admin).json())
    one = gw.get(f"/api/v1/webhooks/{endpoint['id']}", admin).json()
    assert_answer_matches(spec, "GET", "/api/v1/webhooks/{endpoint_id}", one)
    page = gw.get(f"/api/v1/webhooks/{endpoint['id']}/deliveries", admin).json()
    assert_answer_matches(spec, "GET", "/api/v1/webhooks/{endpoint_id}/deliveries", page)
    rotated = rotate(gw, admin, endpoint["id"])
    assert_answer_matches(spec, "POST", "/api/v1/webhooks/{endpoint_id}/secret", rotated.json())
    metrics = gw.get("/metrics").text
    assert (
        'meeting_gateway_webhook_attempts_total{event="meeting.ended",result="delivered"} 1.0'
        in (metrics)
    )


async def test_an_attempt_under_way_at_a_graceful_stop_is_finished_not_repeated(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, receiver: Receiver, meeting: str
) -> None:
    import threading

    # A tenth of DRAIN_TIMEOUT_S (10 s) for the attempt to be answered during the stop.
    gw = start_gateway(WEBHOOKS_ALLOW_PRIVATE="true", DRAIN_TIMEOUT_S="100")
    admin = keypair.token(roles=["admin"])
    endpoint = register(gw, admin, receiver.url, events=["meeting.deleted"]).json()
    receiver.answering.clear()
    await stream_then_delete(gw, keypair, meeting)
    wait_until(lambda: receiver.received, "the attempt under way")
    stopping = threading.Thread(target=gw.stop)
    stopping.start()
    try:
        wait_until(lambda: "webhook worker stopping" in gw.logs(), "the worker stopping")
    finally:
        receiver.answering.set()  # the receiver answers while the gateway stops
        stopping.join()
    gw.start()
    (delivery,) = deliveries(gw, admin, endpoint["id"])
    assert delivery["status"] == "delivered", delivery
    assert len(receiver.received) == 1


async def test_an_attempt_still_unanswered_at_a_stop_is_cut_and_its_lease_given_back(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, receiver: Receiver, meeting: str
) -> None:
    """The stop waits for an attempt only its share of DRAIN_TIMEOUT_S (waiting out the
    attempt's timeout overran the pod's grace period), counts no attempt for it, and gives its
    lease back: claimed at once after the restart, not once the lease lapses."""
    gw = start_gateway(WEBHOOKS_ALLOW_PRIVATE="true", WEBHOOKS_TIMEOUT_S="30")
    admin = keypair.token(roles=["admin"])
    endpoint = register(gw, admin, receiver.url, events=["meeting.deleted"]).json()
    receiver.answering.clear()
    await stream_then_delete(gw, keypair, meeting)
    wait_until(lambda: receiver.received, "the attempt under way")
    gw.stop()  # the receiver never answers this attempt
    assert "webhook attempts cut short by the stop" in gw.logs()
    receiver.answering.set()
    gw.start()
    # Claimed at once: well before its lease (WEBHOOKS_TIMEOUT_S + 30 s) would have lapsed.
    wait_until(lambda: len(receiver.received) == 2, "sent again after the restart", within=20)

    def delivered() -> dict | None:  # its answer recorded (the receiver saw the request first)
        (delivery,) = deliveries(gw, admin, endpoint["id"])
        return delivery if delivery["status"] == "delivered" else None

    delivery = wait_until(delivered, "the delivery recorded")
    assert delivery["attempts"] == 1, delivery


async def test_the_delivery_log_keeps_settled_deliveries_for_its_retention(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, receiver: Receiver, meeting: str
) -> None:
    gw = start_gateway(WEBHOOKS_ALLOW_PRIVATE="true")
    admin = keypair.token(roles=["admin"])
    endpoint = register(gw, admin, receiver.url, events=["meeting.deleted"]).json()
    await stream_then_delete(gw, keypair, meeting)
    assert attempted(gw, admin, endpoint["id"], 1)["status"] == "delivered"
    gw.stop()
    # Restarted with a retention of 9 ms: the log is pruned at start (then hourly).
    gw.env["WEBHOOKS_LOG_RETENTION_DAYS"] = "0.0000001"
    gw.start()
    wait_until(lambda: deliveries(gw, admin, endpoint["id"]) == [], "the settled delivery pruned")
    assert "webhook log pruned" in gw.logs()


async def test_a_tenants_slow_receivers_do_not_hold_back_anothers_deliveries(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, receiver: Receiver
) -> None:
    """Twelve endpoints of one tenant that do not answer (each attempt may take the timeout)
    hold at most that tenant's share of the attempts under way: another tenant's delivery goes
    out meanwhile."""
    import uuid

    gw = start_gateway(WEBHOOKS_ALLOW_PRIVATE="true", WEBHOOKS_TIMEOUT_S="60")
    slow = Receiver().start()
    slow.answering.clear()
    try:
        slow_admin = keypair.token(tenant="slow", roles=["admin"])
        for n in range(12):  # twelve urls (one url is registered once)
            url = f"{slow.url}&n={n}"
            assert register(gw, slow_admin, url, events=["meeting.deleted"]).is_success
        admin = keypair.token(roles=["admin"])
        endpoint = register(gw, admin, receiver.url, events=["meeting.deleted"]).json()
        slow_meeting = f"m-{uuid.uuid4().hex[:10]}"
        async with connect(
            gw.ingest_url(slow_meeting, keypair.token(tenant="slow", roles=["ingest"]))
        ) as ws:
            await ws.send(handshake())
            assert json.loads(await ws.recv())["type"] == "ready"
        assert delete(gw, f"/api/v1/meetings/{slow_meeting}", slow_admin).is_success
        wait_until(lambda: len(slow.received) >= 8, "the slow tenant's attempts under way")
        await stream_then_delete(gw, keypair, f"m-{uuid.uuid4().hex[:10]}")
        wait_until(lambda: receiver.received, "acme's delivery while the slow ones hang", 40)
        assert len(slow.received) < 12  # the slow tenant's share: the rest wait their turn
        assert deliveries(gw, admin, endpoint["id"])[0]["status"] in ("pending", "delivered")
    finally:
        slow.answering.set()
        slow.stop()


@pytest.mark.timeout(DEADLINE_S * 4)
async def test_retried_across_a_receiver_outage_and_a_gateway_restart(
    database_url: str,
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
) -> None:
    await upgrade(database_url)
    env = {"WEBHOOKS_ALLOW_PRIVATE": "true", "WEBHOOKS_RETRY_BASE_S": "0.2"}
    env["WEBHOOKS_RETRY_MAX_S"] = "1"
    gw = start_gateway(database_url, **env)
    admin = keypair.token(roles=["admin"])
    receiver = Receiver()  # not started: nothing listens on its port
    endpoint = register(gw, admin, receiver.url, events=["meeting.deleted"]).json()
    await stream_then_delete(gw, keypair, meeting)
    pending = attempted(gw, admin, endpoint["id"], 2)
    assert pending["status"] == "pending" and "ConnectError" in pending["last_error"]

    # The receiver comes back answering 503: still retried.
    receiver.status = 503
    receiver.start()
    try:
        wait_until(lambda: len(receiver.received) >= 2, "no attempts at the 503 receiver")
        # The gateway restarts (a deploy) while the delivery is pending: a new process delivers
        # it once the receiver answers 2xx.
        gw.stop()
        receiver.status = 200
        gw.start()
        wait_until(
            lambda: deliveries(gw, admin, endpoint["id"])[0]["status"] == "delivered",
            "not delivered after the restart",
        )
        (delivered,) = deliveries(gw, admin, endpoint["id"])
        assert delivered["last_status_code"] == 200 and delivered["last_error"] is None
        ids = {headers["webhook-id"] for headers, _ in receiver.received}
        assert ids == {delivered["id"]}  # every attempt is the same message
        for event in receiver.events(endpoint["secret"]):
            assert event["type"] == "meeting.deleted" and event["data"]["meeting_id"] == meeting
    finally:
        receiver.stop()


async def test_private_addresses_admin_role_and_tenant_isolation(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    receiver: Receiver,
    meeting: str,
    tmp_path: Path,
) -> None:
    # An operator's file endpoint whose name resolves to this machine (loopback, or a private
    # address): refused at delivery, never reached (a literal address or `localhost` there
    # stops the start: tests/webhooks/test_pure.py).
    hooks_file = tmp_path / "webhooks.json"
    file_secret = "whsec_" + "A" * 43 + "="
    file_url = f"http://{socket.gethostname()}:{receiver.port}/"
    hooks_file.write_text(json.dumps([{"tenant": "acme", "url": file_url, "secret": file_secret}]))
    gw = start_gateway(WEBHOOKS_FILE=str(hooks_file), WEBHOOKS_RETRY_BASE_S="0.2")
    admin = keypair.token(roles=["admin"])
    for url in (
        receiver.url,
        f"http://localhost:{receiver.port}/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.8/hook",
    ):
        refused = register(gw, admin, url)
        assert refused.status_code == 400, url
        message = refused.json()["error"]["message"]
        assert "public addresses only" in message and "WEBHOOKS_ALLOW_PRIVATE" in message
    bad = register(gw, admin, "ftp://hooks.example/x")
    assert bad.status_code == 400 and "http://" in bad.json()["error"]["message"]
    bad = register(gw, admin, "https://hooks.example/x", events=["meeting.exploded"])
    assert bad.status_code == 400 and "events must be" in bad.json()["error"]["message"]
    bad = register(gw, admin, "https://hooks.example/x", description="x" * 201)
    assert bad.json()["error"]["message"].endswith("at most 200 characters"), bad.text
    # No control characters, no bidi control left open (as edits); line breaks are spaces.
    for description, named in [("a\u0007b", "control"), ("\u202eb", "bidi")]:
        bad = register(gw, admin, "https://hooks.example/x", description=description)
        assert bad.status_code == 400 and named in bad.json()["error"]["message"], bad.text
    # A closed pair is text: the description passes (the address, not resolvable, does not).
    fine = register(gw, admin, "https://hooks.example/ok", description="\u2068Ay\u015fe\u2069")
    assert "description" not in fine.json()["error"]["message"], fine.text

    (file_endpoint,) = gw.get("/api/v1/webhooks", admin).json()["webhooks"]
    assert file_endpoint["source"] == "file" and "secret" not in file_endpoint
    refusal = delete(gw, f"/api/v1/webhooks/{file_endpoint['id']}", admin)
    assert refusal.status_code == 409
    rotation = rotate(gw, admin, file_endpoint["id"])  # its secret is the file's
    assert rotation.status_code == 409 and "WEBHOOKS_FILE" in rotation.json()["error"]["message"]
    await stream_then_delete(gw, keypair, meeting)
    attempt = attempted(gw, admin, file_endpoint["id"], 1)
    assert attempt["event"] == "meeting.deleted"
    assert "public addresses only" in attempt["last_error"] and attempt["status"] == "pending"
    assert receiver.received == []

    # Roles and tenants: only an admin of the endpoint's tenant sees or touches it.
    path = f"/api/v1/webhooks/{file_endpoint['id']}"
    for role in ("viewer", "ops", "ingest", "editor"):
        assert gw.get("/api/v1/webhooks", keypair.token(roles=[role])).status_code == 403
    assert gw.get("/api/v1/webhooks").status_code == 401
    other = keypair.token(tenant="other", roles=["admin"])
    assert gw.get("/api/v1/webhooks", other).json() == {"webhooks": []}
    assert gw.get(path, other).status_code == 404
    assert gw.get(path + "/deliveries", other).status_code == 404
    assert delete(gw, path, other).status_code == 404
    assert rotate(gw, other, file_endpoint["id"]).status_code == 404
    assert rotate(gw, keypair.token(roles=["viewer"]), file_endpoint["id"]).status_code == 403
    assert gw.get(path, admin).status_code == 200
    # A token bound to some meetings reaches no tenant-wide route (an endpoint hears them all).
    bound = keypair.token(roles=["admin", "ops"], meetings=[meeting])
    for route in ("/api/v1/webhooks", path, path + "/deliveries", "/api/v1/ws/stats"):
        refused = gw.get(route, bound)
        assert refused.status_code == 403, route
        assert "bound to meetings" in refused.json()["error"]["message"]
    assert register(gw, bound, "https://hooks.example/x").status_code == 403
    spec = gw.get("/api/v1/openapi.json").json()
    assert "/api/v1/webhooks/{endpoint_id}/deliveries" in spec["paths"]

    # WEBHOOKS_FILE unset: what it registered stays (nothing pending is dropped by a replica
    # started without it) and an admin can delete it.
    gw.stop()
    without_file = start_gateway(gw.env["DATABASE_URL"])
    assert without_file.get(path, admin).status_code == 200
    assert delete(without_file, path, admin).status_code == 204
    assert without_file.get(path, admin).status_code == 404


async def test_a_meeting_deleted_right_after_its_stream_opened_was_started_too(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, receiver: Receiver, meeting: str
) -> None:
    """Deleted before the lifecycle watch (every 5 s) looked: its receivers still learn that it
    started, not only that it was deleted."""
    gw = start_gateway(WEBHOOKS_ALLOW_PRIVATE="true")
    admin = keypair.token(roles=["admin"])
    events = ["meeting.started", "meeting.deleted"]
    assert register(gw, admin, receiver.url, events=events).status_code == 201
    await stream_then_delete(gw, keypair, meeting)

    def types() -> list[str] | None:
        got = sorted(json.loads(body)["type"] for _, body in receiver.received)
        return got if len(got) >= 2 else None

    assert wait_until(types, "both events delivered") == sorted(events)


async def test_a_rotated_secret_signs_beside_the_new_one_for_its_grace(
    database_url: str, start_gateway: Callable[..., Gateway], keypair: KeyPair
) -> None:
    """A receiver switches to the new secret without a delivery it cannot verify: during the
    grace each delivery carries the old signatures too, a retried rotation's included (the
    review: a retry retired the secret the receiver held); after a rotation with none, only
    the new."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    await upgrade(database_url)
    gw = start_gateway(database_url, WEBHOOKS_ALLOW_PRIVATE="true")
    admin = keypair.token(roles=["admin"])
    receiver = Receiver().start()
    try:
        endpoint = register(gw, admin, receiver.url, events=["meeting.deleted"]).json()
        lost = rotate(gw, admin, endpoint["id"])  # its answer lost: the client retries
        assert lost.status_code == 200, lost.text
        rotated = rotate(gw, admin, endpoint["id"])
        first = rotated.json()
        assert first["secret"].startswith("whsec_") and first["secret"] != endpoint["secret"]
        assert first["previous_secret_expires_at"]
        assert "secret" not in gw.get(f"/api/v1/webhooks/{endpoint['id']}", admin).json()

        await stream_then_delete(gw, keypair, "rotating-1")
        wait_until(lambda: len(receiver.received) == 1, "no delivery during the grace")
        headers, body = receiver.received[0]
        assert len(headers["webhook-signature"].split(" ")) == 3  # new, lost, original
        # The receiver still on the original secret, and one that took the answer it got.
        for secret in (endpoint["secret"], first["secret"]):
            assert Webhook(secret).verify(body, headers)["data"]["meeting_id"] == "rotating-1"

        again = rotate(gw, admin, endpoint["id"], grace_s=0)
        assert again.status_code == 200 and "previous_secret_expires_at" not in again.json()
        await stream_then_delete(gw, keypair, "rotating-2")
        wait_until(lambda: len(receiver.received) == 2, "no delivery after the rotation")
        headers, body = receiver.received[1]
        assert Webhook(again.json()["secret"]).verify(body, headers)
        for old in (endpoint["secret"], lost.json()["secret"], first["secret"]):
            with pytest.raises(WebhookVerificationError):
                Webhook(old).verify(body, headers)
        too_long = rotate(gw, admin, endpoint["id"], grace_s=10**7)
        assert too_long.status_code == 400 and "grace_s" in too_long.json()["error"]["message"]
    finally:
        receiver.stop()
