"""Retries with backoff for the vendors' batch calls: 429 and 5xx (or their gRPC kin) are tried
again after the vendor's `Retry-After`, else exponential backoff with jitter; an error that is
not retryable (bad credentials, a rejected request) ends the call at once."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from ingest.engines.base import EngineError

T = TypeVar("T")


class ThrottledError(EngineError):
    """A retryable error that says how long to wait before the next attempt."""

    def __init__(self, message: str, *, reason: str, retry_after_s: float | None) -> None:
        super().__init__(message, retryable=True, reason=reason)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # in all, the first included
    backoff_s: float = 1.0  # first wait; doubles per attempt, with +-20 % jitter
    max_wait_s: float = 60.0  # a longer Retry-After fails the call (the job retries later)

    def wait_s(self, failures: int, retry_after_s: float | None) -> float:
        """How long to wait after the `failures`-th failure in a row (1-based)."""
        if retry_after_s is not None:
            return max(0.0, retry_after_s)
        backoff = self.backoff_s * 2 ** (failures - 1)
        return min(self.max_wait_s, backoff * random.uniform(0.8, 1.2))


def retry_after_s(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header (delta-seconds or an HTTP date) asks to wait, or None."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    on_retry: Callable[[EngineError, float], None] | None = None,
) -> T:
    """Run `attempt` until it succeeds, raises a non-retryable `EngineError`, or has failed
    `policy.attempts` times (the last error is raised)."""
    failures = 0
    while True:
        try:
            return await attempt()
        except EngineError as exc:
            failures += 1
            if not exc.retryable or failures >= policy.attempts:
                raise
            delay = policy.wait_s(
                failures, exc.retry_after_s if isinstance(exc, ThrottledError) else None
            )
            if delay > policy.max_wait_s:
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            await asyncio.sleep(delay)
