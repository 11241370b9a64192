"""Failures and shutdowns: accepted audio survives, errors are reported with documented codes."""

from __future__ import annotations

import json
import signal

import asyncpg
from websockets.asyncio.client import connect

from gateway import devclient
from tests.conftest import PG_ADMIN_DSN
from tests.e2e.harness import Gateway, KeyPair, expect_close, handshake, word_error_rate
from tests.e2e.speech import fixture, stream_fixture, watch
from tests.e2e.test_scale_out import db_upgrade


def _first_sentence() -> tuple[list[bytes], int, str]:
    path, sentences = fixture("two_sentences_16k_mono.wav")
    pcm, rate, _ = devclient.load_wav_pcm(path)
    frame = rate * 2 // 10  # 100 ms
    audio = pcm[: rate * 2 * 33 // 10]  # the first sentence and the pause after it
    return [audio[i : i + frame] for i in range(0, len(audio), frame)], rate, sentences[0]


async def test_sigterm_mid_stream_flushes_accepted_audio_to_the_store(
    start_gateway, keypair: KeyPair, meeting: str, tmp_path
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'drain.db'}"
    gw = start_gateway(database)
    frames, rate, sentence = _first_sentence()
    async with connect(gw.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
        await ws.send(handshake(sample_rate=rate))
        assert json.loads(await ws.recv())["type"] == "ready"
        for frame in frames:
            await ws.send(frame)
        # No close from the client: the gateway is told to stop while audio is in flight.
        # uvicorn re-raises the signal after its graceful shutdown, hence -SIGTERM.
        assert gw.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in gw.logs()
        code, _ = await expect_close(ws)
    assert code == 1012  # service restart: reconnect
    again = start_gateway(database)
    viewer = keypair.token(roles=["viewer"])
    stored = again.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()["segments"]
    assert len(stored) == 1 and word_error_rate(sentence, stored[0]["text"]) <= 0.34


async def test_database_lost_mid_stream_is_1011_and_readyz_fails(
    start_gateway, keypair: KeyPair, meeting: str, pg_url: str
) -> None:
    assert db_upgrade(pg_url).returncode == 0
    gw = start_gateway(pg_url)
    frames, rate, _ = _first_sentence()
    async with connect(gw.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
        await ws.send(handshake(sample_rate=rate))
        assert json.loads(await ws.recv())["type"] == "ready"
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE "{pg_url.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await admin.close()
        for frame in frames:
            await ws.send(frame)
        code, messages = await expect_close(ws, timeout=60)
    assert code == 1011
    assert messages[-1]["type"] == "error" and messages[-1]["code"] == 1011
    ready = gw.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"] is False


async def test_workers_share_meetings_through_redis(
    start_gateway, keypair: KeyPair, meeting: str, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    assert db_upgrade(pg_url).returncode == 0
    gw: Gateway = start_gateway(
        pg_url, "--workers", "2", REDIS_URL=redis_url, REDIS_KEY_PREFIX=redis_prefix
    )
    viewer = keypair.token(roles=["viewer"])
    # Several viewers: the kernel spreads the connections over both worker processes.
    watchers = [await watch(gw.subscribe_url(meeting, viewer)) for _ in range(4)]
    summary = await stream_fixture(
        gw, keypair.token(roles=["ingest"]), meeting, "two_sentences_16k_mono.wav", speed=6
    )
    assert summary.close_code == 1000
    for watcher in watchers:
        await watcher.wait_for(
            lambda w: any(m.get("event") == "stream.ended" for m in w.of_type("status"))
        )
        await watcher.close()
        assert [f["segment_no"] for f in watcher.finals()] == [1, 2]
