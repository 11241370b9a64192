"""The one backoff formula (shared/backoff.py) every retry loop uses, with plain values."""

from __future__ import annotations

import pytest

from shared.backoff import backoff_delay


def test_backoff_grows_is_capped_and_jittered() -> None:
    assert backoff_delay(0, base=0.1, cap=3.0, rand=lambda: 0.0) == pytest.approx(0.05)
    assert backoff_delay(0, base=0.1, cap=3.0, rand=lambda: 1.0) == pytest.approx(0.1)
    assert backoff_delay(3, base=0.1, cap=3.0, rand=lambda: 1.0) == pytest.approx(0.8)
    assert backoff_delay(10, base=0.1, cap=3.0, rand=lambda: 1.0) == pytest.approx(3.0)
    assert backoff_delay(10_000, base=0.1, cap=3.0, rand=lambda: 0.5) == pytest.approx(2.25)
    delays = {backoff_delay(4, base=0.1, cap=3.0) for _ in range(50)}
    assert len(delays) > 1 and all(0.8 <= d <= 1.6 for d in delays)
