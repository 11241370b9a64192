"""Dev tokens minted with a local private key (`meeting-gateway keys generate`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.tokens import mint_token


def dev_token(key_path: str | Path, **claims: Any) -> str:
    """Mint a token with the private key at `key_path` (`meeting-gateway keys generate`); `claims`
    are `gateway.tokens.mint_token`'s keyword arguments."""
    try:
        pem = Path(key_path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{key_path} not found: create a key pair (`make run` does, or "
            "`.venv/bin/python scripts/generate_keys.py`), point --key at one, or (recordings) "
            "pass --token"
        ) from None
    except OSError as exc:
        raise OSError(f"cannot read {key_path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(
            f"{key_path} is not an RSA private key PEM (jwt.key of `keys generate`, not jwt.pub)"
        )
    return mint_token(pem, **claims)


def claim_default(variable: str, fallback: str) -> str:
    """A self-minted token's `aud`/`iss`: the gateway's JWT_AUDIENCE / JWT_ISSUER as the gateway
    reads it (surrounding whitespace stripped: a value from a file ends in a newline), else
    `fallback`."""
    value = os.environ.get(variable, "").strip()
    return value or fallback
