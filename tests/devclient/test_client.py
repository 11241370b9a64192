"""stream_pcm and subscribe against the in-process fake gateway (conftest.FakeGateway)."""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

import numpy as np
import pytest

from gateway.client.connection import GatewayError
from gateway.client.ingest import StreamSummary, stream_pcm
from gateway.client.pacing import MAX_FRAME_BYTES
from gateway.client.subscribe import CloseInfo, subscribe
from gateway.client.urls import ingest_url, subscribe_url

from .conftest import FakeGateway, KeyPair


def tone(seconds: float, rate: int = 16000, channels: int = 1) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    mono = (np.sin(2 * np.pi * 300 * t) * 8000).astype("<i2")
    return np.repeat(mono[:, None], channels, axis=1).tobytes()


async def test_stream_pcm_follows_the_contract(fake_gateway: FakeGateway, keypair: KeyPair) -> None:
    pcm = tone(2.0, rate=48000, channels=2)
    seen: list[dict[str, Any]] = []
    summary = await stream_pcm(
        ingest_url(fake_gateway.url, "m1"),
        keypair.token(["ingest"]),
        pcm,
        sample_rate=48000,
        channels=2,
        source="system",
        speed=4.0,
        on_message=seen.append,
        finalize_at_end=True,
    )
    assert fake_gateway.handshakes == [
        {
            "type": "handshake",
            "source": "system",
            "sample_rate": 48000,
            "channels": 2,
            "language": "en",
            "ai_mode": "standard",
            "device_id": "devclient",
        }
    ]
    sizes = [size for _, size in fake_gateway.frames]
    assert sum(sizes) == len(pcm)
    assert all(size <= MAX_FRAME_BYTES and size % 4 == 0 for size in sizes)
    assert fake_gateway.controls == ["finalize", "close"]
    path, auth = fake_gateway.requests[0]
    assert auth is not None and auth.startswith("Bearer ")
    assert "token=" not in path  # keeps the token out of access logs
    assert summary.ok
    assert (summary.close_code, summary.close_reason) == (1000, "stream closed")
    assert summary.server_closed and not summary.timed_out
    assert summary.ready["type"] == "ready"
    assert [m["type"] for m in summary.messages] == ["ready", "summary"]
    assert seen == summary.messages
    assert summary.frames_sent == len(sizes)
    assert summary.bytes_sent == len(pcm)
    assert summary.elapsed_s >= 2.0 / 4 * 0.9  # paced, not dumped


async def test_token_can_go_in_the_query_string(
    fake_gateway: FakeGateway, keypair: KeyPair
) -> None:
    summary = await _stream_short_tone(
        fake_gateway,
        keypair,
        token_in_query=True,
    )
    path, auth = fake_gateway.requests[0]
    assert auth is None
    assert "?token=" in path
    assert summary.ok


