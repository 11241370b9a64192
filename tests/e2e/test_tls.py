"""The gateway served over TLS (`serve --ssl-keyfile --ssl-certfile`): a viewer connected with
a TLS WebSocket client reads its history and live transcript frames whole and in order. Direct
frame writes go to the socket's descriptor and would bypass the encryption: behind TLS every
frame must take the transport's queued path (the client would fail its record check, and the
transcript cross the wire in clear text, otherwise)."""

from __future__ import annotations

import asyncio
import http.client
import json
from pathlib import Path

from websockets.asyncio.client import connect

from tests.e2e.harness import Gateway, KeyPair, gateway_env
from tests.e2e.test_delivery_paths import final_message, partial_message, sqlite_with_three_finals
from tests.e2e.test_http_edge import refused_upload
from tests.tls import client_context, self_signed_cert


def tls_gateway(env: dict[str, str], tmp_path: Path, key_path: str, cert_path: str) -> Gateway:
    return Gateway(
        env,
        tmp_path / "gateway.log",
        args=("--ssl-keyfile", key_path, "--ssl-certfile", cert_path),
        tls_ca=cert_path,
    ).start()


async def test_a_viewer_reads_transcript_frames_over_tls(
    keys_dir: Path, keypair: KeyPair, meeting: str, private_redis, tmp_path: Path
) -> None:
    key_path, cert_path = self_signed_cert(tmp_path)
    url = await sqlite_with_three_finals(tmp_path, meeting)
    env = gateway_env(
        keys_dir, url, REDIS_URL=private_redis.url, OUTBOX_DIR=str(tmp_path / "outbox")
    )
    gw = tls_gateway(env, tmp_path, key_path, cert_path)
    publisher = private_redis.client()
    try:
        assert gw.http.startswith("https://") and gw.get("/healthz").status_code == 200
        viewer = keypair.token(roles=["viewer"])
        tls = client_context(cert_path)
        async with connect(gw.subscribe_url(meeting, viewer, since=0), ssl=tls) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            history: list[dict] = []
            while True:  # the stored finals, then our pong: the subscription is live
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if message["type"] == "pong":
                    break
                history.append(message)
            finals = [m for m in history if m["type"] == "transcript.final"]
            assert [m["text"] for m in finals] == ["stored 1", "stored 2", "stored 3"]

            # Live frames, published as another replica's ingest would: enough of them, and
            # large enough, that a direct write would have had the chance to corrupt the stream.
            topic = f"meeting:acme:{meeting}:transcript"
            words = " ".join(["word"] * 300)
            for n in range(200):
                await publisher.publish(topic, partial_message(meeting, 4, f"{n} {words}"))
            await publisher.publish(topic, final_message(meeting, 4, "the end"))
            live: list[dict] = []
            while not live or live[-1]["type"] != "transcript.final":
                message = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if message["type"].startswith("transcript."):
                    live.append(message)
            partials = [int(m["text"].split()[0]) for m in live[:-1]]
            # Partials may be coalesced (a newer one, or the segment's final, replaces one not
            # yet sent), never reordered or repeated.
            assert partials == sorted(set(partials)) and partials[-1] <= 199
            assert live[-1]["text"] == "the end" and live[-1]["segment_no"] == 4
        assert gw.stop() == 0
    finally:
        await publisher.aclose()
        if gw.process is not None and gw.process.poll() is None:
            gw.stop()


async def test_a_refusal_over_tls_reaches_a_client_still_sending_its_body(
    keys_dir: Path, tmp_path: Path
) -> None:
    """Behind TLS there is no half-close: the rest of the body is read before the close, or
    the client's TLS layer sees the connection cut and never the 401."""
    key_path, cert_path = self_signed_cert(tmp_path)
    env = gateway_env(
        keys_dir, f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}", OUTBOX_DIR=str(tmp_path)
    )
    gw = tls_gateway(env, tmp_path, key_path, cert_path)
    try:
        for headers in ({}, {"Connection": "close"}):
            connection = http.client.HTTPSConnection(
                "127.0.0.1", gw.port, timeout=60, context=client_context(cert_path)
            )
            assert await asyncio.to_thread(refused_upload, connection, **headers) == 401, headers
    finally:
        gw.stop()
