"""What ops get from a running gateway: Prometheus metrics that move with traffic, per-tenant
stats, and JSON logs of a whole session with no token, query string or transcript text."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import httpx
import jwt
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from gateway.client.audio import load_wav_pcm
from gateway.client.ingest import stream_pcm
from gateway.client.urls import ingest_url
from tests.e2e.harness import Gateway, KeyPair, expect_close, handshake
from tests.e2e.speech import FIXTURES, watch
from tests.util import eventually

FRAME_100MS_16K = b"\x00\x00" * 1600


def scrape(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics (parsed by prometheus-client), by name and sorted labels."""
    response = gateway.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def stream_silence(gateway: Gateway, token: str, meeting: str, frames: int) -> None:
    """One ingest stream of `frames` frames, returning once the gateway has counted its end."""
    tenant = jwt.decode(token, options={"verify_signature": False})["tenant_id"]
    ended = (
        "meeting_gateway_disconnects_total",
        (("code", "1000"), ("role", "ingest"), ("tenant", tenant)),
    )
    counted = (await asyncio.to_thread(scrape, gateway)).get(ended, 0)
    async with connect(gateway.ingest_url(meeting, token)) as ws:
        await ws.send(handshake(source="mic", sample_rate=16000))
        assert json.loads(await ws.recv())["type"] == "ready"
        for _ in range(frames):
            await ws.send(FRAME_100MS_16K)
        await ws.send(json.dumps({"type": "close"}))
        assert (await expect_close(ws))[0] == 1000
    # The close frame can reach us just before the gateway's accounting of the connection's end.
    await eventually(lambda: scrape(gateway).get(ended, 0) > counted, what="ingest end counted")


async def test_metrics_parse_and_move_with_traffic(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    before = scrape(gateway)
    local = ("meeting_gateway_engine_stream_opens_total", (("engine", "local"),))
    seconds = ("meeting_gateway_audio_seconds_total", (("engine", "local"), ("language", "en")))
    unauthorized = ("meeting_gateway_auth_failures_total", (("reason", "unauthorized"),))

    viewer = await watch(gateway.subscribe_url(meeting, keypair.token(tenant, ["viewer"])))
    await stream_silence(gateway, keypair.token(tenant, ["ingest"]), meeting, frames=5)
    await viewer.wait_for(lambda w: any(m["event"] == "stream.ended" for m in w.of_type("status")))
    assert gateway.get("/api/v1/ws/stats", "not-a-token").status_code == 401
    after = scrape(gateway)

    t = ("tenant", tenant)
    assert after[("meeting_gateway_audio_frames_total", (t,))] == 5
    assert after[("meeting_gateway_connections_opened_total", (("role", "ingest"), t))] == 1
    assert after[("meeting_gateway_disconnects_total", (("code", "1000"), ("role", "ingest"), t))]
    assert after[("meeting_gateway_connections", (("role", "viewer"), t))] == 1
    assert after[("meeting_gateway_active_meetings", (t,))] == 1
    assert after[("meeting_gateway_ingest_streams", (t,))] == 0
    status = ("meeting_gateway_messages_delivered_total", (t, ("type", "status")))
    assert after[status] >= 2  # stream.started and stream.ended reached the viewer
    assert after[local] == before.get(local, 0) + 1
    assert after[seconds] == before.get(seconds, 0) + 0.5
    assert after[unauthorized] == before.get(unauthorized, 0) + 1
    await viewer.close()
    await eventually(
        lambda: scrape(gateway)[("meeting_gateway_active_meetings", (t,))] == 0,
        what="meeting inactive once its viewer left",
    )


async def test_an_ops_token_sees_only_its_own_tenant(gateway: Gateway, keypair: KeyPair) -> None:
    acme, globex = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(2))
    await stream_silence(gateway, keypair.token(acme, ["ingest"]), "m-shared-id", frames=5)
    await stream_silence(gateway, keypair.token(globex, ["ingest"]), "m-shared-id", frames=3)
    viewer = await watch(gateway.subscribe_url("m-shared-id", keypair.token(globex, ["viewer"])))

    mine = gateway.get("/api/v1/ws/stats", keypair.token(acme, ["ops"])).json()
    theirs = gateway.get("/api/v1/ws/stats", keypair.token(globex, ["ops"])).json()
    assert (mine["tenant"], theirs["tenant"]) == (acme, globex)
    assert (mine["audio_frames_in"], theirs["audio_frames_in"]) == (5, 3)
    assert mine["connections"] == {"ingest": 0, "viewer": 0}
    assert theirs["connections"] == {"ingest": 0, "viewer": 1}
    assert (mine["active_meetings"], theirs["active_meetings"]) == (0, 1)
    assert mine["connections_total"] == {"ingest": 1}
    assert mine["closes_by_code"] == {"1000": 1}
    # A viewer closing with the gateway's own code is counted as the viewer's, not the gateway's.
    async with connect(gateway.subscribe_url("m-shared-id", keypair.token(acme, ["viewer"]))) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        await ws.recv()
        await ws.close(code=4503, reason="mine")

    def closes() -> dict[str, int]:
        return gateway.get("/api/v1/ws/stats", keypair.token(acme, ["ops"])).json()[
            "closes_by_code"
        ]

    await eventually(lambda: closes() == {"1000": 1, "other": 1}, what="the viewer's close counted")
    # Another tenant's ops token: nothing of either.
    other = gateway.get("/api/v1/ws/stats", keypair.token("t-nobody", ["ops"])).json()
    assert other["audio_frames_in"] == 0 and other["connections_total"] == {}
    await viewer.close()


