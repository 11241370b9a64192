"""Who may connect: one ingest per (tenant, meeting, source) and a subscriber cap per meeting.

`Coordinator` is the interface; `LocalCoordinator` (fanout.coordinator_local) enforces the rules
inside one process and `RedisCoordinator` (fanout.coordinator_redis) across replicas.
"""

from __future__ import annotations

import abc
import asyncio


class CoordinatorUnavailable(Exception):
    """The coordinator's backing store could not answer in time; callers should refuse the
    connection as "unavailable" rather than let it in uncounted."""


class IngestLease(abc.ABC):
    """Held while an ingest stream lives. `lost` is set if another holder took it over."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        # Why `lost` was set: another stream holds it now, or it could not be renewed in time.
        self.taken_over = False

    @abc.abstractmethod
    async def release(self) -> None: ...


class Coordinator(abc.ABC):
    @abc.abstractmethod
    async def acquire_ingest(
        self, tenant_id: str, meeting_id: str, source: str, holder: str
    ) -> IngestLease | None:
        """The lease, or None when another stream holds this (tenant, meeting, source)."""

    @abc.abstractmethod
    async def join_meeting(self, tenant_id: str, meeting_id: str, conn_id: str, limit: int) -> bool:
        """Count a subscriber in; False when the meeting already has `limit` subscribers."""

    @abc.abstractmethod
    async def leave_meeting(self, tenant_id: str, meeting_id: str, conn_id: str) -> None: ...

    @abc.abstractmethod
    async def subscriber_count(self, tenant_id: str, meeting_id: str) -> int: ...

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Begin background renewal; called once from the application's lifespan."""

    async def forget_meeting(self, tenant_id: str, meeting_id: str) -> None:  # noqa: B027
        """Drop what a deleted meeting left behind (shared keys); in-process state goes with its
        connections."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Stop renewal and release what this process holds."""
