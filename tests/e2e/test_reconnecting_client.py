"""The desktop-side client survives a gateway restart mid-stream: every word arrives, numbering
continues, and a resuming viewer ends with exactly the stored finals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.client.audio import load_wav_pcm
from gateway.client.reconnect import stream_pcm_reconnecting
from gateway.client.resume import Backoff, follow
from gateway.client.urls import ingest_url, subscribe_url
from tests.e2e.harness import REPO, Gateway, KeyPair, word_error_rate
from tests.e2e.speech import fixture
from tests.e2e.test_resilience import _engine_workers
from tests.util import eventually

FAST = Backoff(base_s=0.2, cap_s=1.0, max_attempts=200)


@pytest.mark.parametrize(("how", "close_code"), [("drain", 1012), ("crash", 1006)])
async def test_ingest_and_viewer_survive_a_restart_mid_stream(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, how: str, close_code: int
) -> None:
    """Restarted gracefully (SIGTERM: drain, 1012) or after a crash (SIGKILL: the sockets just
    drop and the audio the gateway had not finalized is lost with it)."""
    gw = start_gateway(DRAIN_TIMEOUT_S="15", LOCAL_ENGINE_WORKERS="1")
    path, sentences = fixture("two_sentences_16k_mono.wav")
    pcm, rate, channels = load_wav_pcm(path)
    pcm = pcm * 2  # four sentences: the restart falls in the middle of them
    token = keypair.token(roles=["ingest", "viewer"], meetings=[meeting], ttl=3600)

    viewer_finals: list[dict] = []
    stop_viewer = asyncio.Event()
    viewer_closes: list[int] = []
    viewer = asyncio.create_task(
        follow(
            subscribe_url(gw.http, meeting),
            keypair.token(),
            since=0,
            on_message=lambda m: (
                viewer_finals.append(m) if m["type"] == "transcript.final" else None
            ),
            backoff=FAST,
            stop=stop_viewer,
            on_reconnect=lambda closed, _delay: viewer_closes.append(closed.code),
        )
    )
    seen: list[dict] = []
    ingest_closes: list[int] = []
    ingest = asyncio.create_task(
        stream_pcm_reconnecting(
            ingest_url(gw.http, meeting),
            subscribe_url(gw.http, meeting),
            token,
            pcm,
            sample_rate=rate,
            channels=channels,
            speed=1.5,
            backoff=FAST,
            on_transcript=seen.append,
            on_reconnect=lambda what, code, _delay: ingest_closes.append(code),
            close_timeout_s=120,
        )
    )

    # Restart once the first sentence is final and the second one is under way.
    await eventually(
        lambda: any(m["type"] == "transcript.partial" and m["segment_no"] == 2 for m in seen),
        within=60,
        what="the second sentence in progress",
    )
    # Blocking calls go to a thread: the clients on this loop must keep reading meanwhile.
    if how == "drain":
        assert await asyncio.to_thread(gw.stop, signal.SIGTERM, 60) == 0
    else:
        workers = _engine_workers(gw.process.pid)
        assert await asyncio.to_thread(gw.stop, signal.SIGKILL, 30) == -signal.SIGKILL
        for pid in workers:  # orphaned by the crash
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    restarted = await asyncio.to_thread(Gateway(gw.env, gw.log_path, port=gw.port).start)
    try:
        summary = await asyncio.wait_for(ingest, 180)
        assert summary.ok, summary.runs
        assert summary.reconnects >= 1 and close_code in ingest_closes, (
            summary.runs,
            ingest_closes,
        )

        stored = restarted.get(
            f"/api/v1/meetings/{meeting}/transcript", keypair.token(), format="json"
        ).json()["segments"]
        numbers = [s["segment_no"] for s in stored]
        assert numbers == list(range(1, len(stored) + 1))  # numbering continued, no gap
        transcript = " ".join(s["text"] for s in stored)
        assert word_error_rate(" ".join(sentences * 2), transcript) <= 0.34, transcript

        # The viewer resumed with since= and has exactly the stored finals, in order, once.
        expected = [(s["segment_no"], s["text"]) for s in stored]
        await eventually(
            lambda: len(viewer_finals) >= len(expected), within=90, what="viewer caught up"
        )
        assert [(f["segment_no"], f["text"]) for f in viewer_finals] == expected
        assert close_code in viewer_closes
    finally:
        stop_viewer.set()
        await asyncio.wait_for(viewer, 60)
        await asyncio.to_thread(restarted.stop)


async def test_send_script_in_reconnect_mode_streams_and_shows_the_transcript(
    gateway: Gateway, keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    key = tmp_path / "jwt.key"
    key.write_bytes(keypair.private_pem)
    path, _ = fixture("two_sentences_16k_mono.wav")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "scripts" / "dev_send_pcm.py"),
        *("--meeting", meeting, "--url", gateway.http, "--key", str(key)),
        *("--wav", str(path), "--speed", "4", "--reconnect"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    finals = [line.split()[0] for line in lines if line.startswith("#")]
    assert finals == ["#1", "#2"], lines  # the meeting's finals, as the viewer side saw them
    assert lines[-1].startswith("closed code=1000 streams=1 reconnects=0"), lines
