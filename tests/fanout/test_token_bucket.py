from __future__ import annotations

import math

import pytest

from fanout.token_bucket import TokenBucket


def test_starts_full_and_refuses_past_burst() -> None:
    bucket = TokenBucket(rate=1.0, burst=3.0, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_refills_at_rate_up_to_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2.0, now=0.0)
    assert bucket.take(0.0, 2.0)
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)  # exactly one token again, despite float rounding
    assert not bucket.take(0.1)
    assert bucket.tokens(1000.0) == 2.0  # capped at burst after a long idle


def test_pacing_exactly_at_rate_is_never_refused() -> None:
    bucket = TokenBucket(rate=10.0, burst=1.0, now=0.0)
    assert all(bucket.take(i * 0.1) for i in range(1000))


def test_failed_take_consumes_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=5.0, now=0.0)
    assert not bucket.take(0.0, 6.0)
    assert bucket.take(0.0, 5.0)


def test_clock_going_backwards_neither_mints_nor_drains() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0, now=10.0)
    assert bucket.take(10.0, 2.0)
    assert not bucket.take(5.0)
    assert bucket.tokens(10.0) == 0.0
    assert bucket.take(11.0)


def test_retry_after() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0, now=0.0)
    assert bucket.retry_after(0.0) == 0.0
    bucket.take(0.0, 2.0)
    assert bucket.retry_after(0.0) == pytest.approx(0.25)
    assert bucket.retry_after(0.0, 3.0) == math.inf
    assert TokenBucket(rate=0.0, burst=1.0, now=0.0).retry_after(0.0, 1.0) == 0.0


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=-1.0, burst=1.0, now=0.0)
    with pytest.raises(ValueError):
        TokenBucket(rate=1.0, burst=0.0, now=0.0)
    with pytest.raises(ValueError):
        TokenBucket(rate=1.0, burst=1.0, now=0.0).take(0.0, -1.0)
