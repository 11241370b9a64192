"""Reconnect helpers: exponential delays with jitter, and error descriptions for logs."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Delay before reconnect attempt `attempt` (0-based), in [step/2, step] with
    step = min(cap, base * 2**attempt).

    Half fixed, half random ("equal jitter"): replicas that lost the broker at the same moment
    spread their reconnects out, yet no replica hammers the broker with near-zero delays.
    """
    step = min(cap, base * 2 ** min(attempt, 32))
    return step / 2 + step / 2 * rand()


def describe(exc: BaseException) -> str:
    """Type and message for logs (redis-py 8's repr is only e.g. "network:ConnectionError")."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
