"""Which ends of an ingest stream keep no final reaching into the cut (gateway.ws.ingest)."""

from __future__ import annotations

import pytest

from gateway.close_codes import CloseCode, CloseError
from gateway.ws.ingest import client_resends


@pytest.mark.parametrize(
    "code",
    [CloseCode.SERVICE_RESTART, CloseCode.CONFLICT, CloseCode.RATE_LIMITED, CloseCode.UNAVAILABLE],
)
def test_the_gateway_s_reconnect_closes_are_resumed(code: int) -> None:
    assert client_resends(CloseError(code, "x"))


@pytest.mark.parametrize(
    "code",
    [CloseCode.INGEST_IDLE, CloseCode.PROTOCOL_ERROR, CloseCode.TOO_BIG, CloseCode.UNAUTHORIZED],
)
def test_an_idle_broken_or_expired_client_is_not(code: int) -> None:
    """An expired token's client may never get another: its last speech is kept."""
    assert not client_resends(CloseError(code, "x"))


def test_a_client_s_own_end_or_a_dropped_connection_keeps_everything() -> None:
    """A laptop closed at the end of a meeting never comes back to re-send."""
    assert not client_resends(None)
