"""A `DeliveryCounter` (fanout.delivery) that keeps what it was told, for tests to read."""

from __future__ import annotations

from fanout.publication import Publication


class CountingDeliveries:
    def __init__(self) -> None:
        self.direct = 0
        self.queued = 0
        self.coalesced_partials = 0
        self.closes: list[str] = []

    def sent(self, pub: Publication, *, queued: bool) -> None:
        if queued:
            self.queued += 1
        else:
            self.direct += 1

    def coalesced(self, partials: int) -> None:
        self.coalesced_partials += partials

    def closed(self, reason: str) -> None:
        self.closes.append(reason)
