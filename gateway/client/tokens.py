"""Dev tokens minted with a local private key (see scripts/generate_keys.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.tokens import mint_token


def dev_token(key_path: str | Path, **claims: Any) -> str:
    """Mint a token with the private key at `key_path` (see scripts/generate_keys.py); `claims`
    are `gateway.tokens.mint_token`'s keyword arguments."""
    try:
        pem = Path(key_path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{key_path} not found: run `python scripts/generate_keys.py` or pass --token"
        ) from None
    return mint_token(pem, **claims)
