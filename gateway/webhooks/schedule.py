"""When a failed delivery is tried again: exponential backoff from `base_s` doubling up to
`cap_s`, with jitter (shared.backoff), until the delivery is `max_age_s` old; then it has failed
for good."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from shared.backoff import backoff_delay


def retry_delay_s(attempts: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """The wait after the `attempts`-th failed attempt (1-based): shared.backoff's delay."""
    return backoff_delay(max(0, attempts - 1), base_s, cap_s, rng.random)


def next_attempt(
    attempts: int,
    *,
    created_at: datetime,
    now: datetime,
    base_s: float,
    cap_s: float,
    max_age_s: float,
    rng: random.Random,
) -> datetime | None:
    """When to try again after `attempts` failed attempts, or None: give up. A retry that
    would fall past the delivery's max age is made at it instead (a last attempt, not an hour
    early a give-up)."""
    deadline = created_at + timedelta(seconds=max_age_s)
    if now >= deadline:
        return None
    at = now + timedelta(seconds=retry_delay_s(attempts, base_s=base_s, cap_s=cap_s, rng=rng))
    return min(at, deadline)
