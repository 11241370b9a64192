"""Faults injected for real: a PostgreSQL outage, a SIGKILLed gateway, a Redis restart under two
replicas, a 1,000-viewer join storm, and a database that is down when clients connect.

PostgreSQL and Redis that are stopped here are throwaway servers of the test's own.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.harness import (
    Gateway,
    KeyPair,
    close_code_of,
    expect_close,
    gateway_env,
    handshake,
)
from tests.e2e.speech import Watcher, watch
from tests.e2e.test_resilience import _first_sentence
from tests.e2e.test_scale_out import db_upgrade
from tests.private_pg import PrivatePostgres
from tests.util import PrivateRedis, eventually


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    assert db_upgrade(server.url).returncode == 0
    yield server
    server.destroy()


class Speaker:
    """An ingest stream that says the fixture's first sentence on demand and forces its final."""

    def __init__(self, ws: ClientConnection, frames: list[bytes]) -> None:
        self.ws, self.frames = ws, frames

    @classmethod
    async def open(cls, gw: Gateway, token: str, meeting: str, source: str = "mic") -> Speaker:
        frames, rate, _ = _first_sentence()
        ws = await connect(gw.ingest_url(meeting, token))
        await ws.send(handshake(source=source, sample_rate=rate))
        assert json.loads(await ws.recv())["type"] == "ready"
        return cls(ws, frames)

    async def say(self) -> None:
        for frame in self.frames:
            await self.ws.send(frame)
        await self.ws.send(json.dumps({"type": "finalize"}))

    async def close(self) -> tuple[int, list[dict]]:
        await self.ws.send(json.dumps({"type": "close"}))
        return await expect_close(self.ws, timeout=60)


def numbers(watcher: Watcher) -> list[int]:
    return [f["segment_no"] for f in watcher.finals()]


async def finals_reach(watchers: list[Watcher], count: int, timeout: float = 60) -> None:
    for watcher in watchers:
        await watcher.wait_for(lambda w: len(w.finals()) >= count, timeout=timeout)


def stored_finals(gw: Gateway, keypair: KeyPair, meeting: str) -> list[dict]:
    response = gw.get(f"/api/v1/meetings/{meeting}/transcript", keypair.token(roles=["viewer"]))
    assert response.status_code == 200, response.text
    return response.json()["segments"]


def outbox_stats(gw: Gateway, keypair: KeyPair) -> dict:
    return gw.get("/api/v1/ws/stats", keypair.token(roles=["ops"])).json()["outbox"]


def same_finals(live: Watcher, stored: list[dict]) -> None:
    """The store holds exactly what viewers got live: each final once, same numbers and text."""
    assert [s["segment_no"] for s in stored] == numbers(live)
    assert [s["text"] for s in stored] == [f["text"] for f in live.finals()]


