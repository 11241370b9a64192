"""The publish/subscribe bus that carries encoded messages between ingest and subscribers.

A bus moves opaque bytes on string topics. `subscribe` registers a handler that is called (on the
event loop, must not block) with each message's bytes; it returns a `Subscription` to cancel.
`InProcessBus` serves one process; `RedisBus` (fanout.redis_bus) serves many replicas.
"""

from __future__ import annotations

import abc
import time
from collections import defaultdict
from collections.abc import Callable

from fanout.in_flight import PARTIAL_TTL_MS, in_flight_change

Handler = Callable[[bytes], None]


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
        return True


class _InProcessSubscription(Subscription):
    def __init__(self, bus: InProcessBus, topic: str, handler: Handler) -> None:
        self._bus, self._topic, self._handler = bus, topic, handler

    async def cancel(self) -> None:
        handlers = self._bus._handlers.get(self._topic)
        if handlers and self._handler in handlers:
            handlers.remove(self._handler)
            if not handlers:
                del self._bus._handlers[self._topic]


class InProcessBus(Bus):
    """Delivers synchronously to the handlers of this process."""

    def __init__(self) -> None:
        super().__init__()
        self._handlers: defaultdict[str, list[Handler]] = defaultdict(list)
        # transcript topic -> source -> (when, its in-flight partial)
        self._partials: dict[str, dict[str, tuple[float, bytes]]] = {}

    async def publish(self, topic: str, data: bytes) -> None:
        change = in_flight_change(topic, data)
        if change is not None:
            kept = self._partials.setdefault(change.topic, {})
            if change.partial is not None:
                kept[change.source] = (time.monotonic(), change.partial)
            else:
                kept.pop(change.source, None)
            if not kept:
                del self._partials[change.topic]
        for handler in list(self._handlers.get(topic, ())):
            handler(data)

    async def partials(self, topic: str) -> list[bytes]:
        kept = self._partials.get(topic)
        if kept is None:
            return []
        oldest = time.monotonic() - PARTIAL_TTL_MS / 1000
        for source in [source for source, (at, _) in kept.items() if at < oldest]:
            del kept[source]  # a crashed stream's, never ended
        if not kept:
            del self._partials[topic]
        return [data for _, data in kept.values()]

    async def forget(self, topic: str) -> None:
        self._partials.pop(topic, None)

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        self._handlers[topic].append(handler)
        return _InProcessSubscription(self, topic, handler)

    def topic_count(self) -> int:
        return len(self._handlers)
