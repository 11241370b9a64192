"""RS256 key pairs and JWT minting for development and the `meeting-gateway` CLI.

Pure functions with no settings or server imports, so the CLI, the dev scripts and the tests share
them without pulling in the application.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KNOWN_ROLES = frozenset({"ingest", "viewer", "ops", "editor", "admin"})  # gateway.auth ROLE_*
PRIVATE_KEY_MODE = 0o600
PUBLIC_KEY_MODE = 0o644


def generate_keypair(
    dir: Path, name: str = "jwt", *, force: bool = False, key_size: int = 2048
) -> tuple[Path, Path]:
    """Write `<name>.key` (PKCS8 PEM, 0600) and `<name>.pub` (SubjectPublicKeyInfo PEM) in `dir`.

    Raises FileExistsError if either file exists and `force` is false: overwriting one half of a
    pair would silently invalidate every token minted with the other.
    """
    dir = Path(dir)
    key_path, pub_path = dir / f"{name}.key", dir / f"{name}.pub"
    if not force:
        for path in (key_path, pub_path):
            if path.exists():
                raise FileExistsError(f"{path} already exists")
    dir.mkdir(parents=True, exist_ok=True)

    private_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new_file(key_path, private_pem, PRIVATE_KEY_MODE, replace=force)
    _write_new_file(pub_path, public_pem, PUBLIC_KEY_MODE, replace=force)
    return key_path, pub_path


def _write_new_file(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write `data` to `path` so the file never exists with a wider mode than `mode`.

    The bytes go to a fresh sibling created with `mode` (O_EXCL: never an existing file, whose mode
    would be kept), then move into place: os.replace when replacing, os.link otherwise so a file
    that appeared meanwhile is not clobbered.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask may have narrowed it; make it exact
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def mint_token(
    private_key_pem: bytes,
    *,
    tenant: str,
    user: str,
    roles: Sequence[str],
    meetings: Sequence[str] | None = None,
    ttl_s: int = 3600,
    audience: str = "meetings",
    issuer: str = "our-app",
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """An RS256 JWT carrying the claims the gateway checks.

    `meetings=None` omits the claim (any meeting of the tenant); `now` is epoch seconds and exists
    so tests can mint expired or not-yet-valid tokens.
    """
    unknown = set(roles) - KNOWN_ROLES
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; known: {sorted(KNOWN_ROLES)}")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "sub": user,
        "tenant_id": tenant,
        "roles": list(roles),
        "aud": audience,
        "iss": issuer,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl_s),
    }
    if meetings is not None:
        claims["meetings"] = list(meetings)
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, private_key_pem, algorithm="RS256", headers=headers)
