"""How `DRAIN_TIMEOUT_S` is shared when the process stops: the drain (gateway/drain.py), then
the server's shutdown (uvicorn's `timeout_graceful_shutdown`), then the application's (the
lifespan closes what `build_services` opened)."""

from __future__ import annotations

RESERVE_FRACTION = 0.2  # of DRAIN_TIMEOUT_S, kept for the server's and the lifespan's shutdown


def server_shutdown_s(drain_timeout_s: float) -> float:
    """uvicorn's `timeout_graceful_shutdown` after a drain: half of the reserve (the lifespan's
    shutdown gets the other half)."""
    return max(0.5, drain_timeout_s * RESERVE_FRACTION / 2)


def lifespan_shutdown_s(drain_timeout_s: float) -> float:
    """What the application's own shutdown may take: the other half of the reserve."""
    return max(0.5, drain_timeout_s * RESERVE_FRACTION / 2)
