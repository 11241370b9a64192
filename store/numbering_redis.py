"""`RedisNumbering`: one counter per meeting in Redis, shared by every replica.

Keys: `{prefix}segno:{tenant}:{meeting}` (the last number handed out) and
`{prefix}segno-claims:{tenant}:{meeting}` (hash: stream id -> "<stream_seq>:<number>", the last
claim of each stream, so a retried request gets its number again). One script
(`store/lua/next_segment_no.lua`) does it all atomically; both keys live `ttl_s` after the
meeting's last final.

A missing counter (first final of the meeting, TTL expired, or Redis lost its data) is seeded
from the gateway's seed (store + outbox + what this replica saw) with SET-if-still-missing inside
the script, so replicas seeding at once agree. Every request also carries this replica's floor
(the highest number it knows of), and the counter is raised to it: a replica never hands out a
number it has seen. What a re-seed cannot know is another replica's finals that are numbered
but not yet in the store; see the README ("Delivery guarantees") for the exact guarantee.
"""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from shared.lua import lua_script
from shared.redis_pool import DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT_S, blocking_client
from store.numbering import Claim, NumberingUnavailable, Seed, SegmentNumbering

_NETWORK_ERRORS = (RedisError, OSError, TimeoutError)

DEFAULT_TTL_S = 7 * 24 * 3600.0
WARM_UP_TIMEOUT_S = 2.0


class RedisNumbering(SegmentNumbering):
    def __init__(
        self,
        url: str,
        seed: Seed,
        *,
        prefix: str = "",
        ttl_s: float = DEFAULT_TTL_S,
        op_timeout_s: float = 2.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
    ) -> None:
        super().__init__(seed)
        self.prefix = prefix
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._timeout_s = op_timeout_s + pool_timeout_s
        # redis-py retries after connection errors (shared.redis_pool). The script is keyed by
        # the claim (stream id + position): a retried call whose first INCR did land finds its
        # claim and returns the same number, so a retry neither skips nor doubles a number.
        self._client = blocking_client(
            url,
            max_connections=max_connections,
            pool_timeout_s=pool_timeout_s,
            op_timeout_s=op_timeout_s,
        )
        self._next = self._client.register_script(lua_script("store", "next_segment_no"))
        self._raise = self._client.register_script(lua_script("store", "raise_segment_no"))

    def counter_key(self, tenant_id: str, meeting_id: str) -> str:
        return f"{self.prefix}segno:{tenant_id}:{meeting_id}"

    def claims_key(self, tenant_id: str, meeting_id: str) -> str:
        return f"{self.prefix}segno-claims:{tenant_id}:{meeting_id}"

    async def next_number(self, tenant_id: str, meeting_id: str, claim: Claim) -> int:
        keys = [self.counter_key(tenant_id, meeting_id), self.claims_key(tenant_id, meeting_id)]
        floor = self.floor(tenant_id, meeting_id)
        number = await self._call(keys, claim, floor, "")
        if number < 0:  # the counter is missing: seed it (store, outbox, what we saw)
            seed = await self._seed_value(tenant_id, meeting_id)
            number = await self._call(keys, claim, floor, str(seed))
        self.observe(tenant_id, meeting_id, number)
        return number

    async def _call(self, keys: list[str], claim: Claim, floor: int, seed: str) -> int:
        args = [claim.stream_id, claim.stream_seq, floor, seed, self._ttl_ms]
        try:
            async with asyncio.timeout(self._timeout_s):
                return int(await self._next(keys=keys, args=args))
        except _NETWORK_ERRORS as exc:
            raise NumberingUnavailable(f"redis: {type(exc).__name__}") from exc

    async def ensure_at_least(self, tenant_id: str, meeting_id: str, segment_no: int) -> None:
        await super().ensure_at_least(tenant_id, meeting_id, segment_no)
        key = self.counter_key(tenant_id, meeting_id)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._raise(keys=[key], args=[segment_no, self._ttl_ms])
        except _NETWORK_ERRORS as exc:
            raise NumberingUnavailable(f"redis: {type(exc).__name__}") from exc

    async def current(self, tenant_id: str, meeting_id: str) -> int | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                value = await self._client.get(self.counter_key(tenant_id, meeting_id))
        except _NETWORK_ERRORS as exc:
            raise NumberingUnavailable(f"redis: {type(exc).__name__}") from exc
        return None if value is None else int(value)

    async def forget(self, tenant_id: str, meeting_id: str) -> None:
        await super().forget(tenant_id, meeting_id)
        try:
            await self._client.delete(
                self.counter_key(tenant_id, meeting_id), self.claims_key(tenant_id, meeting_id)
            )
        except _NETWORK_ERRORS as exc:
            raise NumberingUnavailable(f"redis: {type(exc).__name__}") from exc

    async def warm_up(self) -> None:
        """One pooled connection made at start: the first final does not pay for connecting,
        and a replica keeps numbering over its connection when Redis starts refusing new ones
        (a partition seen from one side)."""
        try:
            async with asyncio.timeout(WARM_UP_TIMEOUT_S):  # a start never waits long for it
                await self._client.ping()
        except _NETWORK_ERRORS:
            pass  # numbering connects (and retries) when a final needs it

    async def aclose(self) -> None:
        await self._client.aclose()
