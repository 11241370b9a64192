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
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Seed = Callable[[str, str], Awaitable[int]]
Clock = Callable[[], float]

# What this process remembers of a meeting no number was asked of for this long is dropped (a
# gateway runs for weeks through thousands of meetings a day). Longer than the Redis counter's
# TTL: by then the counter is re-seeded from the store anyway.
IDLE_FORGET_S = 8 * 24 * 3600.0


class NumberingUnavailable(Exception):
    """No number could be handed out: the counter's backing store, or the seed, is unreachable."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The final being numbered: its ingest stream and its position in that stream."""

    stream_id: str
    stream_seq: int


class SegmentNumbering(abc.ABC):
    def __init__(
        self, seed: Seed, *, clock: Clock = time.monotonic, idle_forget_s: float = IDLE_FORGET_S
    ) -> None:
        self._seed = seed
        self._clock = clock
        self._idle_forget_s = idle_forget_s
        # The highest number this process handed out or was told about, per meeting: a floor
        # for a re-seeded counter, so this process never sees a number it knows go round again.
        # With when it was last touched, least recently touched first (`_forget_idle`).
        self._floors: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()

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
        now = self._clock()
        known = self._floors.pop(key, None)
        self._floors[key] = (max(segment_no, known[0] if known else 0), now)
        self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        while self._floors:
            key, (_, touched) = next(iter(self._floors.items()))
            if now - touched < self._idle_forget_s:
                return
            del self._floors[key]
            self._forget_meeting_state(key)

    def _forget_meeting_state(self, key: tuple[str, str]) -> None:  # noqa: B027 - optional hook
        """Drop what a backend keeps of an idle meeting in this process."""

    async def ensure_at_least(self, tenant_id: str, meeting_id: str, segment_no: int) -> None:
        """Never hand out `segment_no` or below again (the store had to renumber a final)."""
        self.observe(tenant_id, meeting_id, segment_no)

    def floor(self, tenant_id: str, meeting_id: str) -> int:
        known = self._floors.get((tenant_id, meeting_id))
        return known[0] if known else 0

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
