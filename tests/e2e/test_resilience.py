"""Failures and shutdowns: accepted audio survives, errors are reported with documented codes."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from gateway.client.audio import load_wav_pcm
from gateway.client.ingest import stream_pcm
from gateway.client.urls import ingest_url
from tests.conftest import PG_ADMIN_DSN
from tests.e2e.harness import (
    Gateway,
    KeyPair,
    close_code_of,
    expect_close,
    handshake,
    word_error_rate,
)
from tests.e2e.speech import fixture, stream_fixture, watch
from tests.e2e.test_scale_out import db_upgrade
from tests.openapi_check import assert_answer_matches
from tests.util import eventually, sessions_waiting_on_locks


def _first_sentence() -> tuple[list[bytes], int, str]:
    path, sentences = fixture("two_sentences_16k_mono.wav")
    pcm, rate, _ = load_wav_pcm(path)
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
        # Every frame accepted (read by the gateway; frames still in flight when a drain begins
        # are the reconnecting client's to re-send), but no close from the client: the gateway
        # is told to stop mid-stream, drains, and exits 0.
        ops, stats = keypair.token(roles=["ops"]), f"/api/v1/ws/meetings/{meeting}/stats"

        def accepted() -> bool:
            streams = gw.get(stats, ops).json()["ingest_streams"]
            return bool(streams) and streams[0]["frames"] == len(frames)

        await eventually(accepted, within=30, interval=0.05, what="every frame accepted")
        assert gw.stop(signal.SIGTERM) == 0
        assert "Application shutdown complete" in gw.logs()
        code, _ = await expect_close(ws)
    assert code == 1012  # service restart: reconnect
    again = start_gateway(database)
    viewer = keypair.token(roles=["viewer"])
    stored = again.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()["segments"]
    assert len(stored) == 1
    heard = "".join(c for c in stored[0]["text"].lower() if c.isalnum() or c.isspace())
    assert word_error_rate(sentence, heard) <= 0.34, (sentence, heard)


async def test_database_lost_mid_stream_is_4503_and_readyz_fails(
    start_gateway, keypair: KeyPair, meeting: str, pg_url: str
) -> None:
    assert db_upgrade(pg_url).returncode == 0
    gw = start_gateway(pg_url, STORE_RETRY_S="1")
    # A shared database without Redis: said at start (an empty REDIS_URL in a Secret would
    # leave replicas apart without a word).
    assert "REDIS_URL is unset: this replica shares neither" in gw.logs()
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
        await ws.send(json.dumps({"type": "finalize"}))  # the final must be written now
        code, messages = await expect_close(ws, timeout=60)
    assert code == 4503  # after retrying the write for STORE_RETRY_S
    assert messages[-1]["type"] == "error" and messages[-1]["code"] == 4503
    # Counted, apart from the other 4503s (the on-call tester could not tell them apart).
    assert 'meeting_gateway_finals_not_kept_total{tenant="acme"} 1.0' in gw.get("/metrics").text
    ready = gw.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
    viewer = keypair.token(roles=["viewer"])
    assert await close_code_of(gw.subscribe_url(meeting, viewer)) == 4503
    rest = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer)
    assert rest.status_code == 503 and rest.json()["error"]["message"]
    assert rest.headers["retry-after"] == "5"
    # The meeting's stats say what this replica knows, and what it cannot (it was a 503).
    stats = gw.get(f"/api/v1/ws/meetings/{meeting}/stats", keypair.token(roles=["ops"]))
    assert stats.status_code == 200, stats.text
    assert stats.json()["unavailable"] == ["database"] and stats.json()["final_count"] is None
    assert stats.json()["local_subscribers"] == 0
    spec = gw.get("/api/v1/openapi.json").json()  # the nulls are documented
    assert_answer_matches(spec, "get", "/api/v1/ws/meetings/{meeting_id}/stats", stats.json())


async def test_an_exhausted_pool_is_told_apart_from_an_outage(
    start_gateway, keypair: KeyPair, meeting: str, pg_url: str
) -> None:
    """Every connection in use (a request holds the only one, waiting on a lock): the 503 says
    no connection was free (the pool cannot tell load from a database not answering), and its
    log line is not an outage's."""
    assert db_upgrade(pg_url).returncode == 0
    gw = start_gateway(pg_url, DB_POOL_SIZE="1", DB_MAX_OVERFLOW="0")
    dsn = pg_url.replace("postgresql+asyncpg", "postgresql")
    holder = await asyncpg.connect(dsn)
    try:
        await holder.execute(
            "INSERT INTO meetings (tenant_id, meeting_id, created_at, last_segment_no) "
            "VALUES ('acme', $1, now(), 0)",
            meeting,
        )
        editor = keypair.token(roles=["editor"])
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM meetings WHERE tenant_id = 'acme' AND meeting_id = $1 FOR UPDATE",
                meeting,
            )
            # The rename waits on the row, holding the pool's only connection.
            rename = asyncio.create_task(
                asyncio.to_thread(gw.patch, f"/api/v1/meetings/{meeting}", editor, title="x")
            )
            await eventually(lambda: sessions_waiting_on_locks(pg_url), what="the rename waits")
            viewer = {"Authorization": f"Bearer {keypair.token(roles=['viewer'])}"}
            async with httpx.AsyncClient(timeout=60) as client:  # the pool waits 10 s first
                busy = await client.get(f"{gw.http}/api/v1/meetings", headers=viewer)
        assert (await rename).is_success
    finally:
        await holder.close()
    assert busy.status_code == 503, busy.text
    assert "no database connection was free in time" in busy.json()["error"]["message"]
    assert busy.headers["retry-after"] == "5"
    assert "database pool exhausted" in gw.logs() and "dependency unavailable" not in gw.logs()


