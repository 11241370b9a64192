"""`LocalCoordinator`: the connection rules inside one process, for a gateway without Redis."""

from __future__ import annotations

from collections import defaultdict

from fanout.coordinator import Coordinator, IngestLease


class _LocalLease(IngestLease):
    def __init__(self, owner: LocalCoordinator, key: tuple[str, str, str]) -> None:
        super().__init__()
        self._owner, self._key = owner, key

    async def release(self) -> None:
        self._owner._ingests.discard(self._key)


class LocalCoordinator(Coordinator):
    def __init__(self) -> None:
        self._ingests: set[tuple[str, str, str]] = set()
        self._members: defaultdict[tuple[str, str], set[str]] = defaultdict(set)

    async def acquire_ingest(
        self, tenant_id: str, meeting_id: str, source: str, holder: str
    ) -> IngestLease | None:
        key = (tenant_id, meeting_id, source)
        if key in self._ingests:
            return None
        self._ingests.add(key)
        return _LocalLease(self, key)

    async def join_meeting(self, tenant_id: str, meeting_id: str, conn_id: str, limit: int) -> bool:
        members = self._members[(tenant_id, meeting_id)]
        if conn_id not in members and len(members) >= limit:
            return False
        members.add(conn_id)
        return True

    async def leave_meeting(self, tenant_id: str, meeting_id: str, conn_id: str) -> None:
        key = (tenant_id, meeting_id)
        members = self._members.get(key)
        if members is not None:
            members.discard(conn_id)
            if not members:
                del self._members[key]

    async def subscriber_count(self, tenant_id: str, meeting_id: str) -> int:
        return len(self._members.get((tenant_id, meeting_id), ()))