async def test_json_logs_of_a_full_session_hold_no_token_query_or_transcript(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gateway = start_gateway(LOG_FORMAT="json", LOG_LEVEL="INFO")
    viewer_token = keypair.token(roles=["viewer"], meetings=[meeting])
    ingest_token = keypair.token(roles=["ingest"], meetings=[meeting])
    # Quotes before the token: the query must go however it is written.
    quirky = "x='&y=\"&token="
    viewer = await watch(
        f"{gateway.ws}/api/v1/ws/meetings/{meeting}?{quirky}{viewer_token}&since=0"
    )
    pcm, rate, channels = load_wav_pcm(FIXTURES / "two_sentences_16k_mono.wav")
    summary = await stream_pcm(
        f"{ingest_url(gateway.http, meeting)}?{quirky}{ingest_token}",
        None,
        pcm,
        sample_rate=rate,
        channels=channels,
        speed=4.0,
        close_timeout_s=120,
    )
    assert summary.close_code == 1000, summary.errors
    await viewer.wait_for(lambda w: any(m["event"] == "stream.ended" for m in w.of_type("status")))
    await viewer.close()
    finals = [m["text"] for m in viewer.finals()]
    assert finals and all(finals)
    async with httpx.AsyncClient(verify=gateway.verify) as client:
        export = await client.get(
            f"{gateway.http}/api/v1/meetings/{meeting}/transcript?format=srt&x='\"&token=%s"
            % viewer_token,
            # From 127.0.0.1, a trusted proxy by default (FORWARDED_ALLOW_IPS).
            headers={"Authorization": f"Bearer {viewer_token}", "X-Forwarded-For": "203.0.113.7"},
        )
    assert export.status_code == 200 and finals[0] in export.text
    # The engine's latency was measured for each utterance.
    figures = scrape(gateway)
    local = (("engine", "local"),)
    assert figures[("meeting_gateway_engine_final_seconds_count", local)] == len(finals)
    assert figures[("meeting_gateway_engine_first_partial_seconds_count", local)] == len(finals)
    assert 0 < figures[("meeting_gateway_engine_final_seconds_sum", local)] < 10 * len(finals)
    store_writes = ("meeting_gateway_store_write_seconds_count", (("operation", "numbered_final"),))
    assert figures[store_writes] == len(finals)
    # A refused token in the query is not logged either.
    async with connect(gateway.ingest_url(meeting, "x'" + ingest_token[:-4] + "AAAA")) as ws:
        assert (await expect_close(ws))[0] == 4401
    gateway.stop()  # its shutdown lines are part of the session

    text = gateway.logs()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert len(lines) > 10
    for secret in (viewer_token, ingest_token, *viewer_token.split("."), ingest_token[-20:]):
        assert secret not in text
    assert "token=" not in text and "x='" not in text and "format=srt" not in text
    for final in finals:
        assert final not in text
    # uvicorn's own lines are there, as JSON with a redacted path.
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    (exported,) = [
        line
        for line in access
        if line["path"] == f"/api/v1/meetings/{meeting}/transcript?[redacted]"
    ]
    assert exported["client"].startswith("203.0.113.7:")  # the proxy's X-Forwarded-For
    assert any(line["logger"] == "uvicorn.error" and "WebSocket" in line["event"] for line in lines)
    # Lines about a connection carry its tenant, meeting and ids.
    (started,) = [line for line in lines if line["event"] == "ingest started"]
    assert (started["tenant"], started["meeting"]) == ("acme", meeting)
    assert started["stream_id"] == summary.ready["stream_id"] and started["connection_id"]


async def test_every_worker_answers_for_the_whole_replica(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    pg_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    upgrade = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "db", "upgrade"],
        env={**os.environ, "DATABASE_URL": pg_url},
        capture_output=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    gateway = start_gateway(
        pg_url,
        "--workers",
        "2",
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=redis_prefix,
        LOCAL_ENGINE_WORKERS="1",
    )
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    for n in range(6):  # new connections, spread over the workers by the kernel
        await stream_silence(gateway, keypair.token(tenant, ["ingest"]), f"m-{n}", frames=2)
    ops = keypair.token(tenant, ["ops"])
    frames = ("meeting_gateway_audio_frames_total", (("tenant", tenant),))
    for _ in range(6):  # whichever worker answers, the figures are the replica's
        assert scrape(gateway)[frames] == 12
        assert gateway.get("/api/v1/ws/stats", ops).json()["connections_total"] == {"ingest": 6}


def worker_pids(gateway: Gateway) -> set[int]:
    """The `serve --workers` processes under the gateway's supervisor (not spawn's tracker)."""
    assert gateway.process is not None
    supervisor = gateway.process.pid
    with open(f"/proc/{supervisor}/task/{supervisor}/children") as children:
        pids = {int(pid) for pid in children.read().split()}
    workers = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"spawn_main" in cmdline.read():
                    workers.add(pid)
        except OSError:  # gone meanwhile (FileNotFoundError, or ESRCH while it is reaped)
            continue
    return workers


async def test_a_killed_workers_connections_leave_the_replicas_figures(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, redis_url: str, redis_prefix: str
) -> None:
    """Both workers killed in turn (each replaced): their viewers are gone, and so are they
    from the live figures of /api/v1/ws/stats and /metrics (they stayed there for good)."""
    import signal

    gateway = start_gateway(
        None, "--workers", "2", REDIS_URL=redis_url, REDIS_KEY_PREFIX=redis_prefix
    )
    await eventually(lambda: len(worker_pids(gateway)) == 2, within=60, what="two workers")
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    viewers = [
        await watch(gateway.subscribe_url(f"m-{n}", keypair.token(tenant, ["viewer"])))
        for n in range(6)
    ]
    ops = keypair.token(tenant, ["ops"])
    assert gateway.get("/api/v1/ws/stats", ops).json()["connections"]["viewer"] == 6
    for pid in sorted(worker_pids(gateway)):
        os.kill(pid, signal.SIGKILL)
        await eventually(
            lambda pid=pid: len(worker_pids(gateway) - {pid}) == 2, within=60, what="replaced"
        )
    for viewer in viewers:
        await viewer.wait_for(lambda w: w.close_code is not None, timeout=60)

    def nothing_live() -> bool:
        stats = gateway.get("/api/v1/ws/stats", ops).json()
        return not any(stats["connections"].values()) and stats["active_meetings"] == 0

    await eventually(nothing_live, within=60, interval=0.5, what="no connections left")
    live = ("meeting_gateway_connections", (("role", "viewer"), ("tenant", tenant)))
    assert scrape(gateway).get(live, 0) == 0


async def test_a_viewer_that_drops_its_connection_is_counted_1006(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """No close frame, a reset: an abnormal closure, 1006 (uvicorn tells the app 1005)."""
    import socket
    import struct

    tenant = f"t-{uuid.uuid4().hex[:8]}"
    viewer = await watch(gateway.subscribe_url(meeting, keypair.token(tenant, ["viewer"])))
    sock = viewer.ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    viewer.ws.transport.abort()
    dropped = (
        "meeting_gateway_disconnects_total",
        (("code", "1006"), ("role", "viewer"), ("tenant", tenant)),
    )
    await eventually(lambda: scrape(gateway).get(dropped, 0) == 1, what="counted as 1006")
    no_status = (
        "meeting_gateway_disconnects_total",
        (("code", "1005"), ("role", "viewer"), ("tenant", tenant)),
    )
    assert scrape(gateway).get(no_status, 0) == 0
    viewer.task.cancel()
