"""Per-meeting final numbering that does not need the database: 1, 2, 3, ... gap-free.

A final's number is handed out before it is stored, so finals keep their numbers (and reach
viewers) while the database is down. `RedisNumbering` (store.numbering_redis) shares one counter
per meeting between replicas; `LocalNumbering` (store.numbering_local) keeps it in this process
(single-replica setups without Redis). Either seeds a missing counter from
`seed(tenant_id, meeting_id)`, which the gateway builds from everything that knows numbers: the
store's last number, this replica's outbox (numbered finals not yet stored) and the highest final
its viewers were given.

Each request names the final it numbers (a claim: stream id + position in the stream). Asking
again for the same claim returns the same number, so a retried request never leaves a gap.
"""

from __future__ import annotations

import abc
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

    async def next_number(self, tenant_id: str, meeting_id: str, claim: Claim) -> int:
        """The number for `claim` (the same one if asked again); raises NumberingUnavailable."""
        return await self.reserve(tenant_id, meeting_id, claim, 1)

    @abc.abstractmethod
    async def reserve(self, tenant_id: str, meeting_id: str, claim: Claim, count: int) -> int:
        """The first of `count` consecutive numbers for `claim` (a recording's chunk numbers
        its finals together: no live final can take a number among them); the same ones if
        asked again. Raises NumberingUnavailable."""

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
        self.forget_seen(tenant_id, meeting_id)

    def forget_seen(self, tenant_id: str, meeting_id: str) -> None:
        """Drop what this process saw of a meeting another replica deleted (its floor): a
        meeting started again under the id is numbered from 1 here too."""
        self._floors.pop((tenant_id, meeting_id), None)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