async def test_finals_reach_the_store_while_requests_hold_every_pooled_connection(
    start_gateway, keypair: KeyPair, meeting: str, pg_url: str
) -> None:
    """The live path has connections of its own: a request holding the only connection of the
    pool (waiting on a lock) neither fails nor delays a live meeting's finals (the counter's
    seed and the next number's prediction read on the live path too)."""
    assert db_upgrade(pg_url).returncode == 0
    # The held request waits as long as the test needs (not the default 30 s statement limit).
    held_url = pg_url + ("&" if "?" in pg_url else "?") + "command_timeout=600"
    gw = start_gateway(held_url, DB_POOL_SIZE="1", DB_MAX_OVERFLOW="0")
    dsn = pg_url.replace("postgresql+asyncpg", "postgresql")
    other = f"{meeting}-locked"
    holder, reader = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    editor = {"Authorization": f"Bearer {keypair.token(roles=['editor'])}"}
    try:
        await holder.execute(
            "INSERT INTO meetings (tenant_id, meeting_id, created_at, last_segment_no) "
            "VALUES ('acme', $1, now(), 0)",
            other,
        )
        async with httpx.AsyncClient(timeout=600) as client:
            async with holder.transaction():
                lock = "SELECT 1 FROM meetings WHERE tenant_id = 'acme' AND meeting_id = $1"
                await holder.execute(lock + " FOR UPDATE", other)
                rename = asyncio.create_task(
                    client.patch(
                        f"{gw.http}/api/v1/meetings/{other}", headers=editor, json={"title": "x"}
                    )
                )
                await eventually(lambda: sessions_waiting_on_locks(pg_url), what="the rename waits")
                summary = await stream_fixture(
                    gw,
                    keypair.token(roles=["ingest"]),
                    meeting,
                    "two_sentences_16k_mono.wav",
                    speed=6,
                )
                assert summary.close_code == 1000

                async def stored() -> bool:
                    query = (
                        "SELECT count(*) FROM segments WHERE tenant_id = 'acme' AND meeting_id = $1"
                    )
                    return int(await reader.fetchval(query, meeting)) >= 2

                await eventually(stored, within=120, what="both finals in the store")
                assert not rename.done()  # the pool's only connection was held throughout
            assert (await rename).is_success
    finally:
        await holder.close()
        await reader.close()
    # Nothing on the live path waited for the pool (each wait would have been a final's delay).
    assert "could not read last segment_no" not in gw.logs()
    assert "stream row deferred" not in gw.logs()


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
    assert "REDIS_URL is unset" not in gw.logs()


