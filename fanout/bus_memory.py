"""`InProcessBus`: the bus inside one process, for a gateway without Redis."""

from __future__ import annotations

import time
from collections import defaultdict

from fanout.bus import Bus, Handler, Subscription
from fanout.in_flight import PARTIAL_TTL_MS, in_flight_change


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
        self._check_open()
        change = in_flight_change(topic, data)
        if change is not None:
            kept = self._partials.setdefault(change.topic, {})
            if change.partial is not None:
                kept[change.source] = (time.monotonic(), change.partial)
            else:
                kept.pop(change.source, None)
            if not kept:
                del self._partials[change.topic]
        self._deliver(list(self._handlers.get(topic, ())), data)

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
        self._check_open()
        self._handlers[topic].append(handler)
        return _InProcessSubscription(self, topic, handler)

    async def aclose(self) -> None:
        self._closed = True
        self._handlers.clear()
        self._partials.clear()

    def topic_count(self) -> int:
        return len(self._handlers)
