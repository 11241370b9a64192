"""Several replicas on one Redis and one PostgreSQL behave as one gateway."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from tests.e2e.harness import REPO, Gateway, KeyPair, close_code_of, expect_close, handshake
from tests.e2e.speech import stream_fixture, watch
from tests.util import eventually


def db_upgrade(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "db", "upgrade"],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def replicas(
    start_gateway, pg_url: str, redis_url: str, redis_prefix: str
) -> Callable[..., list[Gateway]]:
    """Start n replicas sharing a freshly migrated PostgreSQL database and a Redis prefix."""
    assert db_upgrade(pg_url).returncode == 0

    def start(n: int = 2, **env: str) -> list[Gateway]:
        return [
            start_gateway(pg_url, REDIS_URL=redis_url, REDIS_KEY_PREFIX=redis_prefix, **env)
            for _ in range(n)
        ]

    return start


def _ended(*sources: str):
    return lambda w: (
        {m["source"] for m in w.of_type("status") if m["event"] == "stream.ended"} >= set(sources)
    )


async def test_ingest_on_one_replica_reaches_viewers_on_both_identically(
    replicas, keypair: KeyPair, meeting: str
) -> None:
    a, b = replicas(2)
    viewer = keypair.token(roles=["viewer"])
    on_a = await watch(a.subscribe_url(meeting, viewer))
    on_b = await watch(b.subscribe_url(meeting, viewer))
    summary = await stream_fixture(
        a, keypair.token(roles=["ingest"]), meeting, "two_sentences_16k_mono.wav", speed=6
    )
    assert summary.close_code == 1000
    for watcher in (on_a, on_b):
        await watcher.wait_for(_ended("mic"))
        await watcher.close()
    assert [f["segment_no"] for f in on_a.finals()] == [1, 2]
    transcript_a = [m for m in on_a.messages if m["type"].startswith("transcript.")]
    transcript_b = [m for m in on_b.messages if m["type"].startswith("transcript.")]
    assert transcript_a == transcript_b  # same partials and finals, same numbers, same order
    stored = b.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()["segments"]
    assert [s["text"] for s in stored] == [f["text"] for f in on_a.finals()]


async def test_one_ingest_per_source_across_replicas(
    replicas, keypair: KeyPair, meeting: str
) -> None:
    a, b = replicas(2)
    token = keypair.token(roles=["ingest"])
    async with connect(a.ingest_url(meeting, token)) as mic:
        await mic.send(handshake(source="mic"))
        assert json.loads(await mic.recv())["type"] == "ready"
        assert await close_code_of(b.ingest_url(meeting, token), handshake(source="mic")) == 4409
        async with connect(b.ingest_url(meeting, token)) as system:
            await system.send(handshake(source="system"))
            assert json.loads(await system.recv())["type"] == "ready"
            await system.send(json.dumps({"type": "close"}))
            assert (await expect_close(system))[0] == 1000
        await mic.send(json.dumps({"type": "close"}))
        assert (await expect_close(mic))[0] == 1000
    # Released on close: the other replica may take the source now.
    async with connect(b.ingest_url(meeting, token)) as again:
        await again.send(handshake(source="mic"))
        assert json.loads(await again.recv())["type"] == "ready"


async def test_concurrent_ingest_on_two_replicas_numbers_contiguously(
    replicas, keypair: KeyPair, meeting: str
) -> None:
    a, b = replicas(2)
    token = keypair.token(roles=["ingest"])
    viewer = keypair.token(roles=["viewer"])
    watcher = await watch(a.subscribe_url(meeting, viewer))
    results = await asyncio.gather(
        stream_fixture(a, token, meeting, "two_sentences_16k_mono.wav", source="mic"),
        stream_fixture(b, token, meeting, "two_sentences_48k_mono.wav", source="system"),
    )
    assert [r.close_code for r in results] == [1000, 1000]
    await watcher.wait_for(_ended("mic", "system"))
    await watcher.close()
    stored = a.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()["segments"]
    assert [s["segment_no"] for s in stored] == [1, 2, 3, 4]
    assert sorted(s["source"] for s in stored) == ["mic", "mic", "system", "system"]
    assert sorted(f["segment_no"] for f in watcher.finals()) == [1, 2, 3, 4]


async def test_one_redis_subscription_per_replica_per_topic(
    replicas, keypair: KeyPair, meeting: str, redis_url: str, redis_prefix: str
) -> None:
    a, b = replicas(2)
    viewer = keypair.token(roles=["viewer"])
    watchers = [await watch(gw.subscribe_url(meeting, viewer)) for gw in (a, b) for _ in range(5)]
    client = aioredis.from_url(redis_url)
    try:
        channels = [
            f"{redis_prefix}meeting:acme:{meeting}:transcript",
            f"{redis_prefix}meeting:acme:{meeting}:status",
        ]
        counts = dict(await client.pubsub_numsub(*channels))
        assert {k.decode(): v for k, v in counts.items()} == dict.fromkeys(channels, 2)
        for watcher in watchers:
            await watcher.close()

        async def dropped() -> bool:
            return dict(await client.pubsub_numsub(*channels)) == {c.encode(): 0 for c in channels}

        await eventually(dropped, within=60, what="subscriptions dropped with the last viewer")
    finally:
        await client.aclose()


async def test_subscriber_limit_counts_across_replicas(
    replicas, keypair: KeyPair, meeting: str
) -> None:
    a, b = replicas(2, MAX_WS_CLIENTS_PER_MEETING="2")
    viewer = keypair.token(roles=["viewer"])
    first = await watch(a.subscribe_url(meeting, viewer))
    second = await watch(b.subscribe_url(meeting, viewer))
    assert await close_code_of(a.subscribe_url(meeting, viewer)) == 4429
    assert await close_code_of(b.subscribe_url(meeting, viewer)) == 4429
    await first.close()
    await second.close()


async def test_killed_replica_frees_its_ingest_lease_within_10_s(
    replicas, keypair: KeyPair, meeting: str
) -> None:
    a, b = replicas(2)
    token = keypair.token(roles=["ingest"])
    ws = await connect(a.ingest_url(meeting, token))
    await ws.send(handshake(source="mic"))
    assert json.loads(await ws.recv())["type"] == "ready"
    assert await close_code_of(b.ingest_url(meeting, token), handshake(source="mic")) == 4409
    a.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    ws.transport.abort()
    while True:
        # A refusal proves the lease was held when this attempt started, or later: judging the
        # attempt's start (not its answer, slow on a loaded machine) keeps the bound exact.
        attempt_at = time.monotonic()
        async with connect(b.ingest_url(meeting, token)) as retry:
            await retry.send(handshake(source="mic"))
            reply = json.loads(await retry.recv())
            if reply["type"] == "ready":
                break
            assert reply["code"] == 4409
        assert attempt_at - killed_at < 10.5, "lease of a dead replica outlived 10 s"
        await asyncio.sleep(0.25)


async def test_delivery_recovers_after_redis_connection_is_killed(
    replicas, keypair: KeyPair, meeting: str, redis_url: str
) -> None:
    (a,) = replicas(1)
    viewer = keypair.token(roles=["viewer"])
    ingest = keypair.token(roles=["ingest"])
    watcher = await watch(a.subscribe_url(meeting, viewer))
    replica_id = a.get("/api/v1/ws/stats", keypair.token(roles=["ops"])).json()["replica_id"]
    client = aioredis.from_url(redis_url)
    try:
        name = f"meeting-gateway:{replica_id}:bus"
        ids = [c["id"] for c in await client.client_list() if c.get("name") == name]
        assert len(ids) == 1, "the replica's bus connection is named and unique"
        assert await client.client_kill_filter(_id=ids[0]) == 1
    finally:
        await client.aclose()
    summary = await stream_fixture(a, ingest, meeting, "two_sentences_16k_mono.wav", speed=6)
    assert summary.close_code == 1000
    await watcher.wait_for(_ended("mic"))
    await watcher.close()
    assert [f["segment_no"] for f in watcher.finals()] == [1, 2]


def serve_refused(keys_dir, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`serve` that is expected to refuse to start: its exit and what it said."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", *args],
        cwd=REPO,
        env={**os.environ, "JWT_PUBLIC_KEY_PATH": str(keys_dir / "jwt.pub"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_refuses_an_unmigrated_postgres_database(keys_dir, pg_url: str, tmp_path) -> None:
    result = serve_refused(keys_dir, "--port", "1", DATABASE_URL=pg_url)
    assert result.returncode == 1
    assert "run `meeting-gateway db upgrade`" in result.stderr
    upgraded = db_upgrade(pg_url)
    assert upgraded.returncode == 0 and "head revision" in upgraded.stdout


def test_workers_need_redis(keys_dir) -> None:
    result = serve_refused(keys_dir, "--workers", "2", REDIS_URL="")
    assert result.returncode == 2 and "REDIS_URL" in result.stderr


@pytest.mark.parametrize(
    ("redis_url", "why"),
    [
        ("redis://nobody:wrong@127.0.0.1:6379/0", "invalid username-password pair"),
        ("redis://127.0.0.1:6379/99", "DB index is out of range"),
    ],
)
def test_serve_refuses_a_redis_that_refuses_it(keys_dir, redis_url: str, why: str) -> None:
    """A wrong password or database index will not heal: one line and exit 1, not a replica
    that starts and stays unready (an unreachable Redis is waited for instead)."""
    result = serve_refused(keys_dir, "--port", "1", REDIS_URL=redis_url)
    assert result.returncode == 1, result.stderr
    assert why in result.stderr and "REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr and "wrong" not in result.stderr
