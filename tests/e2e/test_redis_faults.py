"""Redis restarted or unreachable under real gateway processes (a throwaway redis-server):
viewers get every final exactly once and every status, and ingest streams ride through."""

from __future__ import annotations

import asyncio
import contextlib
import json

import redis.asyncio as aredis
from websockets.asyncio.client import ClientConnection, connect

from gateway.client.audio import load_wav_pcm
from tests.e2e.harness import Gateway, KeyPair, expect_close, handshake
from tests.e2e.speech import CATALOG, Watcher, fixture, watch
from tests.e2e.test_scale_out import db_upgrade
from tests.util import PrivateRedis, eventually

FIXTURE = "two_sentences_16k_mono.wav"


def _frames(start_ms: int, end_ms: int) -> list[bytes]:
    """100 ms frames of the fixture between two instants."""
    path, _ = fixture(FIXTURE)
    pcm, rate, _ = load_wav_pcm(path)
    audio = pcm[rate * 2 * start_ms // 1000 : rate * 2 * end_ms // 1000]
    frame = rate * 2 // 10
    return [audio[i : i + frame] for i in range(0, len(audio), frame)]


def _spans() -> list[tuple[int, int]]:
    entry = next(f for f in CATALOG if f["file"] == FIXTURE)
    return [(s["start_ms"], s["end_ms"]) for s in entry["sentences"]]


def _first_sentence_and_pause() -> list[bytes]:
    return _frames(0, 3300)


def _second_sentence_only() -> list[bytes]:
    """The second sentence with no silence after it: its utterance stays open (no final) until
    the client asks for one."""
    start, end = _spans()[1]
    return _frames(start - 100, end)


async def _start_stream(gw: Gateway, meeting: str, token: str, source: str) -> ClientConnection:
    ws = await connect(gw.ingest_url(meeting, token))
    await ws.send(handshake(source=source))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready", ready
    return ws


async def _send_all(ws: ClientConnection, frames: list[bytes]) -> None:
    for frame in frames:
        await ws.send(frame)


def _numbers(w: Watcher) -> list[int]:
    return [f["segment_no"] for f in w.finals()]


def _statuses(w: Watcher, event: str) -> list[str]:
    return [m["source"] for m in w.of_type("status") if m["event"] == event]


async def _subscribed_by(redis: PrivateRedis, channel: str, n: int) -> bool:
    client = redis.client()
    try:
        return int((await client.pubsub_numsub(channel))[0][1]) == n
    except Exception:
        return False
    finally:
        await client.aclose()


async def _frames_accepted(gw: Gateway, ops: str, meeting: str, source: str, n: int) -> bool:
    streams = gw.get(f"/api/v1/ws/meetings/{meeting}/stats", ops).json()["ingest_streams"]
    return any(s["source"] == source and s["frames"] >= n for s in streams)


async def test_redis_restart_mid_meeting_loses_no_final_and_no_status_on_either_replica(
    start_gateway, keypair: KeyPair, meeting: str, private_redis: PrivateRedis, pg_url: str
) -> None:
    """After a restart every pooled Redis connection is dead: the first publish of each replica
    (replica A's next final, replica B's `stream.started`) is retried on a new connection."""
    assert db_upgrade(pg_url).returncode == 0
    a = start_gateway(pg_url, REDIS_URL=private_redis.url)
    b = start_gateway(pg_url, REDIS_URL=private_redis.url)
    viewer, ingest = keypair.token(roles=["viewer"]), keypair.token(roles=["ingest"])
    ops = keypair.token(roles=["ops"])
    on_a = await watch(a.subscribe_url(meeting, viewer))
    on_b = await watch(b.subscribe_url(meeting, viewer))
    viewers = (on_a, on_b)
    mic = await _start_stream(a, meeting, ingest, "mic")
    try:
        first = _first_sentence_and_pause()
        await _send_all(mic, first)
        await mic.send(json.dumps({"type": "finalize"}))
        for w in viewers:
            await w.wait_for(lambda w: _numbers(w) == [1], timeout=120)
        second = _second_sentence_only()
        await _send_all(mic, second)
        await eventually(
            lambda: _frames_accepted(a, ops, meeting, "mic", len(first) + len(second)),
            within=60,
            what="the second sentence accepted",
        )
        # Let the engine finish its partials of that audio, so the final is A's next publish.
        with contextlib.suppress(TimeoutError):
            await on_a.wait_for(lambda w: any(p["segment_no"] == 2 for p in w.partials()), 30)
        # Both replicas' /readyz probes used their publishing pools: those connections die now.
        assert a.get("/readyz").status_code == 200 and b.get("/readyz").status_code == 200
        await private_redis.stop()
        await private_redis.start()
        channel = f"meeting:acme:{meeting}:transcript"  # the tokens' default tenant
        await eventually(
            lambda: _subscribed_by(private_redis, channel, 2), within=60, what="both resubscribed"
        )
        # B's first publish after the restart: the second stream's `stream.started`.
        system = await _start_stream(b, meeting, ingest, "system")
        # A's first publish after the restart: the open utterance's final.
        await mic.send(json.dumps({"type": "finalize"}))
        for w in viewers:
            await w.wait_for(lambda w: _numbers(w) == [1, 2], timeout=120)
            await w.wait_for(lambda w: "system" in _statuses(w, "stream.started"), timeout=60)
        for ws in (system, mic):
            await ws.send(json.dumps({"type": "close"}))
            code, _ = await expect_close(ws, timeout=120)
            assert code == 1000
    finally:
        await mic.close()
    for w in viewers:
        await w.wait_for(lambda w: set(_statuses(w, "stream.ended")) == {"mic", "system"})
        await w.close()
        assert _numbers(w) == [1, 2]  # every final, once, in order
        assert sorted(_statuses(w, "stream.started")) == ["mic", "system"]  # each status once


async def test_ingest_keeps_streaming_through_a_redis_outage_longer_than_its_lease(
    start_gateway, keypair: KeyPair, meeting: str, private_redis: PrivateRedis
) -> None:
    """Redis is down for longer than the 8 s lease: the stream is not closed (nobody can take
    the lease meanwhile), and the final spoken during the outage is numbered, stored and
    delivered once Redis is back."""
    gw = start_gateway(None, REDIS_URL=private_redis.url, STORE_RETRY_S="120")
    viewer = await watch(gw.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    mic = await _start_stream(gw, meeting, keypair.token(roles=["ingest"]), "mic")
    try:
        await _send_all(mic, _first_sentence_and_pause())
        await mic.send(json.dumps({"type": "finalize"}))
        await viewer.wait_for(lambda w: _numbers(w) == [1], timeout=120)
        await private_redis.stop()
        await _send_all(mic, _second_sentence_only())
        await mic.send(json.dumps({"type": "finalize"}))
        # Past the lease's TTL without a renewal (the gateway says so), the stream still runs.
        await eventually(
            lambda: "not renewed within" in gw.logs(), within=60, what="outage past the lease"
        )
        assert mic.close_code is None
        await private_redis.start()
        await eventually(lambda: "renewed again" in gw.logs(), within=60, what="lease renewed")
        await _send_all(mic, _first_sentence_and_pause())
        await mic.send(json.dumps({"type": "close"}))
        code, messages = await expect_close(mic, timeout=180)
    finally:
        await mic.close()
    assert code == 1000 and messages[-1]["type"] == "closed" and messages[-1]["finals"] == 3
    await viewer.wait_for(lambda w: "mic" in _statuses(w, "stream.ended"), timeout=120)
    await viewer.close()
    assert _numbers(viewer) == [1, 2, 3]
    late = await watch(gw.subscribe_url(meeting, keypair.token(roles=["viewer"]), since=0))
    await late.close()
    assert _numbers(late) == [1, 2, 3]  # all stored


async def test_a_stream_whose_lease_another_stream_took_during_a_partition_yields_4409(
    start_gateway, keypair: KeyPair, meeting: str, private_redis: PrivateRedis, pg_url: str
) -> None:
    """Replica A is cut off from Redis (a password it does not know), replica B is not: once
    A's lease expires a reconnecting client takes it on B. A keeps its stream while cut off and
    yields with 4409 as soon as it reaches Redis again and sees the other holder."""
    assert db_upgrade(pg_url).returncode == 0
    a = start_gateway(pg_url, REDIS_URL=private_redis.url)
    ingest = keypair.token(roles=["ingest"])
    on_a = await _start_stream(a, meeting, ingest, "mic")
    admin = private_redis.client()
    try:
        [key] = [k async for k in admin.scan_iter(f"ingest:*:{meeting}:mic")]
        await admin.config_set("requirepass", "s3cret")
        await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        secret_url = private_redis.url.replace("redis://", "redis://:s3cret@")
        # Started off the event loop: the open ingest socket keeps answering pings meanwhile.
        b = await asyncio.to_thread(start_gateway, pg_url, REDIS_URL=secret_url)
        # The lease expires in Redis (A cannot renew it); A keeps streaming meanwhile.
        await eventually(lambda: _gone(admin, key), within=60, what="A's lease expired")
        assert on_a.close_code is None
        on_b = await _start_stream(b, meeting, ingest, "mic")  # the client moved to B
        await admin.config_set("requirepass", "")  # the partition heals
        code, _ = await expect_close(on_a, timeout=60)
        assert code == 4409
        await on_b.send(json.dumps({"type": "close"}))
        code, _ = await expect_close(on_b, timeout=60)
        assert code == 1000
    finally:
        with contextlib.suppress(Exception):
            await admin.config_set("requirepass", "")
        await admin.aclose()
        await on_a.close()


async def _gone(admin: aredis.Redis, key: bytes) -> bool:
    return not await admin.exists(key)


async def test_a_gateway_started_while_redis_is_down_starts_and_is_ready_once_it_is_back(
    keys_dir, keypair: KeyPair, meeting: str, tmp_path
) -> None:
    """A replica restarted during a Redis outage must not crash-loop: it starts (not ready),
    and once Redis answers it subscribes to other replicas' deletion notices and serves."""
    from tests.e2e.harness import gateway_env

    redis = PrivateRedis(tmp_path)  # not started yet: nothing listens on its port
    prefix = "down-at-start:"
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    env = gateway_env(
        keys_dir, url, REDIS_URL=redis.url, REDIS_KEY_PREFIX=prefix, OUTBOX_DIR=str(tmp_path)
    )
    gw = Gateway(env, tmp_path / "gateway.log", ready_path="/healthz")
    gw.start()
    try:
        assert gw.get("/readyz").status_code == 503
        live = gw.get("/readyz/live")  # the bus is required for live traffic too
        assert live.status_code == 503 and live.json()["checks"]["bus"] is False
        await redis.start()
        await eventually(lambda: gw.get("/readyz").status_code == 200, within=60, interval=0.5)
        control = f"{prefix}control:meetings"
        await eventually(
            lambda: _subscribed_by(redis, control, 1), within=60, what="deletion notices heard"
        )
        viewer = await watch(gw.subscribe_url(meeting, keypair.token(roles=["viewer"])))
        await viewer.close()
        # Reached once, Redis going away is reported by the live probe, not failed (the
        # on-call tester: every replica left the Service at once, the REST API with them);
        # a new ingest stream cannot start, so the ingest route's probe fails.
        await redis.stop()
        await eventually(lambda: gw.get("/readyz").status_code == 503, within=60, interval=0.5)
        live = gw.get("/readyz/live")
        assert live.status_code == 200 and live.json()["checks"]["bus"] is False
        assert gw.get("/readyz/ingest").status_code == 503
        metrics = gw.get("/metrics").text
        assert 'meeting_gateway_dependency_up{dependency="bus"} 0.0' in metrics
        assert "Traceback" not in gw.logs()
    finally:
        gw.stop()
        await redis.stop()
