"""Which ends of an ingest stream keep no final reaching into the cut (gateway.ws.ingest)."""

from __future__ import annotations

import pytest

from gateway.close_codes import CloseCode, CloseError
from gateway.ws.ingest import client_resends


@pytest.mark.parametrize(
    "code",
    [
        CloseCode.SERVICE_RESTART,
        CloseCode.UNAUTHORIZED,
        CloseCode.CONFLICT,
        CloseCode.RATE_LIMITED,
        CloseCode.UNAVAILABLE,
    ],
)
def test_the_gateway_s_reconnect_closes_are_resumed(code: int) -> None:
    assert client_resends(CloseError(code, "x"), None)


@pytest.mark.parametrize(
    "code", [CloseCode.INGEST_IDLE, CloseCode.PROTOCOL_ERROR, CloseCode.TOO_BIG]
)
def test_an_idle_or_broken_client_is_not(code: int) -> None:
    assert not client_resends(CloseError(code, "x"), None)


@pytest.mark.parametrize(
    ("disconnect", "resends"),
    [(1006, True), (1011, True), (1000, False), (1001, False), (None, False)],
)
def test_a_dropped_connection_is_resumed_a_client_s_own_end_is_not(
    disconnect: int | None, resends: bool
) -> None:
    assert client_resends(None, disconnect) is resends