async def test_bus_outage_loses_no_stored_final_and_since_recovers_them(
    start_gateway, keypair: KeyPair, meeting: str, private_redis
) -> None:
    """Redis stops accepting writes mid-stream: publishes fail, finals are still stored."""
    gw = start_gateway(None, REDIS_URL=private_redis.url)
    frames, rate, sentence = _first_sentence()
    admin = private_redis.client()
    try:
        async with connect(gw.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
            await ws.send(handshake(sample_rate=rate))
            assert json.loads(await ws.recv())["type"] == "ready"
            await admin.execute_command("CLIENT", "PAUSE", "4000", "WRITE")
            for frame in frames:
                await ws.send(frame)
            await ws.send(json.dumps({"type": "close"}))
            code, messages = await expect_close(ws, timeout=60)
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
    assert code == 1000 and messages[-1]["finals"] == 1
    viewer = keypair.token(roles=["viewer"])
    late = await watch(gw.subscribe_url(meeting, viewer, since=0))
    await late.close()
    assert len(late.finals()) == 1 and word_error_rate(sentence, late.finals()[0]["text"]) <= 0.34


async def test_viewer_that_stops_reading_is_dropped_and_frees_its_slot(
    start_gateway, keypair: KeyPair, meeting: str, private_redis
) -> None:
    import base64
    import os
    import socket

    gw = start_gateway(
        None, REDIS_URL=private_redis.url, SUBSCRIBER_QUEUE_MAX="50", MAX_WS_CLIENTS_PER_MEETING="1"
    )
    ops = keypair.token(roles=["ops"])
    viewer = keypair.token(roles=["viewer"])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/v1/ws/meetings/{meeting}?token={viewer} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")  # and never read again
    stats = f"/api/v1/ws/meetings/{meeting}/stats"
    await eventually(
        lambda: gw.get(stats, ops).json()["local_subscribers"] == 1, what="the viewer counted"
    )
    publisher = private_redis.client()
    try:
        payload = json.dumps({"type": "transcript.partial", "text": "x" * 4000}).encode()
        for _ in range(2000):
            await publisher.publish(f"meeting:acme:{meeting}:transcript", payload)
    finally:
        await publisher.aclose()
    await eventually(
        lambda: gw.get(stats, ops).json()["subscribers"] == 0,
        within=60,
        what="the slot of a viewer that stopped reading freed",
    )
    sock.close()
    closes = gw.get("/api/v1/ws/stats", ops).json()["closes_by_code"]
    assert closes.get("4408") == 1
    # The slot is free again for a reader.
    fresh = await watch(gw.subscribe_url(meeting, viewer))
    await fresh.close()


async def test_engine_worker_crash_mid_stream_fails_over_and_loses_no_speech(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """The stream moves to a fresh local engine stream (a replacement worker) and the audio
    since the last final is replayed to it: the sentence is still transcribed."""
    import os
    import signal as signals

    frames, rate, sentence = _first_sentence()
    token = keypair.token(roles=["ingest"])
    viewer = await watch(gateway.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    async with connect(gateway.ingest_url(meeting, token)) as ws:
        await ws.send(handshake(sample_rate=rate))
        assert json.loads(await ws.recv())["type"] == "ready"
        for frame in frames[:10]:
            await ws.send(frame)
        workers = _engine_workers(gateway.process.pid)
        assert workers, "the local engine runs in worker processes"
        for pid in workers:
            os.kill(pid, signals.SIGKILL)
        for frame in frames[10:]:
            await ws.send(frame)
        await ws.send(json.dumps({"type": "close"}))
        code, messages = await expect_close(ws, timeout=60)
    assert code == 1000, messages
    assert messages[-1]["type"] == "closed" and messages[-1]["finals"] == 1
    await viewer.wait_for(lambda w: any(m["event"] == "stream.ended" for m in w.of_type("status")))
    await viewer.close()
    switched = [m for m in viewer.of_type("status") if m["event"] == "engine.switched"]
    assert [(m["previous_engine"], m["engine"]) for m in switched] == [("local", "local")]
    [final] = viewer.finals()
    assert word_error_rate(sentence, final["text"]) <= 0.34, final["text"]
    # The pool replaced the dead workers: the next stream of the meeting is transcribed.
    summary = await stream_fixture(gateway, token, meeting, "two_sentences_16k_mono.wav", speed=6)
    assert summary.close_code == 1000 and summary.messages[-1]["finals"] == 2


def _engine_workers(parent: int) -> list[int]:
    """The gateway's spawned engine workers (not multiprocessing's resource tracker)."""
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(proc.name))
    return pids


async def test_finals_missed_while_the_bus_was_disconnected_are_redelivered(
    start_gateway, keypair: KeyPair, meeting: str, private_redis
) -> None:
    """The replica's subscriber connection is down while a final is published: once it is back,
    the viewer gets the final from the store, on the same socket, exactly once."""

    gw = start_gateway(None, REDIS_URL=private_redis.url)
    ops = keypair.token(roles=["ops"])
    viewer = await watch(gw.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    frames, rate, sentence = _first_sentence()
    admin = private_redis.client()
    try:
        async with connect(gw.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
            await ws.send(handshake(sample_rate=rate))
            assert json.loads(await ws.recv())["type"] == "ready"
            # New connections are refused (existing ones stay authenticated), then the
            # replica's subscriber connection is cut: it cannot come back yet.
            await admin.config_set("requirepass", "s3cret")
            replica = gw.get("/api/v1/ws/stats", ops).json()["replica_id"]
            name = f"meeting-gateway:{replica}:bus"
            ids = [c["id"] for c in await admin.client_list() if c.get("name") == name]
            assert len(ids) == 1 and await admin.client_kill_filter(_id=ids[0]) == 1
            for frame in frames:
                await ws.send(frame)
            await ws.send(json.dumps({"type": "finalize"}))
            # Stored: read from the database only (the stats route also asks Redis, whose new
            # connections are refused meanwhile).
            transcript = f"/api/v1/meetings/{meeting}/transcript"
            reader = keypair.token(roles=["viewer"])

            def stored() -> int:
                answer = gw.get(transcript, reader)
                return len(answer.json()["segments"]) if answer.status_code == 200 else 0

            await eventually(lambda: stored() == 1, within=120, what="the final stored")
            assert viewer.finals() == []  # published while this replica was not listening
            await admin.config_set("requirepass", "")
            await viewer.wait_for(lambda w: len(w.finals()) == 1, timeout=20)
            await ws.send(json.dumps({"type": "close"}))
            assert (await expect_close(ws))[0] == 1000
    finally:
        await admin.config_set("requirepass", "")
        await admin.aclose()
    await viewer.wait_for(
        lambda w: any(m.get("event") == "stream.ended" for m in w.of_type("status"))
    )
    await viewer.close()
    assert [f["segment_no"] for f in viewer.finals()] == [1]
    assert word_error_rate(sentence, viewer.finals()[0]["text"]) <= 0.34
    assert gw.get("/api/v1/ws/stats", ops).json()["finals_replayed"] == 1


async def test_engine_catching_up_after_a_stall_is_not_blamed_on_the_client(
    start_gateway, keypair: KeyPair, meeting: str
) -> None:
    """A real-time client keeps sending while the engine stalls (its backlog fills, the gateway
    stops reading, frames queue in the socket). When the engine resumes, that queued burst must
    not count against the client's frame rate."""
    import asyncio
    import os
    import signal as signals

    gw = start_gateway(LOCAL_ENGINE_WORKERS="1", INGEST_FRAMES_PER_S="12")  # burst 24 frames
    path, _ = fixture("two_sentences_16k_mono.wav")
    pcm, rate, channels = load_wav_pcm(path)

    async def stall_engine() -> None:
        (worker,) = _engine_workers(gw.process.pid)
        os.kill(worker, signals.SIGSTOP)
        try:
            await asyncio.sleep(9)  # > the engine's 5 s backlog + the 2 s burst
        finally:
            os.kill(worker, signals.SIGCONT)

    def on_message(message: dict) -> None:
        if message["type"] == "ready":
            stalls.append(asyncio.create_task(stall_engine()))

    stalls: list[asyncio.Task[None]] = []
    summary = await stream_pcm(
        ingest_url(gw.http, meeting),
        keypair.token(roles=["ingest"]),
        pcm * 2,
        sample_rate=rate,
        channels=channels,
        max_fps=10,
        on_message=on_message,
        close_timeout_s=120,
    )
    await asyncio.gather(*stalls)
    assert summary.close_code == 1000, summary.errors
    assert summary.messages[-1]["finals"] == 4


async def test_each_worker_process_owns_an_outbox_file(
    start_gateway, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """`serve --workers 2`: two outbox files, each locked by its worker (tests/store/test_outbox.py
    shows a dead worker's file being taken over)."""
    outbox = tmp_path / "outbox"
    start_gateway(
        None,
        "--workers",
        "2",
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=redis_prefix,
        OUTBOX_DIR=str(outbox),
    )
    await eventually(
        lambda: len(list(outbox.glob("outbox-*.sqlite3"))) == 2,
        within=60,
        what="one outbox file per worker",
    )
    files = sorted(p.name.split(".", 1)[1] for p in outbox.glob("outbox-*.sqlite3"))
    assert files == ["0.sqlite3", "1.sqlite3"]
    for lock in outbox.glob("outbox-*.lock"):  # each is held by a live worker
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


async def test_an_ingest_closes_only_once_its_last_finals_are_stored(
    start_gateway, keypair: KeyPair, pg_url: str, meeting: str
) -> None:
    """Writes slower than the publish wait (here: blocked by a lock) publish finals ahead of
    the store; the stream still closes only once they are stored, which a resuming client's
    `since=` read relies on (docs/protocol.md)."""
    import asyncio

    assert db_upgrade(pg_url).returncode == 0
    gw = start_gateway(pg_url)
    viewer_token = keypair.token(roles=["viewer"])
    viewer = await watch(gw.subscribe_url(meeting, viewer_token))
    blocker = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE segments IN SHARE MODE")  # reads pass, writes wait
        talking = asyncio.create_task(
            stream_fixture(
                gw, keypair.token(roles=["ingest"]), meeting, "two_sentences_16k_mono.wav"
            )
        )
        await viewer.wait_for(lambda w: len(w.finals()) >= 2, timeout=120)

        # Its own connection outside the lock's transaction: pg_stat_activity is a snapshot
        # held until the reading transaction ends.
        probe = await asyncpg.connect(pg_url.replace("+asyncpg", ""))

        async def final_write_waiting() -> bool:
            waiting = await probe.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query ILIKE 'INSERT INTO segments%'"
            )
            return waiting > 0

        try:
            await eventually(final_write_waiting, within=60, what="a final's write waiting")
        finally:
            await probe.close()
        # The stream's end follows its last final at once unless closing waits for the store:
        # a round trip on the viewer's socket after that final would bring it along.
        await viewer.ws.send(json.dumps({"type": "ping"}))
        await viewer.wait_for(lambda w: bool(w.of_type("pong")), timeout=60)
        ended = [m for m in viewer.of_type("status") if m.get("event") == "stream.ended"]
        assert not ended and not talking.done(), "the stream closed before its finals were stored"
        await lock.rollback()
    finally:
        await blocker.close()
    summary = await asyncio.wait_for(talking, 120)
    assert summary.close_code == 1000
    stored = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer_token).json()
    assert [s["segment_no"] for s in stored["segments"]] == [1, 2], stored
    await viewer.wait_for(
        lambda w: any(m.get("event") == "stream.ended" for m in w.of_type("status")), timeout=60
    )
    await viewer.close()


async def test_a_database_that_answers_but_takes_no_write_is_reported_down(
    start_gateway, keypair: KeyPair, meeting: str, pg_url: str
) -> None:
    """A full disk: the database answers the probe's SELECT 1 but refuses every insert. Its
    finals wait in the outbox, and `/readyz` and `dependency_up` say the database is down
    (they said up, and the alert on `dependency_up == 0` never fired) until it takes them."""
    assert db_upgrade(pg_url).returncode == 0
    gw = start_gateway(pg_url)
    dsn = pg_url.replace("postgresql+asyncpg", "postgresql")
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(
            "CREATE FUNCTION refuse_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; END $$;"
            "CREATE TRIGGER full_disk BEFORE INSERT ON segments "
            "FOR EACH ROW EXECUTE FUNCTION refuse_insert()"
        )
        summary = await stream_fixture(
            gw, keypair.token(roles=["ingest"]), meeting, "two_sentences_16k_mono.wav", speed=6
        )
        assert summary.close_code == 1000

        def database_reported(up: bool) -> bool:
            checks = gw.get("/readyz").json()["checks"]
            return checks["database"] is up

        await eventually(lambda: database_reported(False), within=60, what="database down")
        assert gw.get("/readyz").status_code == 503
        metrics = gw.get("/metrics").text
        assert 'meeting_gateway_dependency_up{dependency="database"} 0.0' in metrics
        await admin.execute("DROP TRIGGER full_disk ON segments")
        await eventually(lambda: database_reported(True), within=60, what="database up again")
        count = "SELECT count(*) FROM segments WHERE meeting_id = $1"

        async def both_stored() -> bool:  # the first write back up is enough to be ready
            return await admin.fetchval(count, meeting) == 2

        await eventually(both_stored, within=60, what="both finals written")
        assert await admin.fetchval(count, meeting) == 2  # every final, once
    finally:
        await admin.execute("DROP TRIGGER IF EXISTS full_disk ON segments")
        await admin.close()


class SmallOutboxDisk:
    """A gateway whose outbox is on a 4 MiB tmpfs of its own mount namespace (tests run as root,
    which writes any file: a disk that fills is what refuses its writes), filled on demand."""

    def __init__(self, start_gateway: Callable[..., Gateway], where: Path, **env: str) -> None:
        self.outbox = where / "outbox"
        self.outbox.mkdir()
        self.filler = self.outbox / "filler"
        self.gw = start_gateway(
            None,
            launcher=(
                *("unshare", "-m", "sh", "-c"),
                'mount -t tmpfs -o size=4m outbox "$0" && exec "$@"',
                str(self.outbox),
            ),
            OUTBOX_DIR=str(self.outbox),
            **env,
        )

    def _in_namespace(self, *command: str) -> subprocess.CompletedProcess[str]:
        pid = str(self.gw.process.pid)  # type: ignore[union-attr]
        return subprocess.run(
            ["nsenter", "-t", pid, "-m", *command], capture_output=True, text=True, timeout=60
        )

    def fill(self) -> None:
        filled = self._in_namespace("dd", "if=/dev/zero", f"of={self.filler}", "bs=64k")
        assert "No space left on device" in filled.stderr, filled.stderr

    def free(self) -> None:
        assert self._in_namespace("rm", str(self.filler)).returncode == 0

    def checks(self) -> dict[str, bool]:
        return self.gw.get("/readyz").json()["checks"]


async def test_an_outbox_disk_that_takes_no_write_is_reported_as_the_outbox_not_the_database(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    """The replica's own outbox disk fills up while the database is fine: `/readyz` stayed
    ready (and, once reported, named the database: the alert sent on-call to the wrong system).
    It is reported for as long as it lasts, and the finals spoken meanwhile are kept once there
    is room again."""
    disk = SmallOutboxDisk(start_gateway, tmp_path, STORE_RETRY_S="300")
    gw = disk.gw
    assert disk.checks()["outbox"] is True
    disk.fill()
    talking = asyncio.create_task(
        stream_fixture(
            gw, keypair.token(roles=["ingest"]), meeting, "two_sentences_16k_mono.wav", speed=6
        )
    )
    await eventually(lambda: disk.checks()["outbox"] is False, within=120, what="outbox down")
    assert disk.checks()["database"] is True
    assert gw.get("/readyz").status_code == 503
    metrics = gw.get("/metrics").text
    assert 'meeting_gateway_dependency_up{dependency="outbox"} 0.0' in metrics
    assert 'meeting_gateway_dependency_up{dependency="database"} 1.0' in metrics
    # For as long as the disk is full: the writer's idle round (every 10 s, finding no orphan
    # file) passed for a write that worked, and readiness came back for 5 s of every 10.
    for _ in range(30):
        assert disk.checks()["outbox"] is False
        await asyncio.sleep(0.5)
    assert not talking.done()
    disk.free()
    await eventually(lambda: disk.checks()["outbox"] is True, within=120, what="outbox up again")
    summary = await asyncio.wait_for(talking, 180)
    assert summary.close_code == 1000
    stored = gw.get(f"/api/v1/meetings/{meeting}/transcript", keypair.token(roles=["viewer"]))
    assert [s["segment_no"] for s in stored.json()["segments"]] == [1, 2], stored.text


async def test_an_outbox_disk_with_room_again_is_found_without_a_final_to_write(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    """The disk full, the stream gave up (4503): nothing more is written to the outbox, and an
    unready replica gets no stream to write one. Once there is room, readiness comes back (a
    probe write), and the next stream's finals are kept."""
    disk = SmallOutboxDisk(start_gateway, tmp_path, STORE_RETRY_S="3")
    gw, ingest = disk.gw, keypair.token(roles=["ingest"])
    disk.fill()
    refused = await stream_fixture(gw, ingest, meeting, "two_sentences_16k_mono.wav", speed=6)
    assert refused.close_code == 4503
    await eventually(lambda: disk.checks()["outbox"] is False, within=120, what="outbox down")
    disk.free()
    await eventually(lambda: disk.checks()["outbox"] is True, within=120, what="outbox up again")
    summary = await stream_fixture(gw, ingest, meeting, "two_sentences_16k_mono.wav", speed=6)
    assert summary.close_code == 1000
    stored = gw.get(f"/api/v1/meetings/{meeting}/transcript", keypair.token(roles=["viewer"]))
    assert len(stored.json()["segments"]) == 2, stored.text
