"""Circuit breaker per engine, pure: the caller passes the clock.

closed: streams may use the engine; `failure_threshold` consecutive failures open it. Streams
that die together (within `incident_window_s` of the incident's first) are one failure.
open: no stream may use it until `cooldown_s` has passed, then it is half-open.
half-open: one probe at a time may use it; `success_threshold` successes close it, a failure
re-opens it for another cool-down.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    failure_threshold: int = 3
    cooldown_s: float = 30.0
    success_threshold: int = 1
    incident_window_s: float = 1.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.success_threshold < 1 or self.cooldown_s < 0:
            raise ValueError("breaker thresholds must be >= 1 and the cool-down >= 0")
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._successes = 0
        self._opened_at = 0.0
        self._probing = False
        self._incident_at = float("-inf")
        self._incident: set[Hashable] = set()

    def state(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now - self._opened_at >= self.cooldown_s:
            self._state = BreakerState.HALF_OPEN
            self._successes = 0
            self._probing = False
        return self._state

    def allow(self, now: float) -> bool:
        """May a stream use the engine now? In half-open state this claims the single probe."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def lets_a_stream_try(self, now: float) -> bool:
        """Whether `allow` would let a stream try now, claiming nothing (readiness)."""
        state = self.state(now)
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probing
        )

    def tripped(self, now: float) -> bool:
        """Open, or half-open with no success yet: the engine has not been seen working since
        it failed (the cool-down passing alone does not make it so)."""
        return self.state(now) is not BreakerState.CLOSED

    def reopens_in(self, now: float) -> float:
        """Seconds until an open breaker lets a probe through; 0 when not open."""
        if self.state(now) is BreakerState.OPEN:
            return max(0.0, self.cooldown_s - (now - self._opened_at))
        return 0.0

    def release_probe(self) -> None:
        """The probe claimed by `allow` was not used (the engine was full): another may go."""
        self._probing = False

    def record_success(self, now: float) -> None:
        state = self.state(now)
        self._failures = 0
        if state is BreakerState.HALF_OPEN:
            self._probing = False
            self._successes += 1
            if self._successes >= self.success_threshold:
                self._state = BreakerState.CLOSED

    def record_failure(self, now: float) -> None:
        state = self.state(now)
        if state is BreakerState.HALF_OPEN:
            self._trip(now)
            return
        self._failures += 1
        if state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._trip(now)

    def record_stream_death(self, now: float, stream: Hashable) -> None:
        """`stream` died mid-stream on the engine. Deaths of other streams within the window
        are the same incident (one worker's crash, one outage): counted one each, a crash that
        took three streams would open the breaker and refuse their failover. A stream dying
        again is a new incident, so one that keeps dying still opens it."""
        if now - self._incident_at < self.incident_window_s and stream not in self._incident:
            self._incident.add(stream)
            return
        self._incident_at = now
        self._incident = {stream}
        self.record_failure(now)

    def _trip(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._failures = 0
        self._successes = 0
        self._probing = False
