"""Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{body}` with the endpoint's secret, base64, versioned `v1,`."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from store.webhooks import SECRET_PREFIX


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64 after `whsec_`."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    signed = f"{msg_id}.{timestamp}.{body}".encode()
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: str
) -> dict[str, str]:
    """The three headers of a delivery attempt (the timestamp is the attempt's, as receivers
    reject old ones), signed with each of `secrets`: space-separated signatures, any of which
    a receiver accepts (a secret being rotated and its successor)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets),
    }
