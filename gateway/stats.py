"""This replica's live counters, read by `/api/v1/ws/stats`."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class GatewayStats:
    started_at: float = field(default_factory=time.time)
    _started_monotonic: float = field(default_factory=time.monotonic)
    connections: Counter[str] = field(default_factory=Counter)  # current, by role
    connections_total: Counter[str] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)  # by close code
    messages_in: int = 0
    messages_out: int = 0
    audio_frames_in: int = 0
    finals_published: int = 0
    partials_published: int = 0
    publish_failures: int = 0
    finals_replayed: int = 0  # re-delivered from the store after a bus gap

    def opened(self, role: str) -> None:
        self.connections[role] += 1
        self.connections_total[role] += 1

    def closed(self, role: str, code: int) -> None:
        self.connections[role] -= 1
        self.closes[code] += 1

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started_monotonic
