"""Every close code of the contract, produced by the input that should produce it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.client.audio import load_wav_pcm
from tests.e2e.harness import Gateway, KeyPair, close_code_of, expect_close, handshake
from tests.e2e.speech import fixture
from tests.util import eventually

SILENCE_20MS_16K = b"\x00\x00" * 320


async def _after_ready(url: str, *sends: str | bytes, hs: str | None = None):
    """Handshake, wait for ready, send, and read until the server closes."""
    async with connect(url) as ws:
        await ws.send(hs or handshake())
        await _ready(ws)
        for item in sends:
            await ws.send(item)
        return await expect_close(ws)


async def _ready(ws) -> dict:
    message = json.loads(await ws.recv())
    assert message["type"] == "ready", message
    return message


async def test_ingest_without_role_is_4403(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    token = keypair.token(roles=["viewer", "ops"])
    assert await close_code_of(gateway.ingest_url(meeting, token), handshake()) == 4403


async def test_subscribe_without_role_is_4403(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    token = keypair.token(roles=["ingest"])
    assert await close_code_of(gateway.subscribe_url(meeting, token)) == 4403


async def test_meeting_bound_token_cannot_open_another_meeting(
    gateway: Gateway, keypair: KeyPair
) -> None:
    token = keypair.token(roles=["ingest", "viewer"], meetings=["m-allowed"])
    assert await close_code_of(gateway.subscribe_url("m-other", token)) == 4403
    assert await close_code_of(gateway.ingest_url("m-other", token), handshake()) == 4403
    async with connect(gateway.subscribe_url("m-allowed", token)) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"


async def test_protocol_errors_are_4400(gateway: Gateway, keypair: KeyPair, meeting: str) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    assert await close_code_of(url, SILENCE_20MS_16K) == 4400  # binary before handshake
    assert await close_code_of(url, "{not json") == 4400
    assert await close_code_of(url, json.dumps({"type": "hello"})) == 4400
    assert await close_code_of(url, handshake(sample_rate=1000)) == 4400
    assert await close_code_of(url, handshake(sample_rate=96000)) == 4400
    assert await close_code_of(url, handshake(channels=3)) == 4400
    assert await close_code_of(url, handshake(source="speaker")) == 4400
    assert await close_code_of(url, handshake(ai_mode="ultra")) == 4400


async def test_unsupported_language_names_the_supported_ones(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    async with connect(url) as ws:
        await ws.send(handshake(language="tr"))
        code, messages = await expect_close(ws)
    assert code == 4400
    assert messages[-1]["type"] == "error"
    assert "en" in messages[-1]["message"] and "tr" in messages[-1]["message"]


async def test_ready_names_the_handshake_fields_it_ignored(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "handshake", "source": "mic", "sample_rte": 16000}))
        ready = await _ready(ws)
    # A typo is not an error (newer clients' fields are not either), but it is not silent.
    assert ready["ignored"] == ["sample_rte"] and ready["sample_rate"] == 48000
    async with connect(url) as ws:
        await ws.send(handshake(source="system"))
        assert "ignored" not in await _ready(ws)
    # A name no UTF-8 answer can carry as it is. (Another meeting: the first stream of this
    # one's mic may still be flushing, and hold its lease, on a busy machine.)
    other = gateway.ingest_url(f"{meeting}-u", keypair.token(roles=["ingest"]))
    async with connect(other) as ws:
        await ws.send('{"type": "handshake", "source": "mic", "\\ud800x": 1}')
        assert (await _ready(ws))["ignored"] == ["\\ud800x"]


async def test_a_path_no_endpoint_serves_is_4400_with_the_reason(
    gateway: Gateway, keypair: KeyPair
) -> None:
    """Not Starlette's bare HTTP 403, which a browser cannot read and which looks like a
    refused token: accepted, told why, closed 4400."""
    token = keypair.token(roles=["ingest", "viewer"])
    base = gateway.ingest_url("m", token).split("/api/", 1)[0]
    for path, named in (
        ("/api/v1/ws/meetings/", "meeting id must be"),
        ("/api/v1/ws/ingest/meetings/a%2Fb", "a meeting id holds no '/'"),
        ("/api/v1/ws/meetings/m1/stats", "no WebSocket endpoint at this path"),
        ("/api/v1/ws/nope", "no WebSocket endpoint at this path"),
    ):
        async with connect(f"{base}{path}?token={token}") as ws:
            code, messages = await expect_close(ws)
        assert code == 4400 and named in messages[-1]["message"], (path, messages)
        if path == "/api/v1/ws/meetings/":  # short enough to be the close reason too
            assert ws.close_reason == messages[-1]["message"]
    # The endpoints' paths over plain HTTP: 426, saying what they are.
    async with httpx.AsyncClient(verify=gateway.verify) as client:
        answer = await client.get(f"{gateway.http}/api/v1/ws/meetings/m1")
    assert answer.status_code == 426 and answer.headers["upgrade"] == "websocket"
    assert "WebSocket endpoint" in answer.json()["error"]["message"]


async def test_odd_length_pcm_is_4400(gateway: Gateway, keypair: KeyPair, meeting: str) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    code, messages = await _after_ready(url, SILENCE_20MS_16K, b"\x00\x00\x00")
    assert code == 4400
    assert any(m["type"] == "error" and m["code"] == 4400 for m in messages)


async def test_stereo_frame_must_hold_whole_sample_frames(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    async with connect(url) as ws:
        await ws.send(handshake(channels=2))
        await _ready(ws)
        await ws.send(b"\x00\x00" * 3)  # one and a half stereo frames
        code, _ = await expect_close(ws)
    assert code == 4400


async def test_unknown_control_message_is_4400(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    code, _ = await _after_ready(url, json.dumps({"type": "rewind"}))
    assert code == 4400


async def test_oversized_frame_is_1009(gateway: Gateway, keypair: KeyPair, meeting: str) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    code, messages = await _after_ready(url, b"\x00" * (32768 + 2))
    assert code == 1009
    assert messages[-1]["type"] == "error" and messages[-1]["code"] == 1009


async def test_exactly_max_size_frame_is_accepted(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    code, messages = await _after_ready(url, b"\x00" * 32768, json.dumps({"type": "close"}))
    assert code == 1000
    assert messages[-1]["type"] == "closed" and messages[-1]["frames"] == 1


async def test_second_ingest_of_same_source_is_4409(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    async with connect(url) as mic:
        await mic.send(handshake(source="mic"))
        await _ready(mic)
        assert await close_code_of(url, handshake(source="mic")) == 4409
        async with connect(url) as system:  # the other source streams alongside
            await system.send(handshake(source="system"))
            await _ready(system)
            await system.send(json.dumps({"type": "close"}))
            assert (await expect_close(system))[0] == 1000
        await mic.send(json.dumps({"type": "close"}))
        assert (await expect_close(mic))[0] == 1000
    # Once the first stream ended, the source is free again.
    async with connect(url) as again:
        await again.send(handshake(source="mic"))
        await _ready(again)


async def test_subscriber_limit_is_4429(start_gateway, keypair: KeyPair, meeting: str) -> None:
    gw = start_gateway(MAX_WS_CLIENTS_PER_MEETING="2")
    url = gw.subscribe_url(meeting, keypair.token(roles=["viewer"]))
    async with connect(url) as first, connect(url) as second:
        for ws in (first, second):
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv())["type"] == "pong"
        assert await close_code_of(url) == 4429
    # Leaving frees the places.
    async with connect(url) as third:
        await third.send(json.dumps({"type": "ping"}))
        assert json.loads(await third.recv())["type"] == "pong"


async def test_a_tenants_viewers_over_all_its_meetings_are_limited_4429(
    start_gateway, keypair: KeyPair, meeting: str
) -> None:
    gw = start_gateway(MAX_WS_CLIENTS_PER_TENANT="2", MAX_WS_CLIENTS_PER_MEETING="1")
    token = keypair.token(roles=["viewer"])
    urls = [gw.subscribe_url(f"{meeting}-{n}", token) for n in range(3)]
    async with connect(urls[0]) as first, connect(urls[1]) as second:
        for ws in (first, second):  # both joined, parked (idle viewers)
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv())["type"] == "pong"
        async with connect(urls[2]) as third:
            code, messages = await expect_close(third)
        assert code == 4429 and "tenant subscriber limit" in messages[-1]["message"]
        other = gw.subscribe_url(meeting, keypair.token(tenant="globex", roles=["viewer"]))
        async with connect(other) as elsewhere:  # another tenant keeps its share
            await elsewhere.send(json.dumps({"type": "ping"}))
            assert json.loads(await elsewhere.recv())["type"] == "pong"
    # Leaving (from parked) gives the places back: two again, not one more.
    async with contextlib.AsyncExitStack() as held:
        await eventually(lambda: joins(held, urls[2]), what="a place given back")
        await eventually(lambda: joins(held, urls[0]), what="the other place given back")
        assert await close_code_of(urls[1]) == 4429
    # A viewer refused by its meeting's limit holds no place of its tenant's.
    token = keypair.token(tenant="initech", roles=["viewer"])
    fresh = [gw.subscribe_url(f"{meeting}-{n}", token) for n in range(2)]
    async with contextlib.AsyncExitStack() as held:
        assert await joins(held, fresh[0])
        async with connect(fresh[0]) as over:
            code, messages = await expect_close(over)
        assert code == 4429 and "meeting subscriber limit" in messages[-1]["message"]
        assert await joins(held, fresh[1])


async def joins(held: contextlib.AsyncExitStack, url: str) -> bool:
    """Whether a viewer joins at `url` (kept open in `held`), or is closed 4429."""
    ws = await held.enter_async_context(connect(url))
    await ws.send(json.dumps({"type": "ping"}))
    try:
        return json.loads(await ws.recv())["type"] == "pong"
    except ConnectionClosed:
        return False


async def test_subscriber_message_flood_is_4429(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.subscribe_url(meeting, keypair.token(roles=["viewer"]))
    async with connect(url) as ws:
        for _ in range(60):
            await ws.send(json.dumps({"type": "ping"}))
        code, messages = await expect_close(ws)
    assert code == 4429
    assert messages[-1]["type"] == "error" and messages[-1]["code"] == 4429


async def test_ingest_frame_flood_is_4429(start_gateway, keypair: KeyPair, meeting: str) -> None:
    gw = start_gateway(INGEST_FRAMES_PER_S="5")
    url = gw.ingest_url(meeting, keypair.token(roles=["ingest"]))
    async with connect(url) as ws:
        await ws.send(handshake())
        await _ready(ws)
        for _ in range(40):
            await ws.send(SILENCE_20MS_16K)
        code, messages = await expect_close(ws)
    assert code == 4429
    assert any(m["type"] == "error" and m["code"] == 4429 for m in messages)


async def test_subscriber_ping_and_bad_messages(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.subscribe_url(meeting, keypair.token(roles=["viewer"]))
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"
        await ws.send("nonsense")
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["code"] == 4400
        assert error["message"] == "malformed JSON"
        await ws.send("[]")  # JSON, but not a message
        error = json.loads(await ws.recv())
        assert error["code"] == 4400 and "must be a JSON object" in error["message"], error
        await ws.send(json.dumps({"type": "subscribe"}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and "ping" in error["message"]
        await ws.send(json.dumps({"type": "ping"}))  # still connected
        assert json.loads(await ws.recv())["type"] == "pong"


async def test_invalid_since_is_4400(gateway: Gateway, keypair: KeyPair, meeting: str) -> None:
    url = gateway.subscribe_url(meeting, keypair.token(roles=["viewer"])) + "&since=-1"
    assert await close_code_of(url) == 4400


async def test_ids_that_could_cross_tenants_are_refused(gateway: Gateway, keypair: KeyPair) -> None:
    """Topics join tenant and meeting ids with ':', so neither may contain one."""
    viewer = keypair.token(roles=["viewer"])
    assert await close_code_of(gateway.subscribe_url("a:b", viewer)) == 4400
    assert gateway.get("/api/v1/meetings/a:b/transcript", viewer).status_code == 400
    colon_tenant = keypair.token("acme:m1", roles=["viewer"])
    assert await close_code_of(gateway.subscribe_url("m1", colon_tenant)) == 4401


async def test_a_viewer_message_over_16_kib_of_utf8_is_1009(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """The limit counts bytes: 8,192 characters of 'é' are 16,384 bytes before the JSON around.
    A refresh with a token as long as a request header may carry (8 KiB) fits."""
    url = gateway.subscribe_url(meeting, keypair.token(roles=["viewer"]))
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "ping", "pad": "x" * 16000}))
        assert json.loads(await ws.recv())["type"] == "pong"
        many = [meeting, *(f"meeting-{n:05d}" for n in range(330))]  # a 7.5 KiB token
        long_token = keypair.token(roles=["viewer"], meetings=many)
        assert 6000 < len(long_token) < 8000
        await ws.send(json.dumps({"type": "refresh", "token": long_token}))
        assert json.loads(await ws.recv())["type"] == "refreshed"
        await ws.send(json.dumps({"type": "ping", "pad": "é" * 8192}, ensure_ascii=False))
        code, messages = await expect_close(ws)
    assert code == 1009, messages
    assert messages[-1]["type"] == "error" and messages[-1]["message"] == "message too large"


async def test_a_binary_viewer_message_is_refused_and_over_16_kib_closed_1009(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.subscribe_url(meeting, keypair.token(roles=["viewer"]))
    async with connect(url) as ws:
        await ws.send(b"\x00" * 16384)
        refused = json.loads(await ws.recv())
        assert (
            refused["type"] == "error" and refused["message"] == "binary messages are not accepted"
        )
        await ws.send(b"\x00" * 16385)
        code, messages = await expect_close(ws)
    assert code == 1009, messages
    assert messages[-1]["type"] == "error" and messages[-1]["message"] == "message too large"


async def test_an_error_close_with_messages_queued_behind_it_reads_the_clients_close(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """The gateway closes 4400 on a bad frame while the client's next messages wait unread
    (reading paused behind them): it must still read the client's answering close and end the
    connection with a FIN, not hold it for the 10 s close timeout and then reset it."""
    from websockets.frames import Close, Frame, Opcode
    from websockets.protocol import Protocol, Side

    def frame(opcode: Opcode, data: bytes) -> bytes:
        return Frame(opcode, data).serialize(mask=True, extensions=[])

    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    path = url.split(str(gateway.port), 1)[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    parser = Protocol(Side.CLIENT)  # reads the server's frames

    async def frames_until(opcode: Opcode) -> list[Frame]:
        received: list[Frame] = []
        while not any(f.opcode is opcode for f in received):
            data = await asyncio.wait_for(reader.read(65536), 60)
            assert data, received
            parser.receive_data(data)
            received += parser.events_received()
        return received

    writer.write(frame(Opcode.TEXT, handshake().encode()))
    assert json.loads((await frames_until(Opcode.TEXT))[0].data)["type"] == "ready"
    ping = frame(Opcode.TEXT, b'{"type": "ping"}')
    pcm, _, _ = load_wav_pcm(fixture("two_sentences_16k_mono.wav")[0])
    for i in range(0, 96000, 3200):  # 3 s of speech, sent as a client does, 100 ms at a time
        writer.write(frame(Opcode.BINARY, pcm[i : i + 3200]))
        await asyncio.sleep(0.025)
    writer.write(frame(Opcode.BINARY, b"\x00" * 33))  # odd length: 4400, once the
    ping = frame(Opcode.TEXT, b'{"type": "ping"}')  # speech is flushed, while these queue
    for _ in range(50):
        writer.write(ping)
        await writer.drain()
    (close,) = [f for f in await frames_until(Opcode.CLOSE) if f.opcode is Opcode.CLOSE]
    assert Close.parse(close.data).code == 4400
    writer.write(frame(Opcode.CLOSE, Close(4400, "").serialize()))
    rest = await asyncio.wait_for(reader.read(), 60)  # ECONNRESET if it closed with data unread
    assert rest == b""
    writer.close()
