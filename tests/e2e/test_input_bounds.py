"""Hostile inputs through a real gateway: numbers beyond what the store holds, repeated query
parameters, absurd token times and invalid UTF-8 each get a clear error with a documented code
(never 4503, 1011 or a traceback in the log)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import jwt
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.harness import (
    Gateway,
    KeyPair,
    client_ssl_context,
    expect_close,
    handshake,
    next_of,
)
from tests.e2e.test_scale_out import db_upgrade

MAX_SEGMENT_NO = 2**31 - 1  # segment_no is a 32-bit INTEGER column


async def closed_with(url: str, *sends: str | bytes) -> tuple[int, list[dict]]:
    async with connect(url) as ws:
        for item in sends:
            try:
                await ws.send(item)
            except ConnectionClosed:
                break  # refused before this was read: the close and its message follow
        return await expect_close(ws)


async def fetch(url: str, method: str = "GET", token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10, verify=client_ssl_context()) as client:
        return await client.request(method, url, headers=headers)


def log_records(gateway: Gateway) -> list[dict]:
    """The gateway's JSON log lines (LOG_FORMAT=json)."""
    records = []
    for line in gateway.logs().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


async def wait_for_log(gateway: Gateway, predicate: Callable[[dict], bool], count: int) -> None:
    deadline = time.monotonic() + 60
    while sum(map(predicate, log_records(gateway))) < count:
        assert time.monotonic() < deadline, gateway.logs()[-4000:]
        await asyncio.sleep(0.1)


async def test_since_beyond_what_postgresql_holds_is_4400_and_400_not_4503(
    start_gateway: Callable[..., Gateway], pg_url: str, keypair: KeyPair, meeting: str
) -> None:
    assert db_upgrade(pg_url).returncode == 0
    gw = start_gateway(pg_url)
    viewer = keypair.token(roles=["viewer"])
    rule = f"since must be an integer from 0 to {MAX_SEGMENT_NO}"
    for since in (MAX_SEGMENT_NO + 1, 10**17, 10**18 - 1, 10**40):
        code, messages = await closed_with(gw.subscribe_url(meeting, viewer, since=since))
        assert code == 4400, (since, messages)
        assert messages[-1]["code"] == 4400 and messages[-1]["message"] == rule
        response = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer, since=since)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"] == rule
    # The largest number the store holds is a valid `since`: no history, the viewer stays.
    async with connect(gw.subscribe_url(meeting, viewer, since=MAX_SEGMENT_NO)) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert (await next_of(ws, "pong"))["type"] == "pong"
    response = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer, since=MAX_SEGMENT_NO)
    assert response.status_code == 404  # no such meeting yet: the store answered
    assert not [r for r in log_records(gw) if r.get("event") == "dependency unavailable"]


