"""The publish/subscribe bus that carries encoded messages between ingest and subscribers.

A bus moves opaque bytes on string topics. `subscribe` registers a handler that is called (on the
event loop, must not block) with each message's bytes; it returns a `Subscription` to cancel.
`InProcessBus` (fanout.bus_memory) serves one process; `RedisBus` (fanout.bus_redis) serves many
replicas.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterable

Handler = Callable[[bytes], None]

log = logging.getLogger(__name__)


class BusUnavailable(Exception):
    """The bus could not publish or subscribe in time (broker down or unreachable)."""


class Subscription(abc.ABC):
    @abc.abstractmethod
    async def cancel(self) -> None: ...


GapListener = Callable[[set[str]], None]


class Bus(abc.ABC):
    """Pub/sub is at-most-once: a bus that lost its connection tells its gap listeners which
    topics may have missed messages, once their subscriptions are live again, so the owner can
    repair from the store."""

    def __init__(self) -> None:
        self._gap_listeners: list[GapListener] = []
        self._closed = False
        # Whether the bus was reached since the process started (an in-process one always):
        # an outage after that is one the replica rides out (gateway readiness, /readyz/live).
        self.reached = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    @staticmethod
    def _deliver(handlers: Iterable[Handler], data: bytes) -> None:
        """Hand `data` to each handler; one that fails is logged and the others still get it
        (a publisher must not retry, and so repeat, a message because a subscriber broke)."""
        for handler in handlers:
            try:
                handler(data)
            except Exception:
                log.exception("bus: handler failed")

    def add_gap_listener(self, listener: GapListener) -> None:
        self._gap_listeners.append(listener)

    def _report_gap(self, topics: set[str]) -> None:
        for listener in self._gap_listeners:
            listener(topics)

    @abc.abstractmethod
    async def publish(self, topic: str, data: bytes) -> None: ...

    @abc.abstractmethod
    async def subscribe(self, topic: str, handler: Handler) -> Subscription: ...

    async def recent(self, topic: str) -> list[bytes]:
        """The status messages last published on status topic `topic`, oldest first, so a gap
        can be repaired (they are stored nowhere else). A bus without gaps keeps none."""
        return []

    async def partials(self, topic: str) -> list[bytes]:
        """The in-flight partial of each source on transcript topic `topic`: the latest one
        published, until that source's final or the end of its stream (fanout.in_flight), so a
        room created mid-sentence can show it."""
        return []

    async def forget(self, topic: str) -> None:  # noqa: B027 - optional hook
        """Drop what `recent` or `partials` keeps for `topic` (a deleted meeting)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; called once from the application's lifespan."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Disconnect and drop all subscriptions."""

    async def healthy(self) -> bool:
        return not self._closed
