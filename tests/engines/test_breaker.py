"""The circuit breaker, with plain values for the clock."""

from __future__ import annotations

import pytest

from ingest.engines.breaker import BreakerState, CircuitBreaker


def test_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10)
    breaker.record_failure(0)
    breaker.record_failure(1)
    breaker.record_success(2)
    breaker.record_failure(3)
    breaker.record_failure(4)
    assert breaker.allow(4)
    breaker.record_failure(5)
    assert breaker.state(5) is BreakerState.OPEN
    assert not breaker.allow(5)
    assert not breaker.allow(14.9)


def test_after_the_cooldown_one_probe_at_a_time_and_its_success_closes_it() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10, success_threshold=2)
    breaker.record_failure(0)
    assert breaker.state(10) is BreakerState.HALF_OPEN
    assert breaker.allow(10)
    assert not breaker.allow(10.5)  # the probe is out
    breaker.record_success(11)
    assert breaker.state(11) is BreakerState.HALF_OPEN  # needs two successes
    assert breaker.allow(11)
    breaker.record_success(12)
    assert breaker.state(12) is BreakerState.CLOSED
    assert breaker.allow(12) and breaker.allow(12)


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10)
    breaker.record_failure(0)
    breaker.record_failure(0)
    assert breaker.allow(10)
    breaker.record_failure(11)
    assert breaker.state(11) is BreakerState.OPEN
    assert not breaker.allow(20.9)
    assert breaker.allow(21)


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"success_threshold": 0}, {"cooldown_s": -1}]
)
def test_nonsense_thresholds_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)


def test_streams_that_die_together_are_one_failure_and_a_stream_dying_again_counts() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10, incident_window_s=1.0)
    for stream in range(6):  # one worker's crash takes six streams
        breaker.record_stream_death(5.0 + stream / 100, stream)
    assert breaker.state(5.1) is BreakerState.CLOSED
    breaker.record_stream_death(5.2, 0)  # the same stream again, on its replacement
    breaker.record_stream_death(5.3, 0)
    assert breaker.state(5.3) is BreakerState.OPEN


def test_deaths_a_window_apart_are_separate_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10, incident_window_s=1.0)
    breaker.record_stream_death(0.0, "a")
    breaker.record_stream_death(0.5, "b")
    assert breaker.state(0.5) is BreakerState.CLOSED
    breaker.record_stream_death(1.0, "c")
    assert breaker.state(1.0) is BreakerState.OPEN