async def test_async_callbacks_are_awaited(fake_gateway: FakeGateway, keypair: KeyPair) -> None:
    seen: list[str] = []

    async def on_message(msg: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        seen.append(msg["type"])

    await _stream_short_tone(
        fake_gateway,
        keypair,
        seconds=0.1,
        on_message=on_message,
    )
    assert seen == ["ready", "summary"]


@pytest.mark.parametrize(("roles", "code"), [(["viewer"], 4403), (None, 4401)])
async def test_refusal_before_ready_raises_gateway_error(
    fake_gateway: FakeGateway, keypair: KeyPair, roles: list[str] | None, code: int
) -> None:
    token = keypair.token(roles) if roles else "not-a-jwt"
    seen: list[dict[str, Any]] = []
    with pytest.raises(GatewayError) as info:
        await stream_pcm(
            ingest_url(fake_gateway.url, "m1"),
            token,
            tone(0.1),
            sample_rate=16000,
            channels=1,
            on_message=seen.append,
        )
    assert info.value.code == code
    assert [m["type"] for m in seen] == ["error"]
    assert fake_gateway.frames == []


async def test_http_rejection_raises_gateway_error(
    fake_gateway: FakeGateway, keypair: KeyPair
) -> None:
    fake_gateway.http_status = HTTPStatus.FORBIDDEN
    with pytest.raises(GatewayError) as info:
        await stream_pcm(
            ingest_url(fake_gateway.url, "m1"),
            keypair.token(["ingest"]),
            tone(0.1),
            sample_rate=16000,
            channels=1,
        )
    assert info.value.code == 403
    assert "rejected by fake" in info.value.message


async def test_error_mid_stream_ends_the_stream_with_its_code(
    fake_gateway: FakeGateway, keypair: KeyPair
) -> None:
    fake_gateway.limit_after_frames = 3
    summary = await stream_pcm(
        ingest_url(fake_gateway.url, "m1"),
        keypair.token(["ingest"]),
        tone(10.0),
        sample_rate=16000,
        channels=1,
        speed=10,
    )
    assert summary.close_code == 4429
    assert summary.server_closed
    assert not summary.ok
    assert [e["code"] for e in summary.errors] == [4429]
    assert summary.elapsed_s < 0.5  # stopped sending instead of pacing the whole second
    assert "close" not in fake_gateway.controls


async def test_without_close_the_client_drops_the_connection(
    fake_gateway: FakeGateway, keypair: KeyPair
) -> None:
    summary = await _stream_short_tone(
        fake_gateway,
        keypair,
        close=False,
        linger_s=0.05,
    )
    assert fake_gateway.controls == []
    assert not summary.server_closed
    assert not summary.timed_out


async def test_a_server_that_never_closes_times_out(
    fake_gateway: FakeGateway, keypair: KeyPair
) -> None:
    fake_gateway.ignore_close = True
    summary = await _stream_short_tone(
        fake_gateway,
        keypair,
        seconds=0.1,
        close_timeout_s=0.2,
    )
    assert fake_gateway.controls == ["close"]
    assert summary.timed_out
    assert not summary.ok


async def test_pcm_must_be_whole_samples() -> None:
    with pytest.raises(ValueError, match="whole"):
        await stream_pcm("ws://127.0.0.1:9", None, b"\0" * 6, sample_rate=16000, channels=2)


TRANSCRIPT = [
    {"type": "transcript.partial", "segment_no": 1, "text": "hel", "source": "mic"},
    {"type": "transcript.final", "segment_no": 1, "text": "hello", "source": "mic"},
]


async def test_subscribe_delivers_messages_until_the_server_closes(
    fake_gateway: FakeGateway, keypair: KeyPair
) -> None:
    fake_gateway.subscriber_script = TRANSCRIPT
    seen: list[dict[str, Any]] = []
    closed = await subscribe(
        subscribe_url(fake_gateway.url, "m1"),
        keypair.token(["viewer"]),
        since=3,
        on_message=seen.append,
    )
    assert closed == CloseInfo(1000, "meeting ended")
    assert seen == TRANSCRIPT
    path, auth = fake_gateway.requests[0]
    assert path == "/api/v1/ws/meetings/m1?since=3"
    assert auth is not None


async def test_subscribe_pings_and_leaves_when_stopped(
    fake_gateway: FakeGateway, keypair: KeyPair
) -> None:
    fake_gateway.subscriber_stays_open = True
    stop = asyncio.Event()
    seen: list[str] = []

    def on_message(msg: dict[str, Any]) -> None:
        seen.append(msg["type"])
        if msg["type"] == "pong":
            stop.set()

    closed = await asyncio.wait_for(
        subscribe(
            subscribe_url(fake_gateway.url, "m1"),
            keypair.token(["viewer"]),
            on_message=on_message,
            ping_interval_s=0.05,
            stop=stop,
        ),
        timeout=5,
    )
    assert seen == ["pong"]
    assert closed.code == 1000


async def test_subscribe_reports_a_refusal_as_its_close(
    fake_gateway: FakeGateway,
) -> None:
    seen: list[dict[str, Any]] = []
    closed = await subscribe(subscribe_url(fake_gateway.url, "m1"), "bad", on_message=seen.append)
    assert closed == CloseInfo(4401, "bad token")
    assert seen[0]["type"] == "error"
    assert json.loads(json.dumps(seen[0]))["code"] == 4401


async def test_a_failing_callback_surfaces_instead_of_being_swallowed(
    fake_gateway: FakeGateway, keypair: KeyPair
) -> None:
    def on_message(msg: dict[str, Any]) -> None:
        if msg["type"] == "summary":
            raise RuntimeError("callback bug")

    with pytest.raises(RuntimeError, match="callback bug"):
        await _stream_short_tone(
            fake_gateway,
            keypair,
            seconds=0.1,
            on_message=on_message,
        )


async def _stream_short_tone(
    fake_gateway: FakeGateway, keypair: KeyPair, *, seconds: float = 0.2, **options: Any
) -> StreamSummary:
    """A short 16 kHz mono tone into meeting m1, fast."""
    return await stream_pcm(
        ingest_url(fake_gateway.url, "m1"),
        keypair.token(["ingest"]),
        tone(seconds),
        sample_rate=16000,
        channels=1,
        speed=50,
        **options,
    )
