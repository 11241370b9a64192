"""What ops read: per-meeting and per-replica stats, and their role checks."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from websockets.asyncio.client import connect

from tests.e2e.harness import Gateway, KeyPair, expect_close, handshake
from tests.e2e.speech import watch
from tests.openapi_check import assert_answer_matches
from tests.util import eventually

FRAME_100MS_16K = b"\x00\x00" * 1600


async def test_meeting_and_replica_stats_follow_a_live_stream(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    ops = keypair.token(roles=["ops"])
    viewer = await watch(gateway.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    # A stream that already ended (here by a protocol error) is not listed below.
    async with connect(gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
        await ws.send(handshake(source="system", sample_rate=16000))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(FRAME_100MS_16K)
        await ws.send(json.dumps({"type": "rewind"}))
        assert (await expect_close(ws))[0] == 4400

    async with connect(gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
        await ws.send(handshake(source="mic", sample_rate=16000))
        ready = json.loads(await ws.recv())
        for _ in range(5):
            await ws.send(FRAME_100MS_16K)
        deadline = time.monotonic() + 10
        while True:  # the gateway counts frames as it reads them
            body = gateway.get(f"/api/v1/ws/meetings/{meeting}/stats", ops).json()
            if body["ingest_streams"] and body["ingest_streams"][0]["frames"] == 5:
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.02)
        spec = gateway.get("/api/v1/openapi.json").json()  # what a generated client reads
        assert_answer_matches(spec, "get", "/api/v1/ws/meetings/{meeting_id}/stats", body)
        (stream,) = body["ingest_streams"]  # the ended system stream is not listed
        assert stream["stream_id"] == ready["stream_id"]
        assert (stream["source"], stream["engine"], stream["frames"]) == ("mic", "local", 5)
        assert stream["audio_seconds"] == 0.5 and stream["sample_rate"] == 16000
        assert body["subscribers"] == body["local_subscribers"] == 1
        replica = gateway.get("/api/v1/ws/stats", ops).json()
        assert_answer_matches(spec, "get", "/api/v1/ws/stats", replica)
        assert replica["connections"] == {"ingest": 1, "viewer": 1}
        assert replica["ingest_streams"] == 1 and replica["uptime_s"] > 0
        await ws.send(json.dumps({"type": "close"}))
        assert (await expect_close(ws))[0] == 1000
    await viewer.close()
    after = gateway.get(f"/api/v1/ws/meetings/{meeting}/stats", ops).json()
    assert after["ingest_streams"] == [] and after["subscribers"] == 0
    assert after["final_count"] == after["last_segment_no"] == 0  # silence: no finals
    assert_answer_matches(spec, "get", "/api/v1/ws/meetings/{meeting_id}/stats", after)
    assert gateway.get("/api/v1/ws/stats", ops).json()["closes_by_code"]["4400"] >= 1


async def test_a_live_streams_row_is_refreshed_while_it_streams(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """The meeting's stored stream row (what other replicas and the meetings API read) takes
    the stream's counters within a refresh round (every 5 s), before the stream ends."""
    viewer = keypair.token(roles=["viewer"])
    async with connect(gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
        await ws.send(handshake(source="mic", sample_rate=16000))
        assert json.loads(await ws.recv())["type"] == "ready"
        for _ in range(5):
            await ws.send(FRAME_100MS_16K)
        seen: dict = {}

        async def refreshed() -> bool:
            nonlocal seen
            async with httpx.AsyncClient(verify=gateway.verify) as client:
                seen = (
                    await client.get(
                        f"{gateway.http}/api/v1/meetings/{meeting}",
                        headers={"Authorization": f"Bearer {viewer}"},
                    )
                ).json()
            return (seen.get("streams") or [{}])[0].get("audio_seconds") == 0.5

        await eventually(refreshed, interval=0.1, what="the stream's row refreshed")
        assert seen["live"] is True and seen["streams"][0]["ended_at"] is None
        await ws.send(json.dumps({"type": "close"}))
        assert (await expect_close(ws))[0] == 1000


def test_stats_need_the_ops_role(gateway: Gateway, keypair: KeyPair, meeting: str) -> None:
    viewer = keypair.token(roles=["viewer", "ingest"])
    assert gateway.get("/api/v1/ws/stats", viewer).status_code == 403
    assert gateway.get(f"/api/v1/ws/meetings/{meeting}/stats", viewer).status_code == 403
    assert gateway.get("/api/v1/ws/stats").status_code == 401
    assert gateway.get("/healthz").json() == {"status": "ok"}


async def test_closes_count_the_peers_code_and_codes_of_its_own_as_other(
    start_gateway, keypair: KeyPair, meeting: str
) -> None:
    from tests.util import eventually

    gw = start_gateway()
    ingest, ops = keypair.token(roles=["ingest"]), keypair.token(roles=["ops"])
    async with connect(gw.ingest_url(meeting, ingest)) as ws:  # invalid UTF-8 before the handshake
        await ws.send(b"\xff\xfe", text=True)
        assert (await expect_close(ws))[0] == 1007
    async with connect(gw.ingest_url(meeting, ingest)) as ws:  # gone before its handshake
        await ws.close(1001)
    async with connect(gw.ingest_url(meeting, ingest)) as ws:  # a code of the client's own
        await ws.send(handshake())
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.close(4321)

    def closes() -> dict:
        return gw.get("/api/v1/ws/stats", ops).json()["closes_by_code"]

    await eventually(lambda: closes() == {"1001": 1, "1007": 1, "other": 1}, what=str(closes()))
    metrics = gw.get("/metrics").text
    assert 'code="4321"' not in metrics and 'code="other"' in metrics


async def test_a_refusal_of_a_verified_token_counts_for_its_tenant(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """A signed token for the wrong role or meeting is refused 4403 before the connection opens;
    its tenant's ops still see the close (it counted for no tenant)."""
    tenant = f"t{meeting[-8:]}"
    wrong_meeting = keypair.token(tenant, roles=["viewer"], meetings=["another"])
    async with connect(gateway.subscribe_url(meeting, wrong_meeting)) as ws:
        assert (await expect_close(ws))[0] == 4403
    async with connect(gateway.ingest_url(meeting, keypair.token(tenant, roles=["viewer"]))) as ws:
        assert (await expect_close(ws))[0] == 4403
    ops = keypair.token(tenant, roles=["ops"])

    def closes() -> dict[str, int]:
        return gateway.get("/api/v1/ws/stats", ops).json()["closes_by_code"]

    await eventually(lambda: closes() == {"4403": 2}, within=30, what="both refusals counted")
    assert gateway.get("/api/v1/ws/stats", ops).json()["connections_total"] == {}  # never opened