async def test_database_down_at_connect_viewers_join_and_ingest_starts_from_outbox(
    start_gateway, keypair: KeyPair, meeting: str, private_pg: PrivatePostgres
) -> None:
    """During a database outage new viewers join and new ingest streams start (the meeting's
    counter and outbox hold what they need); their finals go live, and the stream rows and
    finals are written when the database is back. History (`since=`) and exports need the
    database: 4503/503 until then, never 1011."""
    gw = start_gateway(private_pg.url)
    ingest, viewer_token = keypair.token(roles=["ingest"]), keypair.token(roles=["viewer"])
    before = await Speaker.open(gw, ingest, meeting)
    await before.say()
    assert (await before.close())[0] == 1000
    private_pg.stop()

    viewer = await watch(gw.subscribe_url(meeting, viewer_token))
    opened_at = datetime.now(UTC)
    speaker = await Speaker.open(gw, ingest, meeting, source="system")  # "ready": it started
    await speaker.say()
    await finals_reach([viewer], 1)
    assert numbers(viewer) == [2]
    assert outbox_stats(gw, keypair)["depth"] >= 1
    assert await close_code_of(gw.subscribe_url(meeting, viewer_token, since=0)) == 4503
    rest = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer_token)
    assert rest.status_code == 503
    code, messages = await speaker.close()
    assert code == 1000 and messages[-1]["finals"] == 1

    back_at = datetime.now(UTC)
    private_pg.start()
    await eventually(
        lambda: outbox_stats(gw, keypair)["depth"] == 0, within=60, interval=0.5, what="drained"
    )
    assert [s["segment_no"] for s in stored_finals(gw, keypair, meeting)] == [1, 2]

    async def rows() -> list:
        conn = await asyncpg.connect(private_pg.url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return await conn.fetch(
                "SELECT source, started_at, ended_at FROM ingest_streams WHERE meeting_id = $1",
                meeting,
            )
        finally:
            await conn.close()

    async def both_rows_closed() -> bool:
        found = await rows()
        return sorted(r["source"] for r in found if r["ended_at"] is not None) == ["mic", "system"]

    await eventually(both_rows_closed, within=60, interval=0.5, what="stream rows written")
    # The row written late says when the stream started, not when the database came back:
    # exports place the stream's lines from it (they were late by the whole outage).
    (system,) = [r for r in await rows() if r["source"] == "system"]
    started_at = system["started_at"]
    started_at = started_at.replace(tzinfo=UTC) if started_at.tzinfo is None else started_at
    assert opened_at - timedelta(seconds=1) <= started_at < back_at, (opened_at, back_at)
    await viewer.close()
    logs = gw.logs()
    # A 1011 shows as `"code": 1011` on "connection ended" (a bare "1011" matches timestamps).
    assert "Traceback" not in logs and '"code": 1011' not in logs


async def marks_vouched_for(redis_url: str, prefix: str) -> None:
    """Wait until a replica has marked the stored meetings in Redis and set the epoch: only
    then can a meeting be numbered as new while the database is down."""
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(redis_url)
    try:
        await eventually(lambda: client.exists(f"{prefix}segno-epoch"), what="the epoch set")
    finally:
        await client.aclose()


async def speak_during_an_outage(
    gw: Gateway, keypair: KeyPair, meeting: str, private_pg: PrivatePostgres, redis: tuple
) -> tuple[Watcher, Speaker]:
    """Once Redis vouches for its marks, the database goes down; then a viewer and a speaker
    of a new meeting, whose first final the viewer has."""
    await marks_vouched_for(*redis)
    private_pg.stop()
    viewer = await watch(gw.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    speaker = await Speaker.open(gw, keypair.token(roles=["ingest"]), meeting)
    await speaker.say()
    await finals_reach([viewer], 1)
    return viewer, speaker


async def new_meeting_kept_through_an_outage(
    gw: Gateway, keypair: KeyPair, meeting: str, private_pg: PrivatePostgres, redis: tuple
) -> None:
    """A new meeting spoken in during a database outage: numbered from 1, its final live, and
    stored once when the database is back."""
    viewer, speaker = await speak_during_an_outage(gw, keypair, meeting, private_pg, redis)
    assert numbers(viewer) == [1]
    code, messages = await speaker.close()
    assert code == 1000 and messages[-1]["finals"] == 1, messages
    private_pg.start()
    await eventually(
        lambda: outbox_stats(gw, keypair)["depth"] == 0, within=60, interval=0.5, what="drained"
    )
    same_finals(viewer, stored_finals(gw, keypair, meeting))
    await viewer.close()


async def test_a_meeting_first_spoken_in_during_a_database_outage_keeps_its_finals(
    start_gateway,
    keypair: KeyPair,
    meeting: str,
    private_pg: PrivatePostgres,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """With Redis, a meeting that starts while the database is down is numbered from 1 (Redis
    never numbered it: nothing of it is stored), its finals go live, and they are stored once
    the database is back (it closed 4503 with every final lost)."""
    gw = start_gateway(private_pg.url, REDIS_URL=redis_url, REDIS_KEY_PREFIX=redis_prefix)
    redis = (redis_url, redis_prefix)
    await new_meeting_kept_through_an_outage(gw, keypair, meeting, private_pg, redis)


async def test_after_redis_lost_its_data_a_later_database_outage_keeps_a_new_meetings_finals(
    start_gateway,
    keypair: KeyPair,
    meeting: str,
    private_pg: PrivatePostgres,
    private_redis: PrivateRedis,
) -> None:
    """Redis restarted without its data while the database answered: the replica marks the
    stored meetings again and sets a new epoch by itself (it noticed the loss only when a seed
    failed, in an outage, too late to mark; a new meeting's finals were then refused and lost)."""
    gw = start_gateway(private_pg.url, REDIS_URL=private_redis.url)
    redis = (private_redis.url, "")
    await marks_vouched_for(*redis)
    await private_redis.stop()
    await private_redis.start()  # no persistence: the epoch and the marks are gone
    await new_meeting_kept_through_an_outage(gw, keypair, meeting, private_pg, redis)


async def test_every_worker_reports_the_replicas_outbox(
    start_gateway,
    keypair: KeyPair,
    meeting: str,
    private_pg: PrivatePostgres,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """`serve --workers 2`, the database down: a final waits in one worker's outbox, and
    whichever worker answers, stats and /metrics say so (and that the store is unreachable);
    once it is written they all say the outbox is empty."""
    from tests.e2e.test_observability import scrape

    gw = start_gateway(
        private_pg.url, "--workers", "2", REDIS_URL=redis_url, REDIS_KEY_PREFIX=redis_prefix
    )
    redis = (redis_url, redis_prefix)
    viewer, speaker = await speak_during_an_outage(gw, keypair, meeting, private_pg, redis)
    depth = ("meeting_gateway_outbox_depth", ())
    waiting = {"depth": 1, "oldest_age_s": 0, "store_reachable": False}

    def waiting_everywhere() -> bool:  # new connections: both workers answer some
        # (Unreachable once a final has waited a few seconds: not a final between its append
        # and its insert.)
        return all(
            outbox_stats(gw, keypair) | {"oldest_age_s": 0} == waiting and scrape(gw)[depth] == 1
            for _ in range(8)
        )

    await eventually(waiting_everywhere, within=60, interval=0.5, what="every worker says so")
    assert (await speaker.close())[0] == 1000

    private_pg.start()

    def all_written() -> bool:
        return all(
            outbox_stats(gw, keypair)["depth"] == 0 and scrape(gw)[depth] == 0 for _ in range(8)
        )

    await eventually(all_written, within=60, interval=0.5, what="every worker says written")
    await viewer.close()


async def test_postgres_down_for_60s_finals_stay_live_and_are_stored_once(
    start_gateway, keypair: KeyPair, meeting: str, private_pg: PrivatePostgres
) -> None:
    gw = start_gateway(private_pg.url)
    viewer = await watch(gw.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    speaker = await Speaker.open(gw, keypair.token(roles=["ingest"]), meeting)
    await speaker.say()
    await finals_reach([viewer], 1)
    # With the database up, a final is stored before viewers see it (since= will find it).
    stored_now = {s["segment_no"] for s in stored_finals(gw, keypair, meeting)}
    assert set(numbers(viewer)) <= stored_now
    private_pg.stop()
    down_at = time.monotonic()
    during = 0
    while time.monotonic() - down_at < 60:
        await speaker.say()
        await finals_reach([viewer], len(viewer.finals()) + 1)  # live, with the database down
        during += 1
        # Keep the database down for a full minute, with finals spread over it.
        await asyncio.sleep(max(0.0, min(15.0, 60 - (time.monotonic() - down_at))))
    waiting = outbox_stats(gw, keypair)
    assert waiting["depth"] >= during >= 3 and waiting["oldest_age_s"] > 30
    assert not waiting["store_reachable"]
    # The strict check fails; the live one (the Deployment's probe) keeps the replica serving.
    assert gw.get("/readyz").status_code == 503
    live = gw.get("/readyz/live")
    assert live.status_code == 200 and live.json()["checks"]["database"] is False
    private_pg.start()
    await eventually(
        lambda: outbox_stats(gw, keypair)["depth"] == 0, within=60, interval=0.5, what="drained"
    )
    await speaker.say()  # and the stream goes on
    await finals_reach([viewer], len(viewer.finals()) + 1)
    assert (await speaker.close())[0] == 1000
    await viewer.close()
    assert numbers(viewer) == list(range(1, len(numbers(viewer)) + 1))
    same_finals(viewer, stored_finals(gw, keypair, meeting))


async def test_gateway_killed_during_an_outage_writes_its_outbox_after_restart(
    start_gateway,
    keypair: KeyPair,
    meeting: str,
    private_pg: PrivatePostgres,
    keys_dir: Path,
    tmp_path: Path,
) -> None:
    outbox = str(tmp_path / "outbox")  # the volume that outlives the process
    gw = start_gateway(private_pg.url, OUTBOX_DIR=outbox)
    viewer = await watch(gw.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    speaker = await Speaker.open(gw, keypair.token(roles=["ingest"]), meeting)
    await speaker.say()
    await finals_reach([viewer], 1)
    private_pg.stop()
    for _ in range(2):
        await speaker.say()
        await finals_reach([viewer], len(viewer.finals()) + 1)
    waiting = outbox_stats(gw, keypair)["depth"]
    assert waiting >= 2
    # The recording worker polls the database each second: one warning for the outage.
    await eventually(
        lambda: outbox_stats(gw, keypair)["oldest_age_s"] >= 3, within=60, what="3 s of outage"
    )
    assert gw.logs().count("recording job claims failing") == 1
    gw.stop(signal.SIGKILL)
    await viewer.close()

    # Restarted while the database is still down: it starts (not ready) and keeps the outbox.
    env = gateway_env(keys_dir, private_pg.url, OUTBOX_DIR=outbox)
    again = Gateway(env, tmp_path / "again.log", ready_path="/healthz")
    again.start()
    try:
        assert again.get("/readyz").status_code == 503
        # Its schema was never checked: not ready for live traffic either.
        assert again.get("/readyz/live").status_code == 503
        assert outbox_stats(again, keypair)["depth"] == waiting
        private_pg.start()
        await eventually(
            lambda: outbox_stats(again, keypair)["depth"] == 0,
            within=60,
            interval=0.5,
            what="drained",
        )
        await eventually(lambda: again.get("/readyz").status_code == 200, within=30, interval=0.5)
        assert again.get("/readyz/live").status_code == 200
        assert numbers(viewer) == list(range(1, len(numbers(viewer)) + 1))
        same_finals(viewer, stored_finals(again, keypair, meeting))
        assert "Traceback" not in again.logs()
        # LOG_FORMAT=json: the start during the outage said so in JSON too, as every line.
        lines = again.logs().splitlines()
        assert [line for line in lines if not line.startswith("{")] == []
        assert any("database unreachable" in json.loads(line)["event"] for line in lines)
    finally:
        again.stop()


async def test_redis_restart_under_two_replicas_loses_and_repeats_no_number(
    start_gateway,
    keypair: KeyPair,
    meeting: str,
    pg_url: str,
    private_redis: PrivateRedis,
) -> None:
    assert db_upgrade(pg_url).returncode == 0
    env = {"REDIS_URL": private_redis.url}
    replicas = [start_gateway(pg_url, **env), start_gateway(pg_url, **env)]
    viewer_token = keypair.token(roles=["viewer"])
    watchers = [await watch(gw.subscribe_url(meeting, viewer_token)) for gw in replicas * 2]
    ingest = keypair.token(roles=["ingest"])
    # Each replica numbers the finals of one source of the same meeting.
    speakers = [
        await Speaker.open(replicas[0], ingest, meeting, "mic"),
        await Speaker.open(replicas[1], ingest, meeting, "system"),
    ]
    expected = 0
    for round_ in range(3):
        if round_ == 1:
            await private_redis.stop()
            await private_redis.start()  # no persistence: every counter and lease is gone
        for speaker in speakers:
            await speaker.say()
            expected += 1
            await finals_reach(watchers, expected, timeout=90)
    for speaker in speakers:
        assert (await speaker.close())[0] == 1000
    for watcher in watchers:
        await watcher.close()
    stored = stored_finals(replicas[0], keypair, meeting)
    assert [s["segment_no"] for s in stored] == list(range(1, len(stored) + 1))
    for watcher in watchers:
        same_finals(watcher, stored)


async def test_a_thousand_viewers_join_at_once_and_all_get_the_next_final(
    start_gateway, keypair: KeyPair, meeting: str, redis_url: str, redis_prefix: str
) -> None:
    gw = start_gateway(
        None,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=redis_prefix,
        MAX_WS_CLIENTS_PER_MEETING="1500",
        # A small pool: the storm must queue for connections, not fail (a wait for a pooled
        # connection sized for a loaded machine: the 5 s default ended joins there with 4503).
        REDIS_MAX_CONNECTIONS="8",
        REDIS_POOL_TIMEOUT_S="60",
    )
    url = gw.subscribe_url(meeting, keypair.token(roles=["viewer"]))

    async def join() -> Watcher:
        ws = await connect(url, open_timeout=60)
        watcher = Watcher(ws)
        watcher.task = asyncio.create_task(watcher._collect())
        await ws.send(json.dumps({"type": "ping"}))  # answered once the viewer is in
        return watcher

    watchers = await asyncio.gather(*(join() for _ in range(1000)))
    try:
        for watcher in watchers:
            await watcher.wait_for(lambda w: bool(w.of_type("pong")), timeout=120)
        assert all(w.close_code is None for w in watchers)
        speaker = await Speaker.open(gw, keypair.token(roles=["ingest"]), meeting)
        await speaker.say()
        await finals_reach(watchers, 1, timeout=120)
        assert {numbers(w)[0] for w in watchers} == {1}
        await speaker.close()
    finally:
        await asyncio.gather(*(w.close() for w in watchers))
    stats = gw.get("/api/v1/ws/stats", keypair.token(roles=["ops"])).json()
    assert stats["closes_by_code"].get("4503", 0) == 0


@pytest.mark.parametrize("room", ["open", "closed"])
async def test_a_viewer_resuming_as_the_database_returns_gets_what_the_outbox_still_holds(
    start_gateway, keypair: KeyPair, meeting: str, private_pg: PrivatePostgres, room: str
) -> None:
    """Finals spoken during an outage reach the room's viewers live and wait in the outbox. A
    viewer resuming with `since=` the moment the database answers again, before the outbox has
    written them, gets them from the history: it waits for the store to catch up, whether the
    meeting's room still has viewers (it knows what it handed out) or closed with the last one
    (the outbox knows what waits in it)."""
    gw = start_gateway(private_pg.url)
    viewer_token = keypair.token(roles=["viewer"])
    viewer = await watch(gw.subscribe_url(meeting, viewer_token))
    speaker = await Speaker.open(gw, keypair.token(roles=["ingest"]), meeting)
    await speaker.say()
    await finals_reach([viewer], 1)
    private_pg.stop()
    await speaker.say()
    await speaker.say()
    await finals_reach([viewer], 3)
    if room == "closed":
        await viewer.close()
    # The outbox's retries back off to their cap (2.5 to 5 s apart) within about 12 s: it is
    # most likely asleep when the database returns, so the resume below reads the store first.
    await eventually(
        lambda: outbox_stats(gw, keypair)["oldest_age_s"] > 12, within=60, what="backed off"
    )
    private_pg.start()
    resumed = None
    deadline = time.monotonic() + 60
    while resumed is None:  # 4503 while the database is not answering yet, as a client sees
        try:
            resumed = await watch(gw.subscribe_url(meeting, viewer_token, since=1))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4503
            assert time.monotonic() < deadline, "the database never answered"
            await asyncio.sleep(0.05)  # a client's retry delay, not a wait for a condition
    assert numbers(resumed) == [2, 3]  # the history, before the subscription's pong
    await speaker.say()
    await resumed.wait_for(lambda w: 4 in numbers(w))
    assert (await speaker.close())[0] == 1000
    await resumed.close()
    assert numbers(resumed) == [2, 3, 4]
    stored = stored_finals(gw, keypair, meeting)
    assert [s["text"] for s in stored[1:]] == [f["text"] for f in resumed.finals()]
    if room == "open":
        await finals_reach([viewer], 4)
        await viewer.close()
        same_finals(viewer, stored)
