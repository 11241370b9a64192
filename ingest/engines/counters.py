"""Engine counters kept in one place (the metrics module exposes them as Prometheus metrics).

Plain numbers, no I/O: `snapshot()` returns a copy the stats endpoints or an exporter can read.
Keys are engine names and short reason words, never anything from a client or a vendor message.
An optional `listener` is told of every count (not latencies) as it happens; its method names are
those of the gateway's Prometheus `Metrics`, so that object can be passed as it is.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol


class CounterListener(Protocol):
    def engine_opened(self, engine: str) -> None: ...
    def engine_failed(self, engine: str) -> None: ...
    def engine_failover(self, from_engine: str) -> None: ...
    def engine_rotated(self, engine: str) -> None: ...


@dataclass
class EngineCounters:
    listener: CounterListener | None = None
    stream_opens: Counter[str] = field(default_factory=Counter)  # engine
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)  # (engine, reason)
    failovers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (from, to)
    rotations: Counter[str] = field(default_factory=Counter)  # engine
    first_partial_count: Counter[str] = field(default_factory=Counter)  # engine
    first_partial_seconds_sum: dict[str, float] = field(default_factory=dict)  # engine

    def opened(self, engine: str) -> None:
        self.stream_opens[engine] += 1
        if self.listener is not None:
            self.listener.engine_opened(engine)

    def failed(self, engine: str, reason: str) -> None:
        self.failures[(engine, reason)] += 1
        if self.listener is not None:
            self.listener.engine_failed(engine)

    def failed_over(self, old: str, new: str) -> None:
        self.failovers[(old, new)] += 1
        if self.listener is not None:
            self.listener.engine_failover(old)

    def rotated(self, engine: str) -> None:
        self.rotations[engine] += 1
        if self.listener is not None:
            self.listener.engine_rotated(engine)

    def first_partial(self, engine: str, seconds: float) -> None:
        """Audio-to-first-result latency of one stream (its first audio to its first result)."""
        self.first_partial_count[engine] += 1
        total = self.first_partial_seconds_sum.get(engine, 0.0) + seconds
        self.first_partial_seconds_sum[engine] = total
        # Not told to the listener: the gateway measures first-partial latency per utterance
        # (audio received to first partial) in its segment pipeline, one histogram for all.

    def snapshot(self) -> dict[str, object]:
        return {
            "stream_opens": dict(self.stream_opens),
            "failures": {f"{e}:{r}": n for (e, r), n in self.failures.items()},
            "failovers": {f"{a}->{b}": n for (a, b), n in self.failovers.items()},
            "rotations": dict(self.rotations),
            "first_partial_count": dict(self.first_partial_count),
            "first_partial_seconds_sum": dict(self.first_partial_seconds_sum),
        }
