"""Page cursors sealed with a key every replica shares (`store.server_secrets`).

A cursor held row numbers and times in plain base64: one tenant could read from them how many
finals every other tenant stored (the row numbers all tenants' finals share), and a cursor with
its positions edited was taken. Sealed with AES-GCM, a cursor says nothing and anything altered
in it is 400. Each cursor is bound to its kind (`meetings`, `search`, `deliveries`), so one
endpoint's is no other's. The key is read from the database at the first cursor (a replica may
start while the database is unreachable).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.http.errors import HttpError

NOT_OURS = "cursor is not one this server issued"
NONCE_BYTES = 12


class CursorSeal:
    def __init__(self, load_key: Callable[[], Awaitable[bytes]]) -> None:
        self._load_key = load_key
        self._aead: AESGCM | None = None
        self._loading = asyncio.Lock()

    async def seal(self, kind: str, payload: dict[str, Any]) -> str:
        nonce = os.urandom(NONCE_BYTES)
        plain = json.dumps(payload, separators=(",", ":")).encode()
        sealed = nonce + (await self._key()).encrypt(nonce, plain, kind.encode())
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    async def open(self, kind: str, cursor: str) -> dict[str, Any]:
        """The payload, or 400 for a cursor this deployment did not issue for `kind`."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except ValueError:
            raise HttpError(400, NOT_OURS) from None
        aead = await self._key()
        try:
            plain = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], kind.encode())
            payload = json.loads(plain)
        except (InvalidTag, ValueError):
            raise HttpError(400, NOT_OURS) from None
        if not isinstance(payload, dict):
            raise HttpError(400, NOT_OURS)
        return payload

    async def _key(self) -> AESGCM:
        if self._aead is None:
            async with self._loading:
                if self._aead is None:
                    self._aead = AESGCM(await self._load_key())
        return self._aead
