"""Sessions end with their tokens: expiry closes 4401 unless refreshed; key removal ends them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.harness import Gateway, KeyPair, expect_close, handshake, next_of
from tests.util import eventually

SILENCE_20MS_16K = b"\x00\x00" * 320
# A session token's life: long enough that connecting and the exchanges before its expiry fit
# in it on a loaded machine (a cold gateway's first `ready` included), short enough to wait out.
TTL_S = 10


async def _alive(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "ping"}))
    await next_of(ws, "pong")


async def test_viewer_token_expiry_closes_4401(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_gateway(JWT_LEEWAY_S="0")
    token = keypair.token(roles=["viewer"], ttl=TTL_S)
    async with connect(gw.subscribe_url(meeting, token)) as ws:
        await _alive(ws)
        code, messages = await expect_close(ws, timeout=60)
    assert code == 4401
    errors = [m for m in messages if m["type"] == "error"]
    assert errors and errors[-1]["message"] == "token expired"


async def test_viewer_refresh_extends_the_session(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_gateway(JWT_LEEWAY_S="0")
    first = keypair.token(roles=["viewer"], ttl=TTL_S)
    expires_at = time.time() + TTL_S
    async with connect(gw.subscribe_url(meeting, first)) as ws:
        fresh = keypair.token(roles=["viewer"], meetings=[meeting], ttl=600)
        await ws.send(json.dumps({"type": "refresh", "token": fresh}))
        answer = await next_of(ws, "refreshed")
        assert answer["exp"] == json.loads(_payload(fresh))["exp"]
        # The viewer endpoint's envelope: every message has the same keys.
        envelope = {"segment_no", "text", "start_ms", "end_ms", "speaker", "confidence", "source"}
        assert envelope <= answer.keys() and answer["meeting_id"] == meeting
        # Past the first token's expiry the connection still answers.
        while time.time() < expires_at + 2:
            await _alive(ws)
            await asyncio.sleep(0.5)
        await _alive(ws)


async def test_bad_refresh_is_an_error_and_changes_nothing(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_gateway(JWT_LEEWAY_S="0")
    refusals = {
        "another subject": (keypair.token(roles=["viewer"], sub="someone-else"), 4403),
        "another tenant": (keypair.token(tenant="globex", roles=["viewer"]), 4403),
        "without the role": (keypair.token(roles=["ingest"]), 4403),
        "another meeting": (keypair.token(roles=["viewer"], meetings=["other"]), 4403),
        "another key": (KeyPair.generate().token(roles=["viewer"]), 4401),
        "no token": (None, 4400),
        "not ASCII": ("é.é.é", 4401),
        "a lone surrogate": ("\ud800", 4401),  # valid JSON ("\\ud800"), not encodable
    }
    token = keypair.token(roles=["viewer"], ttl=TTL_S)  # after the slow key generation above
    async with connect(gw.subscribe_url(meeting, token)) as ws:
        for what, (bad, expected) in refusals.items():
            await ws.send(json.dumps({"type": "refresh", "token": bad}))
            error = await next_of(ws, "error")
            assert error["code"] == expected, (what, error)
        await _alive(ws)  # a refused refresh does not close the connection
        code, _ = await expect_close(ws, timeout=60)  # ... which still ends with its token
    assert code == 4401


async def test_ingest_token_expiry_flushes_then_closes_4401(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_gateway(JWT_LEEWAY_S="0")
    token = keypair.token(roles=["ingest"], ttl=TTL_S)
    async with connect(gw.ingest_url(meeting, token)) as ws:
        await ws.send(handshake())
        await next_of(ws, "ready")
        sender = asyncio.create_task(_send_silence(ws))
        code, messages = await expect_close(ws, timeout=60)
        sender.cancel()
    assert code == 4401
    assert messages[-1]["type"] == "error" and messages[-1]["message"] == "token expired"


async def test_ingest_refresh(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_gateway(JWT_LEEWAY_S="0")
    token = keypair.token(roles=["ingest"], ttl=TTL_S)
    expires_at = time.time() + TTL_S
    async with connect(gw.ingest_url(meeting, token)) as ws:
        await ws.send(handshake())
        await next_of(ws, "ready")
        await ws.send(json.dumps({"type": "refresh", "token": keypair.token(roles=["viewer"])}))
        assert (await next_of(ws, "error"))["code"] == 4403
        await ws.send(json.dumps({"type": "refresh", "token": keypair.token(roles=["ingest"])}))
        assert (await next_of(ws, "refreshed"))["exp"] > expires_at
        while time.time() < expires_at + 2:
            await ws.send(SILENCE_20MS_16K)
            await asyncio.sleep(0.1)
        await ws.send(json.dumps({"type": "close"}))
        code, messages = await expect_close(ws, timeout=60)
    assert code == 1000, messages
    assert messages[-1]["type"] == "closed"


def _two_keys(
    start_gateway: Callable[..., Gateway], tmp_path: Path
) -> tuple[Gateway, Path, KeyPair, KeyPair]:
    """A gateway verifying with a key directory of two keys, `old.pem` and `new.pem`."""
    old, new = KeyPair.generate(), KeyPair.generate()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "old.pem").write_bytes(old.public_pem)
    (keys / "new.pem").write_bytes(new.public_pem)
    # Key changes seen within a second: a test holding a handshake until then stays well inside
    # its 10 s timeout.
    return start_gateway(JWT_PUBLIC_KEY_PATH=str(keys), KEY_RELOAD_S="1"), keys, old, new


async def test_removed_key_ends_its_connections_within_a_minute(
    start_gateway: Callable[..., Gateway], tmp_path: Path, meeting: str
) -> None:
    gw, keys, old, new = _two_keys(start_gateway, tmp_path)
    async with (
        connect(gw.subscribe_url(meeting, old.token(kid="old"))) as doomed,
        connect(gw.subscribe_url(meeting, new.token(kid="new"))) as kept,
    ):
        await _alive(doomed)
        await _alive(kept)
        (keys / "old.pem").unlink()
        removed_at = time.monotonic()
        code, messages = await expect_close(doomed, timeout=75)
        assert time.monotonic() - removed_at < 60
        assert code == 4401
        assert "unknown key" in messages[-1]["message"]
        await _alive(kept)


@pytest.mark.parametrize("change", ["removed", "replaced"])
async def test_an_ingest_whose_key_goes_before_its_handshake_is_refused_4401(
    start_gateway: Callable[..., Gateway], tmp_path: Path, meeting: str, change: str
) -> None:
    """The key that verified the token at the upgrade is gone (or holds another key) when the
    handshake comes: 4401 before `ready`, not 1011 nor a session on a key nobody holds."""
    gw, keys, old, new = _two_keys(start_gateway, tmp_path)
    async with connect(gw.ingest_url(meeting, old.token(roles=["ingest"], kid="old"))) as ws:
        if change == "removed":
            (keys / "old.pem").unlink()
        else:
            (keys / "old.pem").write_bytes(KeyPair.generate().public_pem)
        probe = old.token(roles=["viewer"], kid="old")
        await eventually(
            lambda: gw.get("/api/v1/meetings", probe).status_code == 401, within=60, interval=0.5
        )
        await ws.send(handshake())
        code, messages = await expect_close(ws, timeout=60)
    assert code == 4401, messages
    assert [m["type"] for m in messages] == ["error"], messages
    assert gw.get(f"/api/v1/meetings/{meeting}", new.token(kid="new")).status_code == 404


async def _send_silence(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.send(SILENCE_20MS_16K)
            await asyncio.sleep(0.05)


def _payload(token: str) -> str:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


async def test_an_ingest_token_that_expires_before_its_handshake_stores_nothing(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """Valid at the upgrade (within the leeway), expired when the handshake comes: 4401 before
    `ready`, and the meeting never exists."""
    gw = start_gateway(JWT_LEEWAY_S="3")
    expires = int(time.time()) + 1
    token = keypair.token(roles=["ingest"], ttl=1)
    async with connect(gw.ingest_url(meeting, token)) as ws:
        await asyncio.sleep(max(0.0, expires + 3.1 - time.time()))  # token and leeway run out
        await ws.send(handshake())
        code, messages = await expect_close(ws, timeout=60)
    assert code == 4401, messages
    assert [m["type"] for m in messages] == ["error"] and messages[0]["message"] == "token expired"
    assert gw.get(f"/api/v1/meetings/{meeting}", keypair.token(roles=["viewer"])).status_code == 404
