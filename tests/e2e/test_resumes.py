"""A resumed ingest (`resumes` in its handshake) is placed on the meeting's clock where its audio
began, and the audio it re-sends is late audio, not a flood (docs/protocol.md, "Resuming an
ingest")."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

from websockets.asyncio.client import connect

from tests.e2e.harness import Gateway, KeyPair, close_code_of, expect_close, handshake

FRAME_20MS = b"\x00\x00" * 320  # 16 kHz mono
AWAY_S = 6.0  # the client's time away: the re-sent audio was spoken this long ago


async def _ready(ws) -> dict:
    message = json.loads(await ws.recv())
    assert message["type"] == "ready", message
    return message


def _streams(gateway: Gateway, meeting: str, token: str) -> dict[str, dict[str, datetime | None]]:
    streams = gateway.get(f"/api/v1/meetings/{meeting}", token).json()["streams"]
    return {
        s["stream_id"]: {
            key: datetime.fromisoformat(s[key]) if s[key] else None
            for key in ("started_at", "audio_started_at")
        }
        for s in streams
    }


async def test_a_resumed_stream_is_placed_where_its_audio_began_and_may_send_it_at_once(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    async with connect(url) as ws:
        await ws.send(handshake())
        first = (await _ready(ws))["stream_id"]
        for _ in range(50):  # 1 s of audio
            await ws.send(FRAME_20MS)
        await ws.send(json.dumps({"type": "close"}))
        code, _ = await expect_close(ws, timeout=60)
    assert code == 1000
    # Away for a while (a restart, a network drop): its capture went on meanwhile, and it now
    # re-sends from 0.6 s of the first stream's audio, at once, then would go on live.
    await asyncio.sleep(AWAY_S)
    backlog = int((AWAY_S - 1.0) / 0.02)  # 5 s of late audio: far past the burst (2 s)
    async with connect(url) as ws:
        await ws.send(handshake(resumes={"stream_id": first, "from_ms": 600}))
        ready = await _ready(ws)
        assert ready["resumed"] is True
        for _ in range(backlog):
            await ws.send(FRAME_20MS)
        await ws.send(json.dumps({"type": "close"}))
        code, messages = await expect_close(ws, timeout=60)
    assert code == 1000, messages  # not 4429: late audio, not audio ahead of its time
    streams = _streams(gateway, meeting, keypair.token(roles=["ops"]))
    began, resumed = streams[first], streams[ready["stream_id"]]
    assert began["audio_started_at"] is None and began["started_at"] is not None
    assert resumed["audio_started_at"] is not None and resumed["started_at"] is not None
    placed_ms = (resumed["audio_started_at"] - began["started_at"]).total_seconds() * 1000
    assert abs(placed_ms - 600) <= 1, placed_ms
    # It connected when it connected: the meeting's lifecycle and stats read that.
    assert (resumed["started_at"] - began["started_at"]).total_seconds() >= AWAY_S


async def test_a_stream_resumed_from_an_unknown_one_is_placed_from_now(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    async with connect(url) as ws:
        await ws.send(handshake(source="system"))
        system = (await _ready(ws))["stream_id"]
        # Not a stream of the meeting; the other source's (placed on its clock, 16 s early);
        # one whose `from_ms` lies past now (its placement would be ignored: said so).
        for resumes in (
            {"stream_id": "not-a-stream", "from_ms": 0},
            {"stream_id": system, "from_ms": 0},
            {"stream_id": system, "from_ms": 10**9},
        ):
            async with connect(url) as mic:
                await mic.send(handshake(resumes=resumes))
                assert (await _ready(mic))["resumed"] is False, resumes
                await mic.send(json.dumps({"type": "close"}))
                code, _ = await expect_close(mic, timeout=60)
            assert code == 1000
        await ws.send(json.dumps({"type": "close"}))
        code, _ = await expect_close(ws, timeout=60)
    assert code == 1000
    async with connect(url) as ws:
        await ws.send(handshake())
        assert "resumed" not in await _ready(ws)  # no `resumes`, nothing said


async def test_a_malformed_resumes_is_4400_naming_the_rule(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    for resumes in ({"stream_id": "s"}, {"stream_id": "s", "from_ms": -1}, "s"):
        assert await close_code_of(url, handshake(resumes=resumes)) == 4400
    async with connect(url) as ws:
        await ws.send(handshake(resumes={"stream_id": "s"}))
        code, messages = await expect_close(ws)
    assert code == 4400 and "resumes.from_ms is required" in messages[-1]["message"]