async def test_repeated_query_parameters_are_refused_on_every_route(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    viewer = keypair.token(roles=["viewer"])
    ingest = keypair.token(roles=["ingest"])
    page = await fetch(f"{gateway.http}/viewer?meeting={meeting}&meeting=other")
    assert page.status_code == 400
    assert "'meeting' is repeated" in page.text
    assert (await fetch(f"{gateway.http}/viewer?meeting={meeting}")).status_code == 200
    # An empty value is the parameter left out (docs/protocol.md): the page asks for a meeting.
    assert (await fetch(f"{gateway.http}/viewer?meeting=")).status_code == 200
    transcript = f"{gateway.http}/api/v1/meetings/{meeting}/transcript"
    for query in ("since=0&since=5", "format=srt&format=json"):
        response = await fetch(f"{transcript}?{query}", token=viewer)
        assert response.status_code == 400, response.text
        assert "is repeated" in response.json()["error"]["message"]
    # A parameter the route does not read is ignored, repeated or not.
    unread = await fetch(f"{transcript}?x=1&x=2", token=viewer)
    assert unread.status_code == 404 and "not found" in unread.text  # the meeting has no finals
    assert (await fetch(f"{gateway.http}/healthz?x=1&x=2")).status_code == 200
    # Sockets: 4400 naming the parameter, even when both copies are the same valid token.
    subscribe = f"{gateway.subscribe_url(meeting, viewer)}"
    for url, sends, name in (
        (f"{subscribe}&since=1&since=2", (), "since"),
        (f"{subscribe}&token={viewer}", (), "token"),
        (f"{gateway.ingest_url(meeting, ingest)}&token={ingest}", (handshake(),), "token"),
    ):
        code, messages = await closed_with(url, *sends)
        assert code == 4400, (url, messages)
        assert messages[-1]["message"] == (
            f"query parameter '{name}' is repeated; give it at most once"
        )


def _absurd_tokens(keypair: KeyPair) -> dict[str, str]:
    roles = ["viewer", "ingest"]
    return {
        "exp_10_400": keypair.token(roles=roles, exp=10**400),
        "exp_infinite": keypair.token(roles=roles, exp=float("inf")),  # JSON "Infinity"
        "exp_nan": keypair.token(roles=roles, exp=float("nan")),
        "exp_beyond_year_9999": keypair.token(roles=roles, exp=253402300800),
        "nbf_10_400": keypair.token(roles=roles, nbf=10**400),
        "iat_10_400": keypair.token(roles=roles, iat=10**400),
        "iat_minus_10_400": keypair.token(roles=roles, iat=-(10**400)),
    }


async def test_absurd_token_times_are_4401_and_401_never_1011(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    for case, token in _absurd_tokens(keypair).items():
        claim = case.split("_")[0]
        rule = f"token '{claim}' must be a number of seconds since the epoch"
        code, messages = await closed_with(gateway.subscribe_url(meeting, token))
        assert code == 4401 and messages[-1]["message"].startswith(rule), (case, messages)
        code, messages = await closed_with(gateway.ingest_url(meeting, token), handshake())
        assert code == 4401 and messages[-1]["message"].startswith(rule), (case, messages)
        response = gateway.get(f"/api/v1/meetings/{meeting}/transcript", token)
        assert response.status_code == 401, (case, response.text)
        assert response.json()["error"]["message"].startswith(rule), (case, response.text)
    # On open connections a refresh with such a token is refused and changes nothing.
    refresh = json.dumps({"type": "refresh", "token": _absurd_tokens(keypair)["exp_10_400"]})
    async with connect(gateway.subscribe_url(meeting, keypair.token(roles=["viewer"]))) as ws:
        await ws.send(refresh)
        error = await next_of(ws, "error")
        assert error["code"] == 4401 and "exp" in error["message"]
        await ws.send(json.dumps({"type": "ping"}))
        await next_of(ws, "pong")
    async with connect(gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
        await ws.send(handshake())
        await next_of(ws, "ready")
        await ws.send(refresh)
        error = await next_of(ws, "error")
        assert error["code"] == 4401 and "exp" in error["message"]
        await ws.send(json.dumps({"type": "close"}))
        code, _ = await expect_close(ws)
        assert code == 1000
    assert "Traceback" not in gateway.logs() and "OverflowError" not in gateway.logs()


def test_claims_of_the_wrong_kind_are_401_naming_the_rule(
    gateway: Gateway, keypair: KeyPair
) -> None:
    """Not "token expired" for `exp: true` (PyJWT reads it as 1), nor a PyJWT class name."""
    valid = jwt.decode(keypair.token(roles=["viewer"]), options={"verify_signature": False})
    cases = [
        ({"exp": True}, "token 'exp' must be a number of seconds since the epoch"),
        ({"exp": False}, "token 'exp' must be a number of seconds since the epoch"),
        ({"nbf": None}, "token 'nbf' must be a number of seconds since the epoch"),
        ({"sub": 5}, "token 'sub' must be a string"),
        ({"jti": 5}, "token 'jti' must be a string"),
        ({"tenant_id": 5}, "token 'tenant_id' must be a string"),
        ({"tenant_id": ["acme"]}, "token 'tenant_id' must be a string"),
        ({"tenant_id": ""}, "token has no 'tenant_id'"),
        ({"iat": [1]}, "token 'iat' must be a number of seconds since the epoch"),
        ({"exp": ...}, "token lacks the 'exp' claim"),
    ]
    for change, rule in cases:
        claims = {k: v for k, v in (valid | change).items() if v is not ...}
        token = jwt.encode(claims, keypair.private_pem, algorithm="RS256")
        response = gateway.get("/api/v1/meetings/m-none/transcript", token)
        assert response.status_code == 401, (change, response.text)
        assert response.json()["error"]["message"].startswith(rule), (change, response.text)


def test_a_token_valid_until_year_9999_still_works(gateway: Gateway, keypair: KeyPair) -> None:
    token = keypair.token(roles=["viewer"], exp=253402300799)
    assert gateway.get("/api/v1/meetings/m-none/transcript", token).status_code == 404
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] == 253402300799


async def test_invalid_utf8_text_closes_1007_with_one_warning_line(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    def is_utf8_warning(record: dict) -> bool:
        return "invalid UTF-8" in record.get("event", "")

    before = sum(map(is_utf8_warning, log_records(gateway)))
    async with connect(gateway.subscribe_url(meeting, keypair.token(roles=["viewer"]))) as ws:
        await ws.send(b"\xff\xfe{", text=True)  # a text frame that is not UTF-8
        code, _ = await expect_close(ws)
        assert code == 1007
    async with connect(gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
        await ws.send(handshake())
        await next_of(ws, "ready")
        await ws.send(b'{"type": "\xc3\x28"}', text=True)
        code, _ = await expect_close(ws)
        assert code == 1007
    await wait_for_log(gateway, is_utf8_warning, before + 2)
    warnings = [r for r in log_records(gateway) if is_utf8_warning(r)]
    assert {r["level"] for r in warnings} == {"warning"}
    assert not any("exception" in r or "exc_info" in r for r in warnings)
    assert not [r for r in log_records(gateway) if r.get("level") in ("error", "critical")]
    assert "Traceback" not in gateway.logs()


async def test_invalid_utf8_with_the_peers_close_behind_it_is_one_warning_line(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """The peer's close frame right behind the bad text frame (one TCP segment) is answered,
    with one warning line and no traceback (uvicorn's 1007 raised, websockets having answered
    the close already, and nothing was sent)."""
    import base64
    import os
    import socket
    import struct

    def masked(opcode: int, payload: bytes) -> bytes:
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body

    def is_utf8_warning(record: dict) -> bool:
        return "invalid UTF-8" in record.get("event", "")

    before = sum(map(is_utf8_warning, log_records(gateway)))
    path = gateway.subscribe_url(meeting, keypair.token(roles=["viewer"])).split("/", 3)[3]
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET /{path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 101"), answer
        sock.sendall(masked(0x1, b"\xff\xfe") + masked(0x8, struct.pack("!H", 1000)))
        received = answer.split(b"\r\n\r\n", 1)[1]
        while chunk := sock.recv(4096):  # until the server closes the connection
            received += chunk
    assert received[:1] == b"\x88", received  # the close answered
    # The peer's 1000 echoed; 1007 only if loopback split the write (uvicorn's own path then).
    assert struct.unpack("!H", received[2:4])[0] in (1000, 1007), received
    await wait_for_log(gateway, is_utf8_warning, before + 1)
    assert not [r for r in log_records(gateway) if r.get("level") in ("error", "critical")]
    assert "Traceback" not in gateway.logs()


async def test_huge_numbers_in_a_handshake_are_4400(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    url = gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))
    for hs in (
        handshake(sample_rate=10**17),
        handshake(channels=2**64),
        handshake(sample_rate=1e400),  # JSON Infinity
        '{"type": "handshake", "source": "mic", "sample_rate": 1' + "0" * 5000 + "}",
    ):
        code, messages = await closed_with(url, hs)
        assert code == 4400, (hs[:80], messages)
        assert messages[-1]["message"]


async def test_hostile_bodies_and_paths_are_400_with_a_json_error_never_500(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """Inputs that once reached a traceback: each is refused with the API's JSON error."""
    token = keypair.token(roles=["ingest", "viewer"])
    auth = {"Authorization": f"Bearer {token}"}
    as_json = {**auth, "Content-Type": "application/json"}
    edit = f"{gateway.http}/api/v1/meetings/{meeting}"
    cases: list[tuple[str, str, dict[str, str], bytes, int, str]] = [
        ("PATCH", edit, as_json, b'{"title": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "JSON"),
        ("PATCH", edit, as_json, b'{"title": "a", "title": "b"}', 400, '"title" twice'),
        ("PATCH", edit, as_json, b'{"speakers": {"x": "A", "x": "B"}}', 400, '"x" twice'),
        ("PATCH", edit, as_json, b'{"title": "a\\ud800b"}', 400, "Unicode text"),
        # An unclosed override reversed the rest of a line (the multilingual tester).
        ("PATCH", edit, as_json, b'{"title": "a\\u202eevil"}', 400, "not closed"),
        ("PATCH", edit, as_json, b'{"speakers": {"S1": "A\\u2067B"}}', 400, "isolate"),
        ("PATCH", f"{edit}/segments/1", as_json, b'{"text": "x \\u202d y"}', 400, "bidi"),
        ("PATCH", edit, as_json, b'{"speakers": {"\\udfff": "x"}}', 400, "Unicode text"),
        ("PATCH", edit, as_json, b'{"title": "a\\u0000b"}', 400, "NUL"),
        ("PATCH", edit, as_json, b'{"title": "a\\ud800b"}', 400, "lone surrogate"),
        # Python's JSON decoder reads these; JSON has no NaN, and a number this long is refused.
        ("PATCH", edit, as_json, b'{"title": NaN}', 400, "NaN, which is not JSON"),
        ("PATCH", edit, as_json, b'{"title": -Infinity}', 400, "-Infinity, which is not JSON"),
        ("PATCH", edit, as_json, b'{"title": ' + b"9" * 5000 + b"}", 400, "digits"),
        ("PATCH", edit, as_json, b'{"title": 1e999}', 400, "too large"),
        ("PATCH", f"{edit}/segments/{'9' * 5000}", as_json, b'{"text": "x"}', 400, "integer"),
        (
            "POST",
            f"{edit}/recordings",
            {**auth, "Content-Type": f"multipart/form-data; boundary={'b' * 300}"},
            b"--" + b"b" * 300 + b"\r\n",
            400,
            "boundary",
        ),
        ("POST", f"{edit}/recordings?language=en&language=tr", auth, b"", 400, "repeated"),
        (
            "POST",
            f"{edit}/recordings",
            {**auth, "Content-Type": "multipart/form-data; boundary=B"},
            b'--B\r\nContent-Disposition: form-data; name="label"\r\n\r\na\x00b\r\n'
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\nRIFF\r\n--B--\r\n",
            400,
            "NUL",
        ),
        (  # thousands of tiny fields before the file: refused as they come, not held
            "POST",
            f"{edit}/recordings",
            {**auth, "Content-Type": "multipart/form-data; boundary=B"},
            b"".join(
                b'--B\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % n
                for n in range(5000)
            )
            + b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\nRIFF\r\n--B--\r\n",
            400,
            "at most 16 parts",
        ),
        (  # a part header without its colon: what is wrong, not the parser's class name
            "POST",
            f"{edit}/recordings",
            {**auth, "Content-Type": "multipart/form-data; boundary=B"},
            b"--B\r\nContent-Disposition form-data\r\n\r\nx\r\n--B--\r\n",
            400,
            "invalid character 32 in header",
        ),
        ("GET", f"{gateway.http}/api/v1/search?q=a%00b", auth, b"", 400, "NUL"),
    ]
    async with httpx.AsyncClient(timeout=30, verify=client_ssl_context()) as client:
        for method, url, headers, body, status, named in cases:
            response = await client.request(method, url, headers=headers, content=body)
            assert response.status_code == status, (url[:120], response.text[:300])
            assert named in response.json()["error"]["message"], (url[:120], response.text)
        # A closed isolate, as applications put around a name, is text.
        closed = await client.patch(
            edit, headers=as_json, content='{"title": "\u2068Ay\u015fe\u2069 sync"}'.encode()
        )
        assert closed.status_code in (200, 404), closed.text
        # Starlette's own refusals keep their headers (a 405's Allow).
        wrong_method = await client.put(f"{edit}/transcript", headers=auth)
        assert wrong_method.status_code == 405
        assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "HEAD"}
        assert wrong_method.json()["error"]["status"] == 405
        # A path served by one route per method allows every one of them.
        api = f"{gateway.http}/api/v1"
        for path, allowed in [
            (edit, {"GET", "HEAD", "PATCH", "DELETE"}),
            (f"{api}/webhooks", {"GET", "HEAD", "POST"}),
            (f"{edit}/recordings", {"GET", "HEAD", "POST"}),
            (f"{api}/recordings/j1", {"GET", "HEAD", "DELETE"}),
        ]:
            wrong_method = await client.put(path, headers=auth)
            assert wrong_method.status_code == 405, path
            assert set(wrong_method.headers["allow"].split(", ")) == allowed, path


def test_a_json_body_declared_over_its_limit_is_413_before_it_is_sent(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """A client that asks first (`Expect: 100-continue`) is not told to send 2 MB the route
    would refuse at 64 KiB: the declared length is refused at once, as an upload's is."""
    import socket

    token = keypair.token(roles=["ingest", "viewer"])
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=60) as sock:
        sock.sendall(
            (
                f"PATCH /api/v1/meetings/{meeting} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                "Content-Length: 2000000\r\nExpect: 100-continue\r\n\r\n"
            ).encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            received = sock.recv(4096)
            assert received, answer
            answer += received
    assert answer.startswith(b"HTTP/1.1 413"), answer


def test_a_ping_flood_from_a_peer_that_reads_nothing_is_read_no_more(
    gateway: Gateway, keypair: KeyPair
) -> None:
    """Each ping is answered with a pong; a peer that sends pings and reads nothing would make
    the server buffer pongs without bound. Past WRITE_BACKLOG_MAX the server stops reading it,
    so what the client can send stays bounded by the kernels' buffers."""
    import base64
    import os
    import select
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    path = gateway.ingest_url("m-ping-flood", keypair.token(roles=["ingest"])).split("/", 3)[3]
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /{path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    mask = os.urandom(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"p" * 125))
    flood = (bytes([0x89, 0x80 | 125]) + mask + payload) * 500  # 500 masked pings, 64 KiB
    sock.setblocking(False)
    sent, pending = 0, memoryview(b"")
    while sent < 200_000_000:
        _, writable, _ = select.select([], [sock], [], 5)
        if not writable:
            break  # nothing taken for 5 s: the server stopped reading
        if not pending:
            pending = memoryview(flood)
        try:
            n = sock.send(pending)
        except BlockingIOError:
            continue
        sent, pending = sent + n, pending[n:]
    sock.close()
    assert sent < 64_000_000, f"{sent / 1e6:.0f} MB of pings taken from a peer reading nothing"


async def test_ingest_answers_ping_and_takes_close_past_its_rate(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """INGEST_FRAMES_PER_S 1 (a burst of 2): a ping and a frame take it all, and `close` is
    still not refused for the rate; `closed` follows. `ready` names the source it holds."""
    gw = start_gateway(INGEST_FRAMES_PER_S="1")
    async with connect(gw.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
        await ws.send(handshake(source="system"))
        ready = await next_of(ws, "ready")
        assert ready["source"] == "system"
        await ws.send(json.dumps({"type": "ping"}))
        pong = await next_of(ws, "pong")  # with the envelope, as the viewer endpoint's
        assert pong["meeting_id"] == meeting and "ts" in pong and pong["segment_no"] is None
        await ws.send(bytes(640))
        await ws.send(json.dumps({"type": "close"}))
        closed = await next_of(ws, "closed")
        assert closed["frames"] == 1
        code, _ = await expect_close(ws)
        assert code == 1000
