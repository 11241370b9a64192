"""How a dependency's unavailability is said, on REST and WebSocket alike."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from fanout.bus import BusUnavailable
from gateway.dependency_errors import UNAVAILABLE_ERRORS, unavailable


def test_an_exhausted_pool_is_told_apart_from_an_outage() -> None:
    """A viewer's 4503 for an exhausted pool was logged "dependency unavailable", as an outage
    (the REST routes already said "database pool exhausted")."""
    pool = PoolTimeoutError("QueuePool limit of size 1 overflow 0 reached")
    assert isinstance(pool, UNAVAILABLE_ERRORS)
    line, message = unavailable(pool)
    assert line == "database pool exhausted" and "DB_POOL_SIZE" in message
    for outage in (
        OperationalError("SELECT 1", {}, Exception()),
        BusUnavailable("down"),
        OSError(),
    ):
        assert unavailable(outage) == (
            "dependency unavailable",
            "a dependency is unavailable, retry later",
        )
