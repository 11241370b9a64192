"""SIGTERM mid-meeting: the application drains (readyz 503, ingest flushed and closed 1012, the
last finals delivered, viewers closed 1012) and the process exits 0 within DRAIN_TIMEOUT_S."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from websockets.asyncio.client import connect

from gateway.client.audio import load_wav_pcm
from gateway.drain import DRAIN_BATCH, VIEWERS_RESTARTING
from tests.e2e.harness import Gateway, KeyPair, expect_close, handshake
from tests.e2e.speech import fixture, watch
from tests.e2e.test_observability import worker_pids
from tests.e2e.test_resilience import _engine_workers
from tests.util import eventually

DRAIN_TIMEOUT_S = 20


def _poll_readyz(gw: Gateway, seen: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            seen.append(httpx.get(f"{gw.http}/readyz", timeout=10, verify=gw.verify).status_code)
        except httpx.HTTPError:
            return  # the server is gone
        time.sleep(0.02)


async def test_sigterm_mid_meeting_drains_and_exits_0(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_gateway(DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S), LOCAL_ENGINE_WORKERS="1")
    viewers = [await watch(gw.subscribe_url(meeting, keypair.token())) for _ in range(3)]
    pcm, rate, _ = load_wav_pcm(fixture("two_sentences_16k_mono.wav")[0])
    frame = rate * 2 // 25  # 40 ms

    async with connect(gw.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ingest:
        await ingest.send(handshake(sample_rate=rate))
        assert json.loads(await ingest.recv())["type"] == "ready"
        # Real time until the first final reached the viewers, then into the second sentence.
        sent = 0
        while not viewers[0].finals() and sent < len(pcm):
            await ingest.send(pcm[sent : sent + frame])
            sent += frame
            await asyncio.sleep(0.04)
        assert viewers[0].finals(), "no final before the end of the audio"
        # Through the second sentence (3.9 s to 6.0 s) and 400 ms of the pause after it: too
        # short to end the utterance (600 ms), so only the drain's flush makes its final, and
        # its speech ended clear of the cut (a final running into the cut is withdrawn).
        while sent < rate * 2 * 64 // 10:
            await ingest.send(pcm[sent : sent + frame])
            sent += frame
            await asyncio.sleep(0.04)
        await viewers[0].wait_for(
            lambda w: any(p["segment_no"] == 2 for p in w.partials()), timeout=30
        )

        statuses: list[int] = []
        stop = threading.Event()
        poller = threading.Thread(target=_poll_readyz, args=(gw, statuses, stop))
        poller.start()
        signalled = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)
        code, messages = await expect_close(ingest, timeout=DRAIN_TIMEOUT_S + 5)
    assert code == 1012
    assert messages[-1]["type"] == "error" and messages[-1]["code"] == 1012

    for viewer in viewers:
        await viewer.wait_for(lambda w: w.close_code is not None, timeout=DRAIN_TIMEOUT_S + 5)
        assert viewer.close_code == 1012
        assert viewer.of_type("error")[-1]["message"] == "server restarting, reconnect with since"
    exit_code = await asyncio.to_thread(gw.process.wait, DRAIN_TIMEOUT_S + 5)
    elapsed = time.monotonic() - signalled
    stop.set()
    poller.join()
    assert exit_code == 0, gw.logs()[-3000:]
    assert elapsed < DRAIN_TIMEOUT_S
    assert 503 in statuses and 200 not in statuses[statuses.index(503) :], statuses

    # Every final is in the store after a restart, and every viewer had all of them, in order.
    env = dict(gw.env)
    restarted = Gateway(env, gw.log_path, port=gw.port)
    restarted.start()
    try:
        stored = restarted.get(
            f"/api/v1/meetings/{meeting}/transcript", keypair.token(), format="json"
        ).json()["segments"]
    finally:
        restarted.stop()
    assert len(stored) >= 2  # the flush turned the sentence still open into a final
    expected = [(s["segment_no"], s["text"]) for s in stored]
    for viewer in viewers:
        assert [(f["segment_no"], f["text"]) for f in viewer.finals()] == expected
    assert [n for n, _ in expected] == list(range(1, len(expected) + 1))


async def test_new_connections_during_drain_get_1012(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_gateway(DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S), LOCAL_ENGINE_WORKERS="1")
    ingest = await connect(gw.ingest_url(meeting, keypair.token(roles=["ingest"])))
    await ingest.send(handshake())
    assert json.loads(await ingest.recv())["type"] == "ready"
    await ingest.send(b"\x00\x00" * 3200)
    # A stalled engine holds the ingest flush, and with it the drain, until it resumes.
    (worker,) = _engine_workers(gw.process.pid)
    os.kill(worker, signal.SIGSTOP)
    try:
        gw.process.send_signal(signal.SIGTERM)
        await eventually(lambda: gw.get("/readyz").status_code == 503, within=30, what="readyz 503")
        assert gw.get("/readyz").json()["status"] == "draining"
        for url in (
            gw.subscribe_url(meeting, keypair.token()),
            gw.ingest_url(meeting, keypair.token(roles=["ingest"])),
        ):
            async with connect(url) as late:
                code, messages = await expect_close(late, timeout=30)
            assert code == 1012 and messages[-1]["code"] == 1012
    finally:
        os.kill(worker, signal.SIGCONT)
    code, _ = await expect_close(ingest, timeout=DRAIN_TIMEOUT_S + 5)
    assert code == 1012
    assert await asyncio.to_thread(gw.process.wait, DRAIN_TIMEOUT_S + 5) == 0


@pytest.fixture
def start_workers(
    start_gateway: Callable[..., Gateway], redis_url: str, redis_prefix: str
) -> Callable[..., Gateway]:
    """`serve --workers 2` on Redis, with `env` on top."""

    def start(**env: str) -> Gateway:
        return start_gateway(
            None, "--workers", "2", REDIS_URL=redis_url, REDIS_KEY_PREFIX=redis_prefix, **env
        )

    return start


async def test_every_worker_drains_its_connections(
    start_workers: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_workers()
    viewers = [await watch(gw.subscribe_url(meeting, keypair.token())) for _ in range(4)]
    gw.process.send_signal(signal.SIGTERM)
    for viewer in viewers:  # closed by the application's drain, with its message
        await viewer.wait_for(lambda w: w.close_code is not None, timeout=DRAIN_TIMEOUT_S + 5)
        assert viewer.close_code == 1012
        assert viewer.of_type("error")[-1]["message"] == "server restarting, reconnect with since"
    assert await asyncio.to_thread(gw.process.wait, DRAIN_TIMEOUT_S + 5) == 0


async def test_a_worker_stuck_past_the_drain_timeout_is_killed_and_the_stop_ends(
    start_workers: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_workers(DRAIN_TIMEOUT_S="2")
    viewer = await watch(gw.subscribe_url(meeting, keypair.token()))
    stuck = next(iter(worker_pids(gw)))
    os.kill(stuck, signal.SIGSTOP)  # a worker that will never finish its drain
    try:
        gw.process.send_signal(signal.SIGTERM)
        # The parent gives up on it DRAIN_TIMEOUT_S + WORKER_STOP_MARGIN_S after the stop.
        assert await asyncio.to_thread(gw.process.wait, 120) == 1
        assert "still running" in gw.logs()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGCONT)
    await viewer.close()


async def test_a_second_sigint_to_the_supervisor_stops_its_workers_at_once(
    start_workers: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_workers(DRAIN_TIMEOUT_S="60", LOCAL_ENGINE_WORKERS="1")  # both ready
    ingest = await connect(gw.ingest_url(meeting, keypair.token(roles=["ingest"])))
    await ingest.send(handshake())
    assert json.loads(await ingest.recv())["type"] == "ready"
    await ingest.send(b"\x00\x00" * 3200)
    # Stalled engines hold the ingest flush, and with it the drain, for most of a minute.
    engines = [pid for worker in worker_pids(gw) for pid in _engine_workers(worker)]
    assert engines
    for pid in engines:
        os.kill(pid, signal.SIGSTOP)
    try:
        gw.process.send_signal(signal.SIGINT)
        await eventually(lambda: gw.logs().count('"draining"') >= 2, what="both workers drain")
        gw.process.send_signal(signal.SIGINT)  # as a second Ctrl-C: stop now
        assert await asyncio.to_thread(gw.process.wait, 40) is not None
    finally:
        for pid in engines:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    await ingest.close()


async def test_viewers_beyond_one_batch_are_all_closed_1012(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    count = DRAIN_BATCH + 50  # two batches
    gw = start_gateway(DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S), MAX_WS_CLIENTS_PER_MEETING=str(count))
    token = keypair.token()
    sockets = [await connect(gw.subscribe_url(meeting, token)) for _ in range(count)]
    for ws in sockets:  # every subscription is live
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"
    gw.process.send_signal(signal.SIGTERM)
    closes = await asyncio.gather(*(expect_close(ws, DRAIN_TIMEOUT_S + 5) for ws in sockets))
    assert {code for code, _ in closes} == {1012}
    assert all(m[-1]["message"] == VIEWERS_RESTARTING for _, m in closes)
    assert await asyncio.to_thread(gw.process.wait, DRAIN_TIMEOUT_S + 5) == 0


async def test_a_hangup_drains_like_sigterm(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """SIGHUP (a closed terminal, a supervisor's signal) killed the process with every stream
    unflushed: it drains as SIGTERM does."""
    gw = start_gateway(DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S))
    viewer = await watch(gw.subscribe_url(meeting, keypair.token()))
    gw.process.send_signal(signal.SIGHUP)
    await viewer.wait_for(lambda w: w.close_code is not None, timeout=DRAIN_TIMEOUT_S + 5)
    assert viewer.close_code == 1012
    assert await asyncio.to_thread(gw.process.wait, DRAIN_TIMEOUT_S + 5) == 0


async def test_a_hangup_to_the_supervisor_drains_every_worker(
    start_workers: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_workers()
    viewers = [await watch(gw.subscribe_url(meeting, keypair.token())) for _ in range(4)]
    workers = worker_pids(gw)
    gw.process.send_signal(signal.SIGHUP)
    for viewer in viewers:
        await viewer.wait_for(lambda w: w.close_code is not None, timeout=DRAIN_TIMEOUT_S + 5)
        assert viewer.close_code == 1012
    assert await asyncio.to_thread(gw.process.wait, DRAIN_TIMEOUT_S + 5) == 0
    assert not any(_alive(pid) for pid in workers)


async def test_workers_whose_supervisor_is_killed_drain_and_exit(
    start_workers: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """A killed supervisor left its workers serving on their own (and released the SQLite
    file's lock under them): they drain and exit."""
    gw = start_workers()
    viewers = [await watch(gw.subscribe_url(meeting, keypair.token())) for _ in range(4)]
    workers = worker_pids(gw)
    assert len(workers) == 2
    gw.process.kill()
    for viewer in viewers:
        await viewer.wait_for(lambda w: w.close_code is not None, timeout=DRAIN_TIMEOUT_S + 30)
        assert viewer.close_code == 1012
    await eventually(
        lambda: not any(_alive(pid) for pid in workers),
        within=DRAIN_TIMEOUT_S + 30,
        what="the workers exited",
    )


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited and not yet reaped by init, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
