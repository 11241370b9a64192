"""Local engine capacity through a real gateway: one tenant's idle sockets cannot take every
other tenant's streams (LOCAL_ENGINE_TENANT_SHARE), and an ingest stream that sends no audio is
released after INGEST_IDLE_S (close 4408, reason "idle")."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect

from tests.e2e.harness import Gateway, KeyPair, expect_close, handshake

IDLE_S = 3.0


def capacity_gateway(start_gateway: Callable[..., Gateway], **env: str) -> Gateway:
    # One worker, three streams: the capacity the three idle sockets filled.
    return start_gateway(
        LOCAL_FINALS_MODEL="pocketsphinx",
        LOCAL_ENGINE_WORKERS="1",
        LOCAL_ENGINE_MAX_STREAMS="3",
        **env,
    )


async def open_ingest(gw: Gateway, token: str, meeting: str) -> tuple[ClientConnection, dict]:
    """An ingest socket after its handshake; the server's first answer (ready or error)."""
    ws = await connect(gw.ingest_url(meeting, token))
    await ws.send(handshake())
    answer = json.loads(await asyncio.wait_for(ws.recv(), 60))
    return ws, answer


async def hold_streams(gw: Gateway, token: str, meetings: list[str]) -> list[ClientConnection]:
    """One ready ingest socket per meeting, held open."""
    held = []
    for meeting in meetings:
        ws, answer = await open_ingest(gw, token, meeting)
        assert answer["type"] == "ready", answer
        held.append(ws)
    return held


async def test_one_tenants_idle_sockets_leave_capacity_for_other_tenants(
    start_gateway: Callable[..., Gateway], keypair: KeyPair
) -> None:
    gw = capacity_gateway(start_gateway, INGEST_IDLE_S="600")
    hog = keypair.token(tenant="hog", roles=["ingest"])
    # The default share of 3 streams: 2 (both sources of a meeting).
    held = await hold_streams(gw, hog, ["hog-0", "hog-1"])

    ws, answer = await open_ingest(gw, hog, "hog-2")
    assert answer["type"] == "error" and answer["code"] == 4429, answer
    assert answer["reason"] == "tenant_share"
    code, _ = await expect_close(ws)
    assert code == 4429

    # Another tenant still gets a stream.
    other, answer = await open_ingest(gw, keypair.token(tenant="acme", roles=["ingest"]), "m-1")
    assert answer["type"] == "ready", answer
    await other.send(json.dumps({"type": "close"}))
    code, messages = await expect_close(other, timeout=60)
    assert code == 1000, messages

    # A slot the tenant gives back is its own again.
    await held.pop().close()
    deadline = time.monotonic() + 60
    while True:
        ws, answer = await open_ingest(gw, hog, "hog-3")
        if answer["type"] == "ready" or time.monotonic() > deadline:
            break
        await ws.close()
        await asyncio.sleep(0.2)
    assert answer["type"] == "ready", answer
    held.append(ws)
    for sock in held:
        await sock.close()


async def test_an_ingest_stream_without_audio_is_released(
    start_gateway: Callable[..., Gateway], keypair: KeyPair
) -> None:
    gw = capacity_gateway(start_gateway, INGEST_IDLE_S=str(IDLE_S))
    token = keypair.token(roles=["ingest"])

    # Audio keeps a stream open past INGEST_IDLE_S; control messages alone do not.
    talking, answer = await open_ingest(gw, token, "m-talk")
    assert answer["type"] == "ready", answer
    silence = bytes(16000 * 2 // 10)  # 100 ms
    started = time.monotonic()
    while time.monotonic() - started < 2 * IDLE_S:
        await talking.send(silence)
        await asyncio.sleep(0.1)
    await talking.send(json.dumps({"type": "close"}))
    code, messages = await expect_close(talking, timeout=60)
    assert code == 1000, messages

    idle, answer = await open_ingest(gw, token, "m-idle")
    assert answer["type"] == "ready", answer
    await idle.send(bytes(3200))  # some audio, then nothing
    opened = time.monotonic()
    code, messages = await expect_close(idle, timeout=IDLE_S + 60)
    assert time.monotonic() - opened >= IDLE_S - 0.5
    assert code == 4408
    assert messages[-1]["type"] == "error" and messages[-1]["reason"] == "idle", messages
    assert "INGEST_IDLE_S" in messages[-1]["message"]

    # Its engine slot is free again: three more streams fit the engine.
    held = []
    for n in range(3):
        tenant = "acme" if n < 2 else "globex"
        ws, answer = await open_ingest(
            gw, keypair.token(tenant=tenant, roles=["ingest"]), f"m-after-{n}"
        )
        assert answer["type"] == "ready", answer
        held.append(ws)
    for ws in held:
        await ws.close()


async def test_a_full_engine_keeps_the_replica_ready_for_viewers_not_for_ingest(
    start_gateway: Callable[..., Gateway], keypair: KeyPair
) -> None:
    """A Service carrying viewers and the API besides ingest must not lose every replica whose
    engine is full: `/readyz` reports the engine, `/readyz/ingest` fails on it."""
    gw = capacity_gateway(start_gateway, INGEST_IDLE_S="600")
    assert gw.get("/readyz/ingest").status_code == 200
    held = []
    for tenant, meetings in (("hog", ["a", "b"]), ("acme", ["c"])):  # 3 streams: full
        held += await hold_streams(gw, keypair.token(tenant=tenant, roles=["ingest"]), meetings)
    ready, ingest_ready = gw.get("/readyz"), gw.get("/readyz/ingest")
    assert ready.status_code == 200 and ready.json()["checks"]["engines"] is False, ready.text
    assert ingest_ready.status_code == 503 and ingest_ready.json()["status"] == "unavailable"
    await held.pop().close()
    deadline = time.monotonic() + 60
    while gw.get("/readyz/ingest").status_code != 200:
        assert time.monotonic() < deadline, "an engine slot given back never made it ready"
        await asyncio.sleep(0.2)
    for sock in held:
        await sock.close()


async def test_with_the_share_off_a_full_engine_is_4503_not_the_tenants_share(
    start_gateway: Callable[..., Gateway], keypair: KeyPair
) -> None:
    # LOCAL_ENGINE_TENANT_SHARE=1 (one-tenant deployments): the one tenant filling the engine
    # was told 4429 "its share", a setting already turned off.
    gw = capacity_gateway(start_gateway, INGEST_IDLE_S="600", LOCAL_ENGINE_TENANT_SHARE="1")
    token = keypair.token(roles=["ingest"])
    held = await hold_streams(gw, token, ["m-0", "m-1", "m-2"])
    ws, answer = await open_ingest(gw, token, "m-3")
    assert answer["type"] == "error" and answer["code"] == 4503, answer
    assert answer["reason"] == "engine_unavailable"
    code, _ = await expect_close(ws)
    assert code == 4503
    for sock in held:
        await sock.close()
