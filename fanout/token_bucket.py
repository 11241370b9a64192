"""A token bucket rate limiter with the clock passed in, so it is pure and testable.

`rate` tokens are added per second up to `burst` (the capacity); the bucket starts full. Callers
pass a monotonic time (e.g. `time.monotonic()`) to every call.
"""

from __future__ import annotations

# Refill arithmetic on floats can land a hair below a whole token (0.1 s * 10/s = 0.9999...);
# without this slack a caller pacing exactly at `rate` would be refused now and then.
_EPSILON = 1e-9


class TokenBucket:
    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        if burst <= 0:
            raise ValueError(f"burst must be > 0, got {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last = now

    def _refill(self, now: float) -> None:
        # A clock that goes backwards (or an out-of-order caller) must not drain or mint tokens.
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Take `n` tokens if available; False (and nothing taken) otherwise."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._refill(now)
        if self._tokens + _EPSILON >= n:
            self._tokens = max(0.0, self._tokens - n)
            return True
        return False

    def tokens(self, now: float) -> float:
        """Tokens available at `now` (refills as a side effect, takes nothing)."""
        self._refill(now)
        return self._tokens

    def retry_after(self, now: float, n: float = 1.0) -> float:
        """Seconds until `n` tokens are available: 0 if now, inf if never (n > burst, rate 0)."""
        missing = n - self.tokens(now)
        if missing <= _EPSILON:
            return 0.0
        if n > self.burst + _EPSILON or self.rate == 0:
            return float("inf")
        return missing / self.rate
