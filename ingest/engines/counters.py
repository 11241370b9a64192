"""Engine counters kept in one place (the metrics module exposes them as Prometheus metrics).

Plain numbers, no I/O: `snapshot()` returns a copy the stats endpoints or an exporter can read.
Keys are engine names and short reason words, never anything from a client or a vendor message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class EngineCounters:
    stream_opens: Counter[str] = field(default_factory=Counter)  # engine
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)  # (engine, reason)
    failovers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (from, to)
    rotations: Counter[str] = field(default_factory=Counter)  # engine
    first_partial_count: Counter[str] = field(default_factory=Counter)  # engine
    first_partial_seconds_sum: dict[str, float] = field(default_factory=dict)  # engine
    first_partial_seconds: list[tuple[str, float]] = field(default_factory=list)  # recent

    RECENT_LATENCIES = 1000

    def opened(self, engine: str) -> None:
        self.stream_opens[engine] += 1

    def failed(self, engine: str, reason: str) -> None:
        self.failures[(engine, reason)] += 1

    def failed_over(self, old: str, new: str) -> None:
        self.failovers[(old, new)] += 1

    def rotated(self, engine: str) -> None:
        self.rotations[engine] += 1

    def first_partial(self, engine: str, seconds: float) -> None:
        """Audio-to-first-result latency of one stream (first audio sent to first result)."""
        self.first_partial_count[engine] += 1
        self.first_partial_seconds_sum[engine] = (
            self.first_partial_seconds_sum.get(engine, 0.0) + seconds
        )
        self.first_partial_seconds.append((engine, seconds))
        del self.first_partial_seconds[: -self.RECENT_LATENCIES]

    def snapshot(self) -> dict[str, object]:
        return {
            "stream_opens": dict(self.stream_opens),
            "failures": {f"{e}:{r}": n for (e, r), n in self.failures.items()},
            "failovers": {f"{a}->{b}": n for (a, b), n in self.failovers.items()},
            "rotations": dict(self.rotations),
            "first_partial_count": dict(self.first_partial_count),
            "first_partial_seconds_sum": dict(self.first_partial_seconds_sum),
        }
