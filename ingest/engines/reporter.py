"""What engines report as it happens: streams opened, failed, failed over, rotated.

An interface, not a tally: the gateway passes its one metrics module (gateway/observability/
metrics.py, whose method names these are), and tests read that. Labels are engine names and short
reason words, never anything from a client or a vendor message.
"""

from __future__ import annotations

from typing import Protocol


class EngineReporter(Protocol):
    def engine_opened(self, engine: str) -> None: ...
    def engine_failed(self, engine: str, reason: str) -> None: ...
    def engine_failover(self, from_engine: str, to_engine: str) -> None: ...
    def engine_rotated(self, engine: str) -> None: ...


class NoEngineReporter:
    """For an engine or chain used without metrics (tools, a bench)."""

    def engine_opened(self, engine: str) -> None:
        pass

    def engine_failed(self, engine: str, reason: str) -> None:
        pass

    def engine_failover(self, from_engine: str, to_engine: str) -> None:
        pass

    def engine_rotated(self, engine: str) -> None:
        pass
