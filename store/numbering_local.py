"""`LocalNumbering`: a meeting's final numbers counted in this process (one replica, no Redis)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from store.numbering import IDLE_FORGET_S, Claim, Clock, Seed, SegmentNumbering

_MAX_CLAIMS = 10_000


class LocalNumbering(SegmentNumbering):
    """Counters in this process, seeded on a meeting's first final after start.

    Only for one replica per meeting (no Redis means no shared coordination anyway). A counter
    seeded while the database is down cannot be trusted, so seeding needs the database.
    """

    def __init__(
        self, seed: Seed, *, clock: Clock = time.monotonic, idle_forget_s: float = IDLE_FORGET_S
    ) -> None:
        super().__init__(seed, clock=clock, idle_forget_s=idle_forget_s)
        self._counters: dict[tuple[str, str], int] = {}
        self._claims: OrderedDict[tuple[str, str, Claim], int] = OrderedDict()
        self._seeding: dict[tuple[str, str], asyncio.Lock] = {}

    async def reserve(self, tenant_id: str, meeting_id: str, claim: Claim, count: int) -> int:
        if count < 1:
            raise ValueError("count must be >= 1")
        key = (tenant_id, meeting_id)
        claimed = self._claims.get((*key, claim))
        if claimed is not None:
            return claimed
        if key not in self._counters:
            lock = self._seeding.setdefault(key, asyncio.Lock())
            try:
                async with lock:
                    if key not in self._counters:
                        self._counters[key] = await self._seed_value(tenant_id, meeting_id)
            finally:  # a failed seed (database down) must not leave the lock behind
                self._seeding.pop(key, None)
        first = max(self._counters[key], self.floor(tenant_id, meeting_id)) + 1
        last = first + count - 1
        self._counters[key] = last
        self.observe(tenant_id, meeting_id, last)
        self._claims[(*key, claim)] = first
        if len(self._claims) > _MAX_CLAIMS:
            self._claims.popitem(last=False)
        return first

    def _forget_meeting_state(self, key: tuple[str, str]) -> None:
        # Re-seeded (store and outbox) if the meeting is ever numbered again.
        self._counters.pop(key, None)

    async def current(self, tenant_id: str, meeting_id: str) -> int | None:
        return self._counters.get((tenant_id, meeting_id))

    async def forget(self, tenant_id: str, meeting_id: str) -> None:
        await super().forget(tenant_id, meeting_id)
        self._counters.pop((tenant_id, meeting_id), None)
        for claim in [c for c in self._claims if c[:2] == (tenant_id, meeting_id)]:
            del self._claims[claim]
