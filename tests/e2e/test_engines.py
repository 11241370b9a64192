"""Cloud engines through a real gateway process: ASR_ENGINE=deepgram,local with DEEPGRAM_URL
pointed at the protocol-faithful Deepgram fake running in the test."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.harness import (
    Gateway,
    KeyPair,
    expect_close,
    gateway_env,
    handshake,
    word_error_rate,
)
from tests.e2e.speech import Watcher, fixture, stream_fixture, watch
from tests.engines.fake_deepgram import FakeDeepgram
from tests.engines.fake_google import FakeGoogle
from tests.engines.test_google import interleave
from tests.engines.toy_asr import tone_words
from tests.util import wait_until

API_KEY = "dg-e2e-secret-5f0c1a2b3c4d5e6f"
MONO_16K = "two_sentences_16k_mono.wav"


@pytest.fixture
async def fake_deepgram() -> AsyncIterator[FakeDeepgram]:
    fake = await FakeDeepgram(api_key=API_KEY).start()
    yield fake
    await fake.stop()


def deepgram_gateway(
    start_gateway: Callable[..., Gateway], fake: FakeDeepgram, chain: str, key: str = API_KEY
) -> Gateway:
    return start_gateway(
        ASR_ENGINE=chain,
        DEEPGRAM_URL=fake.url,
        DEEPGRAM_API_KEY=key,
        LOCAL_ENGINE_WORKERS="1",
        ENGINE_RETRY_ATTEMPTS="1",
    )


async def send_then_close(ws: ClientConnection, audio: bytes, *controls: str) -> None:
    """`audio` in 100 ms frames, then the control messages and `close`: closed 1000."""
    for offset in range(0, len(audio), 3200):
        await ws.send(audio[offset : offset + 3200])
    for control in (*controls, "close"):
        await ws.send(json.dumps({"type": control}))
    code, messages = await expect_close(ws, timeout=60)
    assert code == 1000, messages


async def until_stream_ended(viewer: Watcher) -> None:
    await viewer.wait_for(lambda w: any(m["event"] == "stream.ended" for m in w.of_type("status")))
    await viewer.close()


async def test_deepgram_dying_mid_meeting_fails_over_to_local_without_losing_speech(
    start_gateway: Callable[..., Gateway],
    fake_deepgram: FakeDeepgram,
    keypair: KeyPair,
    meeting: str,
) -> None:
    gateway = deepgram_gateway(start_gateway, fake_deepgram, "deepgram,local")
    _, sentences = fixture(MONO_16K)
    fake_deepgram.die_after_bytes = 16000 * 2 * 3 // 2  # 1.5 s in: inside sentence one
    viewer = await watch(gateway.subscribe_url(meeting, keypair.token(roles=["viewer"])))

    summary = await stream_fixture(gateway, keypair.token(roles=["ingest"]), meeting, MONO_16K)
    assert summary.close_code == 1000, summary.errors
    assert summary.ready["engine"] == "deepgram"
    await viewer.wait_for(lambda w: any(m["event"] == "stream.ended" for m in w.of_type("status")))
    await viewer.close()

    statuses = viewer.of_type("status")
    assert [(m["event"], m["engine"]) for m in statuses] == [
        ("stream.started", "deepgram"),
        ("engine.switched", "local"),
        ("stream.ended", "local"),
    ]
    switched = statuses[1]
    assert switched["previous_engine"] == "deepgram" and switched["reason"] == "closed"
    assert switched["stream_id"] == statuses[0]["stream_id"]

    finals = viewer.finals()
    assert [f["segment_no"] for f in finals] == [1, 2], finals  # contiguous
    for reference, final in zip(sentences, finals, strict=True):
        assert word_error_rate(reference, final["text"]) <= 0.34, (reference, final["text"])
    assert finals[0]["start_ms"] < 1500  # spoken before Deepgram died: heard from the replay
    for earlier, later in itertools.pairwise(finals):
        assert earlier["start_ms"] <= later["start_ms"]
    assert API_KEY not in gateway.logs()

    # The meeting as a resource names both engines, and the one the stream ended on.
    ops = keypair.token(roles=["ops"])
    [stream] = wait_until(
        lambda: [
            s
            for s in gateway.get(f"/api/v1/meetings/{meeting}", ops).json()["streams"]
            if s["ended_at"]
        ],
        "the stream row closed",
    )
    assert (stream["engine"], stream["engines"]) == ("local", ["deepgram", "local"])
    [listed] = gateway.get("/api/v1/meetings", ops).json()["meetings"]
    assert listed["engines"] == ["deepgram", "local"]


async def test_a_failover_during_the_close_is_the_engine_stream_ended_names(
    start_gateway: Callable[..., Gateway],
    fake_deepgram: FakeDeepgram,
    keypair: KeyPair,
    meeting: str,
) -> None:
    """Deepgram dies on the client's last finalize: the flush goes to Google, every word comes
    out once, and `stream.ended` (and the audio metric) names Google, the engine at the end."""
    google = await FakeGoogle().start()
    try:
        gateway = start_gateway(
            ASR_ENGINE="deepgram,google",
            DEEPGRAM_URL=fake_deepgram.url,
            DEEPGRAM_API_KEY=API_KEY,
            GCP_SPEECH_ENDPOINT=google.endpoint,
            GCP_SPEECH_INSECURE="true",
            ENGINE_RETRY_ATTEMPTS="1",
        )
        fake_deepgram.die_on_finalize, fake_deepgram.breaks_left = True, 1
        viewer = await watch(gateway.subscribe_url(meeting, keypair.token(roles=["viewer"])))
        audio = tone_words([1, 2, 3], pause_ms=400) + tone_words([4, 5], pause_ms=0)
        async with connect(gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
            await ws.send(handshake(sample_rate=16000))
            assert json.loads(await ws.recv())["engine"] == "deepgram"
            await send_then_close(ws, audio, "finalize")
        await until_stream_ended(viewer)
        assert [(m["event"], m["engine"]) for m in viewer.of_type("status")] == [
            ("stream.started", "deepgram"),
            ("engine.switched", "google"),
            ("stream.ended", "google"),
        ]
        words = " ".join(f["text"] for f in viewer.finals()).lower().replace(".", "").split()
        assert words == [f"w{v}" for v in range(1, 6)]
        metrics = gateway.get("/metrics").text
        assert 'meeting_gateway_audio_seconds_total{engine="google"' in metrics
        assert 'meeting_gateway_audio_seconds_total{engine="deepgram"' not in metrics
    finally:
        await google.stop()


async def test_a_rejected_key_and_no_fallback_is_engine_unavailable(
    start_gateway: Callable[..., Gateway],
    fake_deepgram: FakeDeepgram,
    keypair: KeyPair,
    meeting: str,
) -> None:
    wrong = "dg-e2e-wrong-key-0a1b2c3d4e5f"
    gateway = deepgram_gateway(start_gateway, fake_deepgram, "deepgram", key=wrong)
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    async with connect(url) as ws:
        await ws.send(handshake())
        code, messages = await expect_close(ws)
    assert code == 4503
    [error] = messages
    assert error["type"] == "error" and error["code"] == 4503
    assert error["reason"] == "engine_unavailable"
    assert fake_deepgram.rejected == 1  # 401 is never retried
    logs = gateway.logs()
    assert wrong not in logs and API_KEY not in logs
    assert wrong not in str(error)
    # Refused on (3 failures, ENGINE_BREAKER_FAILURES), its breaker opens: the ingest route's
    # probe fails and the breaker's gauge says why (it said ready while every stream got 4503).
    assert gateway.get("/readyz/ingest").status_code == 200
    for _ in range(2):
        async with connect(url) as ws:
            await ws.send(handshake())
            assert (await expect_close(ws))[0] == 4503
    ingest_ready = gateway.get("/readyz/ingest")
    assert ingest_ready.status_code == 503 and ingest_ready.json()["checks"]["engines"] is False
    assert gateway.get("/readyz").status_code == 200  # viewers and the API are served
    assert (
        'meeting_gateway_engine_breaker_open{engine="deepgram"} 1.0' in gateway.get("/metrics").text
    )


async def test_google_through_the_gateway_with_rotation(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """ASR_ENGINE=gcp (the alias) against the Google fake, with streams rotated every second of
    audio and the fake cutting streams off past 1.5 s: every word arrives once, in order."""
    fake = await FakeGoogle(limit_s=1.5).start()
    try:
        gateway = start_gateway(
            ASR_ENGINE="gcp",
            GCP_SPEECH_ENDPOINT=fake.endpoint,
            GCP_SPEECH_INSECURE="true",
            GCP_STREAM_ROTATE_S="1",
        )
        viewer = await watch(gateway.subscribe_url(meeting, keypair.token(roles=["viewer"])))
        values = list(range(1, 25))
        audio = b"".join(
            tone_words(values[i : i + 3], pause_ms=400 if i % 2 else 0) for i in range(0, 24, 3)
        )
        url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
        async with connect(url) as ws:
            await ws.send(handshake(sample_rate=16000, language="tr"))
            ready = json.loads(await ws.recv())
            assert ready["engine"] == "google"
            await send_then_close(ws, audio)
        await until_stream_ended(viewer)
        finals = viewer.finals()
        assert " ".join(f["text"] for f in finals).split() == [f"w{v}" for v in values]
        assert [f["segment_no"] for f in finals] == list(range(1, len(finals) + 1))
        assert len(fake.calls) >= 3 and all(c.outcome == "half-closed" for c in fake.calls)
        assert {c.config.config.language_code for c in fake.calls} == {"tr-TR"}
    finally:
        await fake.stop()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"ASR_ENGINE": "deepgram,local"}, "DEEPGRAM_API_KEY"),
        ({"ASR_ENGINE": "local,whisperx"}, "whisperx"),
        ({"ASR_ENGINE": "gcp", "GCP_SPEECH_INSECURE": "true"}, "GCP_SPEECH_ENDPOINT"),
    ],
)
def test_serve_refuses_an_engine_misconfiguration(
    keys_dir: Path, tmp_path: Path, env: dict[str, str], says: str
) -> None:
    environment = {
        **os.environ,
        **gateway_env(keys_dir, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"),
        "DEEPGRAM_API_KEY": "",
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", "0"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert says in done.stderr


async def test_the_only_engine_dying_for_good_mid_stream_is_engine_unavailable(
    start_gateway: Callable[..., Gateway],
    fake_deepgram: FakeDeepgram,
    keypair: KeyPair,
    meeting: str,
) -> None:
    gateway = deepgram_gateway(start_gateway, fake_deepgram, "deepgram")
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    async with connect(url) as ws:
        await ws.send(handshake(sample_rate=16000))
        assert json.loads(await ws.recv())["engine"] == "deepgram"
        # Deepgram drops the stream, and from now on refuses the key: nothing can take over.
        fake_deepgram.reject_status = 401
        fake_deepgram.die_after_bytes = 16000
        audio = tone_words(list(range(1, 9)))
        with contextlib.suppress(ConnectionClosed):  # the server may close before the last
            for offset in range(0, len(audio), 3200):
                await ws.send(audio[offset : offset + 3200])
        code, messages = await expect_close(ws, timeout=30)
    assert code == 4503
    assert messages[-1]["type"] == "error" and messages[-1]["reason"] == "engine_unavailable"
    assert fake_deepgram.rejected == 1
    # An outage of the engine, said at WARNING once the stream ends; no task's exception left
    # for asyncio to print with its traceback (the on-call tester: three ERRORs per stream).
    gateway.stop()
    logs = gateway.logs()
    assert "segment pipeline ended early" in logs or "engine failed" in logs, logs[-3000:]
    assert "never retrieved" not in logs and "Traceback" not in logs, logs[-3000:]
    assert '"level": "error"' not in logs, logs[-3000:]  # the JSON log lines (LOG_FORMAT)


async def test_google_stereo_through_the_gateway_is_transcribed_per_channel(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """A stereo stream (say, the two sides of a call on `system`): both channels reach viewers,
    each final labelled with its channel as `speaker`."""
    fake = await FakeGoogle().start()
    try:
        gateway = start_gateway(
            ASR_ENGINE="google", GCP_SPEECH_ENDPOINT=fake.endpoint, GCP_SPEECH_INSECURE="true"
        )
        viewer = await watch(gateway.subscribe_url(meeting, keypair.token(roles=["viewer"])))
        left = tone_words([1, 2], pause_ms=800)
        right = bytes(len(left)) + tone_words([3, 4], pause_ms=800)
        audio = interleave(left, right)
        url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
        async with connect(url) as ws:
            await ws.send(handshake(source="system", sample_rate=16000, channels=2))
            assert json.loads(await ws.recv())["engine"] == "google"
            for offset in range(0, len(audio), 6400):  # 100 ms stereo frames
                await ws.send(audio[offset : offset + 6400])
            await ws.send(json.dumps({"type": "close"}))
            code, messages = await expect_close(ws, timeout=60)
        assert code == 1000, messages
        await viewer.wait_for(lambda w: len(w.finals()) >= 2)
        await viewer.close()
        assert [(f["text"], f["speaker"]) for f in viewer.finals()] == [
            ("w1 w2", "ch1"),
            ("w3 w4", "ch2"),
        ]
    finally:
        await fake.stop()
