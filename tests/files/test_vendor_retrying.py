"""The batch engines' retry rules and audio encodings, tested with values."""

from __future__ import annotations

import email.utils

import numpy as np
import pytest

from ingest.engines.base import EngineError
from ingest.files.encoding import decode_s16, flac_bytes, to_s16, wav_bytes
from ingest.files.retrying import RetryPolicy, ThrottledError, retry_after_s, with_retries


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert retry_after_s({"Retry-After": "7"}) == 7.0
    assert retry_after_s({"retry-after": " 0 "}) == 0.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_s({"Retry-After": date}, now=now) == pytest.approx(30, abs=1)
    assert retry_after_s({"Retry-After": email.utils.formatdate(now - 30)}, now=now) == 0.0
    assert retry_after_s({"Retry-After": "soon"}) is None
    assert retry_after_s({}) is None and retry_after_s(None) is None


def test_backoff_doubles_with_jitter_and_retry_after_wins() -> None:
    policy = RetryPolicy(backoff_s=1.0, max_wait_s=10.0)
    for failures, expected in [(1, 1.0), (2, 2.0), (3, 4.0)]:
        assert expected * 0.8 <= policy.wait_s(failures, None) <= expected * 1.2
    assert policy.wait_s(9, None) == 10.0
    assert policy.wait_s(1, 25.0) == 25.0  # over the limit: with_retries gives up instead


async def test_with_retries_stops_at_a_final_error() -> None:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise EngineError("busy", reason="server_error")
        raise EngineError("no", retryable=False, reason="auth")

    with pytest.raises(EngineError, match="no"):
        await with_retries(attempt, RetryPolicy(attempts=5, backoff_s=0.001))
    assert len(calls) == 2


async def test_with_retries_reports_each_wait() -> None:
    waits: list[tuple[str, float]] = []
    outcomes = [ThrottledError("slow", reason="rate_limited", retry_after_s=0.01), None]

    async def attempt() -> str:
        error = outcomes.pop(0)
        if error is not None:
            raise error
        return "done"

    policy = RetryPolicy(attempts=3, backoff_s=0.001)
    result = await with_retries(attempt, policy, lambda e, w: waits.append((e.reason, w)))
    assert result == "done" and waits == [("rate_limited", 0.01)]


def test_encodings_are_lossless_for_16_bit_values() -> None:
    values = np.array([-32768, -1, 0, 1, 3011, 32767] * 4000, dtype=np.int16)
    samples = values.astype(np.float32) / 32768
    assert np.array_equal(to_s16(samples), values)
    for encoded, magic in [(wav_bytes(samples), b"RIFF"), (flac_bytes(samples), b"fLaC")]:
        assert encoded[:4] == magic
        decoded, rate = decode_s16(encoded)
        assert rate == 16000 and np.array_equal(decoded, values)
    assert np.array_equal(to_s16(np.array([1.5, -2.0], np.float32)), [32767, -32768])
