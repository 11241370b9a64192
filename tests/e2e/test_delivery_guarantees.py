"""Delivery guarantees through a real gateway process, faults injected for real: a reconnect
storm of 500 viewers resuming with `since=`, and a reader that never reads next to one that does
(closed 4408 while the other gets every final in order, with the process's memory bounded)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from pathlib import Path

from store.base import NewFinal
from store.migrate import open_store
from tests.e2e.harness import Gateway, KeyPair
from tests.e2e.speech import Watcher, watch
from tests.util import eventually


def _final(meeting: str, segment_no: int, text: str) -> bytes:
    return json.dumps(
        {
            "type": "transcript.final",
            "meeting_id": meeting,
            "segment_no": segment_no,
            "text": text,
            "start_ms": segment_no * 1000,
            "end_ms": segment_no * 1000 + 900,
            "speaker": None,
            "confidence": None,
            "source": "mic",
            "ts": "2026-11-30T12:00:00.000Z",
        },
        separators=(",", ":"),
    ).encode()


async def _stored_meeting(url: str, meeting: str, finals: int) -> None:
    store = await open_store(url)
    try:
        await store.claim_meeting("acme", meeting)
        for n in range(1, finals + 1):
            final = NewFinal(text=f"stored {n}", start_ms=n, end_ms=n + 1, source="mic")
            await store.append_final("acme", meeting, final)
    finally:
        await store.aclose()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_500_viewers_resuming_at_once_each_get_exactly_what_they_missed(
    start_gateway, keypair: KeyPair, meeting: str, private_redis, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    await _stored_meeting(url, meeting, 20)
    gw = start_gateway(url, REDIS_URL=private_redis.url, MAX_WS_CLIENTS_PER_MEETING="600")
    viewer = keypair.token(roles=["viewer"])
    sinces = [n % 20 for n in range(500)]  # every viewer left off somewhere else
    watchers: list[Watcher] = []
    try:
        watchers = list(
            await asyncio.gather(
                *(watch(gw.subscribe_url(meeting, viewer, since=since)) for since in sinces)
            )
        )
        for since, watcher in zip(sinces, watchers, strict=True):
            assert [f["segment_no"] for f in watcher.finals()] == list(range(since + 1, 21))
        # ...and the next final reaches every one of them, once.
        publisher = private_redis.client()
        try:
            await publisher.publish(f"meeting:acme:{meeting}:transcript", _final(meeting, 21, "x"))
        finally:
            await publisher.aclose()
        for since, watcher in zip(sinces, watchers, strict=True):
            await watcher.wait_for(lambda w: any(f["segment_no"] == 21 for f in w.finals()), 90)
            assert [f["segment_no"] for f in watcher.finals()] == list(range(since + 1, 22))
    finally:
        await asyncio.gather(*(w.close() for w in watchers))


async def test_a_since_above_every_number_of_the_meeting_misses_none_of_its_next_finals(
    start_gateway, keypair: KeyPair, meeting: str, private_redis, tmp_path: Path
) -> None:
    """A viewer that carries a number over from elsewhere (the meeting id used again after its
    deletion) must get the finals numbered after what the meeting has, not drop them as held;
    a number the meeting's counter has handed out (finals not stored yet) is still honoured."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    await _stored_meeting(url, meeting, 2)
    gw = start_gateway(url, REDIS_URL=private_redis.url)
    viewer = keypair.token(roles=["viewer"])
    client = private_redis.client()
    topic = f"meeting:acme:{meeting}:transcript"
    watchers: list[Watcher] = []
    try:
        ahead = await watch(gw.subscribe_url(meeting, viewer, since=5))
        watchers.append(ahead)
        await client.publish(topic, _final(meeting, 3, "three"))
        await ahead.wait_for(lambda w: w.finals(), 30)
        assert [f["segment_no"] for f in ahead.finals()] == [3]
        # Told first that what it holds is not this meeting's (it should resubscribe with 0).
        (told,) = [m for m in ahead.messages if m["type"] == "status"]
        assert ahead.messages[0] is told, ahead.messages
        assert (told["event"], told["since"], told["last_segment_no"]) == ("since.beyond", 5, 2)
        assert told["meeting_id"] == meeting and told["segment_no"] is None

        # Another replica has numbered up to 8 (its finals are not stored yet): since=7 holds.
        await client.set(f"segno:acme:{meeting}", 8)
        resumed = await watch(gw.subscribe_url(meeting, viewer, since=7))
        watchers.append(resumed)
        await client.publish(topic, _final(meeting, 6, "six"))
        await client.publish(topic, _final(meeting, 9, "nine"))
        await resumed.wait_for(lambda w: w.finals(), 30)
        assert [f["segment_no"] for f in resumed.finals()] == [9]
        assert not [m for m in resumed.messages if m["type"] == "status"]  # a number it had
    finally:
        await client.aclose()
        await asyncio.gather(*(w.close() for w in watchers))


