"""What one ingest stream still has to publish, in order: nothing that matters is ever dropped.

Finals and status messages are kept until they are published (at-least-once: the publisher
retries the head of the queue until the bus takes it). Partials only say what the speaker is
saying right now, so a newer partial, or a final, makes any queued partial worthless: at most one
partial waits, and it is dropped rather than retried when a publish fails. The queue is then
bounded by the finals and status messages of an outage, which are also on disk in the outbox.

A pure core: no I/O and no event loop, tested with plain values.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

PARTIAL = "transcript.partial"


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    data: bytes
    kind: str  # "transcript.partial", "transcript.final" or "status"

    @property
    def retried(self) -> bool:
        """Whether a failed publish of this message is tried again (everything but partials)."""
        return self.kind != PARTIAL


class PublishQueue:
    def __init__(self) -> None:
        self._items: deque[Outgoing] = deque()
        self.superseded = 0  # partials dropped because something newer was queued

    def push(self, item: Outgoing) -> None:
        """Queue `item` after everything queued; any queued partial is superseded by it."""
        if self._items and any(not queued.retried for queued in self._items):
            kept = [queued for queued in self._items if queued.retried]
            self.superseded += len(self._items) - len(kept)
            self._items = deque(kept)
        self._items.append(item)

    def head(self) -> Outgoing | None:
        """The next message to publish (it stays queued until `done`)."""
        return self._items[0] if self._items else None

    def done(self, item: Outgoing) -> None:
        """`item` was published (or given up): remove it if it is still the head."""
        if self._items and self._items[0] is item:
            self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def pending_retried(self) -> int:
        """How many queued messages are ones that must not be lost (finals and status)."""
        return sum(item.retried for item in self._items)
