"""Per-meeting final numbering that does not need the database: 1, 2, 3, ... gap-free.

A final's number is handed out before it is stored, so finals keep their numbers (and reach
viewers) while the database is down. `RedisNumbering` (store.redis_numbering) shares one counter
per meeting between replicas; `LocalNumbering` keeps it in this process (single-replica setups
without Redis). Either seeds a missing counter from `seed(tenant_id, meeting_id)`, which the
gateway builds from everything that knows numbers: the store's last number, this replica's outbox
(numbered finals not yet stored) and the highest final its viewers were given.

Each request names the final it numbers (a claim: stream id + position in the stream). Asking
again for the same claim returns the same number, so a retried request never leaves a gap.
"""

from __future__ import annotations

import abc
import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Seed = Callable[[str, str], Awaitable[int]]


class NumberingUnavailable(Exception):
    """No number could be handed out: the counter's backing store, or the seed, is unreachable."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The final being numbered: its ingest stream and its position in that stream."""

    stream_id: str
    stream_seq: int


class SegmentNumbering(abc.ABC):
    def __init__(self, seed: Seed) -> None:
        self._seed = seed
        # The highest number this process handed out or was told about, per meeting: a floor
        # for a re-seeded counter, so this process never sees a number it knows go round again.
        self._floors: dict[tuple[str, str], int] = {}

    @abc.abstractmethod
    async def next_number(self, tenant_id: str, meeting_id: str, claim: Claim) -> int:
        """The number for `claim` (the same one if asked again); raises NumberingUnavailable."""

    @abc.abstractmethod
    async def current(self, tenant_id: str, meeting_id: str) -> int | None:
        """The last number handed out, if known without the database (a prediction aid)."""

    def observe(self, tenant_id: str, meeting_id: str, segment_no: int) -> None:
        """Tell numbering about a number seen elsewhere (e.g. another replica's final)."""
        key = (tenant_id, meeting_id)
        if segment_no > self._floors.get(key, 0):
            self._floors[key] = segment_no

    async def ensure_at_least(self, tenant_id: str, meeting_id: str, segment_no: int) -> None:
        """Never hand out `segment_no` or below again (the store had to renumber a final)."""
        self.observe(tenant_id, meeting_id, segment_no)

    def floor(self, tenant_id: str, meeting_id: str) -> int:
        return self._floors.get((tenant_id, meeting_id), 0)

    async def _seed_value(self, tenant_id: str, meeting_id: str) -> int:
        try:
            seed = await self._seed(tenant_id, meeting_id)
        except Exception as exc:
            raise NumberingUnavailable(
                f"cannot seed the meeting's counter: {type(exc).__name__}"
            ) from exc
        return max(seed, self.floor(tenant_id, meeting_id))

    async def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Connect before the first final needs it (never raises)."""

    async def forget(self, tenant_id: str, meeting_id: str) -> None:
        """Drop a deleted meeting's numbering state: its next final would be number 1."""
        self._floors.pop((tenant_id, meeting_id), None)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


_MAX_CLAIMS = 10_000


class LocalNumbering(SegmentNumbering):
    """Counters in this process, seeded on a meeting's first final after start.

    Only for one replica per meeting (no Redis means no shared coordination anyway). A counter
    seeded while the database is down cannot be trusted, so seeding needs the database.
    """

    def __init__(self, seed: Seed) -> None:
        super().__init__(seed)
        self._counters: dict[tuple[str, str], int] = {}
        self._claims: OrderedDict[tuple[str, str, Claim], int] = OrderedDict()
        self._seeding: dict[tuple[str, str], asyncio.Lock] = {}

    async def next_number(self, tenant_id: str, meeting_id: str, claim: Claim) -> int:
        key = (tenant_id, meeting_id)
        claimed = self._claims.get((*key, claim))
        if claimed is not None:
            return claimed
        if key not in self._counters:
            lock = self._seeding.setdefault(key, asyncio.Lock())
            async with lock:
                if key not in self._counters:
                    self._counters[key] = await self._seed_value(tenant_id, meeting_id)
            self._seeding.pop(key, None)
        number = max(self._counters[key], self.floor(tenant_id, meeting_id)) + 1
        self._counters[key] = number
        self.observe(tenant_id, meeting_id, number)
        self._claims[(*key, claim)] = number
        if len(self._claims) > _MAX_CLAIMS:
            self._claims.popitem(last=False)
        return number

    async def current(self, tenant_id: str, meeting_id: str) -> int | None:
        return self._counters.get((tenant_id, meeting_id))

    async def forget(self, tenant_id: str, meeting_id: str) -> None:
        await super().forget(tenant_id, meeting_id)
        self._counters.pop((tenant_id, meeting_id), None)
        for claim in [c for c in self._claims if c[:2] == (tenant_id, meeting_id)]:
            del self._claims[claim]
