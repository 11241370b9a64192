"""The auth matrix: every bad token is refused with 4401 (WebSocket) or 401 (REST)."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import jwt
import pytest

from tests.e2e.harness import Gateway, KeyPair, close_code_of, handshake


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides: object) -> dict:
    now = int(time.time())
    claims = {
        "sub": "u",
        "tenant_id": "acme",
        "roles": ["viewer", "ingest", "ops"],
        "aud": "meetings",
        "iss": "our-app",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return claims


def bad_tokens(keypair: KeyPair) -> dict[str, str | None]:
    now = int(time.time())
    other = KeyPair.generate()
    return {
        "missing": None,
        "garbage": "not-a-jwt",
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.",
        # The classic confusion attack: HMAC keyed with the RSA public key.
        "hs256_with_public_key": _hs256(keypair.public_pem, _claims()),
        "expired": keypair.token(roles=["viewer", "ingest"], exp=now - 3600, iat=now - 7200),
        "not_yet_valid": keypair.token(roles=["viewer", "ingest"], nbf=now + 3600),
        "wrong_audience": keypair.token(roles=["viewer", "ingest"], aud="other"),
        "wrong_issuer": keypair.token(roles=["viewer", "ingest"], iss="evil"),
        "other_key": other.token(roles=["viewer", "ingest"]),
        "no_tenant": keypair.token(roles=["viewer", "ingest"], tenant_id=None),
        "no_exp": keypair.token(roles=["viewer", "ingest"], exp=None),
    }


def _hs256(secret: bytes, claims: dict) -> str:
    header = _b64({"alg": "HS256", "typ": "JWT"})
    payload = _b64(claims)
    import hashlib
    import hmac

    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


CASES = [
    "missing",
    "garbage",
    "alg_none",
    "hs256_with_public_key",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "other_key",
    "no_tenant",
    "no_exp",
]


@pytest.mark.parametrize("case", CASES)
async def test_subscriber_rejects_bad_token(gateway: Gateway, keypair: KeyPair, case: str) -> None:
    token = bad_tokens(keypair)[case]
    assert await close_code_of(gateway.subscribe_url("m1", token)) == 4401


@pytest.mark.parametrize("case", CASES)
async def test_ingest_rejects_bad_token(gateway: Gateway, keypair: KeyPair, case: str) -> None:
    token = bad_tokens(keypair)[case]
    assert await close_code_of(gateway.ingest_url("m1", token), handshake()) == 4401


@pytest.mark.parametrize("case", CASES)
def test_rest_rejects_bad_token(gateway: Gateway, keypair: KeyPair, case: str) -> None:
    token = bad_tokens(keypair)[case]
    response = gateway.get("/api/v1/meetings/m1/transcript", token)
    assert response.status_code == 401
    assert response.json()["error"]["message"]
    assert response.headers["www-authenticate"] == "Bearer"  # RFC 6750: the scheme to use


def test_pyjwt_itself_would_accept_our_valid_token(keypair: KeyPair) -> None:
    """Guards the matrix: the valid baseline token really is valid, so 4401s mean something."""
    claims = jwt.decode(
        keypair.token(roles=["viewer"]),
        keypair.public_pem,
        algorithms=["RS256"],
        audience="meetings",
        issuer="our-app",
    )
    assert claims["tenant_id"] == "acme"


async def test_bearer_header_is_accepted(gateway: Gateway, keypair: KeyPair) -> None:
    from websockets.asyncio.client import connect

    token = keypair.token(roles=["viewer"])
    async with connect(
        gateway.subscribe_url("m1"), additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"


def test_rest_says_how_to_send_a_token_it_did_not_read(gateway: Gateway, keypair: KeyPair) -> None:
    """In the URL (REST reads only the header: URLs end up in logs) or without its scheme."""
    import httpx

    token = keypair.token(roles=["viewer"])
    url = f"{gateway.http}/api/v1/meetings/m1/transcript"
    for answer in (
        httpx.get(url, params={"token": token}, timeout=10),
        httpx.get(url, headers={"Authorization": token}, timeout=10),
    ):
        assert answer.status_code == 401
        assert "Authorization: Bearer" in answer.json()["error"]["message"]


async def test_two_authorization_headers_are_refused(gateway: Gateway, keypair: KeyPair) -> None:
    """A proxy in front may have checked one, the gateway would take the other."""
    import httpx

    bound, wide = keypair.token(roles=["viewer"], meetings=["m1"]), keypair.token(roles=["viewer"])
    two = [("Authorization", f"Bearer {bound}"), ("Authorization", f"Bearer {wide}")]
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{gateway.http}/api/v1/meetings/m2", headers=two)
    assert response.status_code == 401
    assert "more than one Authorization header" in response.json()["error"]["message"]
    assert await close_code_of(gateway.subscribe_url("m2"), headers=two) == 4401
    ingest = keypair.token(roles=["ingest"])
    twice = [("Authorization", f"Bearer {ingest}")] * 2
    assert await close_code_of(gateway.ingest_url("m2"), handshake(), headers=twice) == 4401


async def test_a_bearer_header_without_its_token_is_refused_not_passed_over(
    gateway: Gateway, keypair: KeyPair
) -> None:
    # The `?token=` beside it was taken instead: a proxy in front may have checked the header.
    import httpx
    from websockets.asyncio.client import connect

    viewer = keypair.token(roles=["viewer"])
    headers = [("Authorization", "Bearer")]
    assert await close_code_of(gateway.subscribe_url("m2", viewer), headers=headers) == 4401
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{gateway.http}/api/v1/meetings", headers=headers)
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["error"]["message"]
    # Another scheme is a proxy's (a browser's cached Basic login, sent on the viewer page's
    # WebSocket too): the query's token is read.
    basic = [("Authorization", "Basic dXNlcjpwYXNz")]
    async with connect(gateway.subscribe_url("m2", viewer), additional_headers=basic) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        while json.loads(await ws.recv())["type"] != "pong":
            pass


async def test_unknown_kid_with_key_directory(start_gateway, keypair: KeyPair, tmp_path) -> None:
    """A directory of <kid>.pem keys: known kids verify, unknown kids are 4401; rotation works."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "k1.pem").write_bytes(keypair.public_pem)
    gw = start_gateway(JWT_PUBLIC_KEY_PATH=str(keys), KEY_RECHECK_S="1")
    ok = keypair.token(roles=["viewer"], kid="k1")
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with connect(gw.subscribe_url("m1", ok)) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"
    assert await close_code_of(gw.subscribe_url("m1", keypair.token(kid="k9"))) == 4401
    # Rotation: a new key dropped into the directory is picked up without a restart.
    rotated = KeyPair.generate()
    (keys / "k2.pem").write_bytes(rotated.public_pem)
    await _until(lambda: _answer(gw.subscribe_url("m1", rotated.token(kid="k2"))), "pong")
    # Retiring the old key revokes its tokens, on new connections and on open ones (within
    # KEY_RECHECK_S plus the key ring's reload); a stray non-key file changes nothing.
    async with connect(gw.subscribe_url("m1", ok)) as signed_by_k1:
        (keys / "notes.pem").write_text("not a key")
        (keys / "k1.pem").unlink()
        await _until(lambda: _answer(gw.subscribe_url("m1", ok)), 4401)
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(60):
                while True:
                    await signed_by_k1.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    async with connect(gw.subscribe_url("m1", rotated.token(kid="k2"))) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"


async def _answer(url: str) -> str | int:
    """ "pong" if the gateway accepts the token, else its close code."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    try:
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            return json.loads(await ws.recv())["type"]
    except ConnectionClosed as exc:
        assert exc.rcvd is not None
        return exc.rcvd.code


async def _until(probe, expected: str | int, within: float = 60.0) -> None:
    """Key files are re-read every few seconds: poll until the gateway sees the change."""
    import asyncio

    deadline = time.monotonic() + within
    while (answer := await probe()) != expected:
        assert time.monotonic() < deadline, f"still {answer!r}, expected {expected!r}"
        await asyncio.sleep(0.25)