def _stalled_viewer(gw: Gateway, meeting: str, token: str) -> socket.socket:
    """A viewer that completes the handshake and never reads again (tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/v1/ws/meetings/{meeting}?token={token} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    return sock


async def test_a_reader_that_never_reads_is_closed_4408_while_another_gets_every_final(
    start_gateway, keypair: KeyPair, meeting: str, private_redis
) -> None:
    """5,000 finals of 8 KiB (40 MiB, which no queue may hold) go to a meeting with a reader and a
    viewer that stopped reading. The stalled one is closed 4408 once its byte-bounded queue
    overflows; the reader gets every final in order; the gateway's memory stays bounded."""
    gw = start_gateway(None, REDIS_URL=private_redis.url, MAX_WS_CLIENTS_PER_MEETING="10")
    assert gw.process is not None
    viewer, ops = keypair.token(roles=["viewer"]), keypair.token(roles=["ops"])
    reader = await watch(gw.subscribe_url(meeting, viewer))
    stalled = _stalled_viewer(gw, meeting, viewer)
    stats = f"/api/v1/ws/meetings/{meeting}/stats"
    await eventually(lambda: gw.get(stats, ops).json()["local_subscribers"] == 2, within=10)
    before = _rss_kib(gw.process.pid)
    publisher = private_redis.client()
    count, text = 5000, "w" * 8192
    try:
        for n in range(1, count + 1):
            await publisher.publish(f"meeting:acme:{meeting}:transcript", _final(meeting, n, text))
        await reader.wait_for(lambda w: len(w.finals()) == count, timeout=120)
        assert [f["segment_no"] for f in reader.finals()] == list(range(1, count + 1))

        def closed_slow() -> bool:
            closes = gw.get("/api/v1/ws/stats", ops).json()["closes_by_code"]
            return closes.get("4408") == 1

        # Its close frame cannot be written either: it is dropped after the close timeout.
        await eventually(closed_slow, within=30, interval=0.2, what="the stalled viewer: 4408")
        grown_mib = (_rss_kib(gw.process.pid) - before) / 1024
        # The stalled viewer's queue is capped at SUBSCRIBER_QUEUE_MAX_BYTES (1 MiB); what else
        # grows is allocator slack. Holding the 40 MiB would show.
        assert grown_mib < 24, f"gateway memory grew {grown_mib:.1f} MiB"
    finally:
        stalled.close()
        await publisher.aclose()
        await reader.close()


async def test_the_resuming_client_starts_over_on_a_meeting_whose_id_was_used_again(
    start_gateway, keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    """It resumes with since=5 a meeting deleted and made again since (two finals now): told
    so, it hands the notice on (the app drops the old lines) and reads the new meeting whole."""
    from gateway.client.resume import Backoff, follow
    from gateway.client.urls import subscribe_url

    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    await _stored_meeting(url, meeting, 2)
    gw = start_gateway(url)
    received: list[dict] = []
    stop = asyncio.Event()

    def on_message(message: dict) -> None:
        received.append(message)
        if [m.get("segment_no") for m in received if m["type"] == "transcript.final"] == [1, 2]:
            stop.set()

    following = asyncio.create_task(
        follow(
            subscribe_url(gw.http, meeting),
            keypair.token(roles=["viewer"]),
            on_message=on_message,
            since=5,
            backoff=Backoff(base_s=0.2, cap_s=1.0, max_attempts=5),
            stop=stop,
        )
    )
    try:
        await asyncio.wait_for(stop.wait(), 60)
    finally:
        stop.set()
        await asyncio.wait_for(following, 30)
    assert received[0]["event"] == "since.beyond", received
    finals = [m for m in received if m["type"] == "transcript.final"]
    assert [(f["segment_no"], f["text"]) for f in finals] == [(1, "stored 1"), (2, "stored 2")]
