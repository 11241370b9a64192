"""Meeting lifecycle events, raised once (on one replica) and handed to in-process listeners.

Webhooks (durable outbox) and post-meeting notes subscribe here; the sources are the meeting
lifecycle watcher (`meeting.started`, `meeting.ended` after `MEETING_IDLE_S` without a stream),
the recordings runner (`recording.succeeded`, `recording.failed`) and meeting deletion
(`meeting.deleted`). Events carry ids and states only, never transcript text.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

EventType = Literal[
    "meeting.started",
    "meeting.ended",
    "recording.succeeded",
    "recording.failed",
    "meeting.deleted",
    "notes.ready",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MeetingEvent:
    type: EventType
    tenant_id: str
    meeting_id: str
    data: Mapping[str, object] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


Listener = Callable[[MeetingEvent], Awaitable[None]]


class MeetingEvents:
    """Calls every listener for each event; one failing listener does not stop the others."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def emit(self, event: MeetingEvent) -> None:
        for listener in self._listeners:
            try:
                await listener(event)
            except Exception:
                log.exception("meeting event listener failed", extra={"event": event.type})
