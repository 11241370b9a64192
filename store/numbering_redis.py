"""`RedisNumbering`: one counter per meeting in Redis, shared by every replica.

Keys: `{prefix}segno:{tenant}:{meeting}` (the last number handed out) and
`{prefix}segno-claims:{tenant}:{meeting}` (hash: stream id -> "<stream_seq>:<number>", the last
claim of each stream, so a retried request gets its number again). One script
(`store/lua/next_segment_no.lua`) does it all atomically; both keys live `ttl_s` after the
meeting's last final.

A missing counter (first final of the meeting, TTL expired, or Redis lost its data) is seeded
from the gateway's seed (store + outbox + what this replica saw) with SET-if-still-missing inside
the script, so replicas seeding at once agree. When the database cannot be read for the seed, a
meeting Redis has never numbered (no `{prefix}segno-known:{tenant}:{meeting}` mark, which every
number renews for `known_ttl_s`) has nothing stored to collide with: it is seeded from the
offline seed (outbox + what this replica saw). Unless Redis lost its data since this process
started (the `{prefix}segno-epoch` key it read then is gone or changed): every mark went too,
so the database is needed. Every request also carries this replica's floor
(the highest number it knows of), and the counter is raised to it: a replica never hands out a
number it has seen. What a re-seed cannot know is another replica's finals that are numbered
but not yet in the store; see the README ("Delivery guarantees") for the exact guarantee.
"""

from __future__ import annotations

import asyncio
import secrets

from redis.exceptions import RedisError

from shared.lua import lua_script
from shared.redis_pool import DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT_S, blocking_client
from store.numbering import Claim, NumberingUnavailable, Seed, SegmentNumbering

_NETWORK_ERRORS = (RedisError, OSError, TimeoutError)

DEFAULT_TTL_S = 7 * 24 * 3600.0
DEFAULT_KNOWN_TTL_S = 90 * 24 * 3600.0
WARM_UP_TIMEOUT_S = 2.0


class RedisNumbering(SegmentNumbering):
    def __init__(
        self,
        url: str,
        seed: Seed,
        *,
        prefix: str = "",
        offline_seed: Seed | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        known_ttl_s: float = DEFAULT_KNOWN_TTL_S,
        op_timeout_s: float = 2.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
    ) -> None:
        super().__init__(seed)
        self.prefix = prefix
        self._offline_seed = offline_seed
        self._epoch: str | None = None  # the epoch key's value as this process first read it
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._known_ttl_ms = max(self._ttl_ms, round(known_ttl_s * 1000))
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

    def known_key(self, tenant_id: str, meeting_id: str) -> str:
        return f"{self.prefix}segno-known:{tenant_id}:{meeting_id}"

    @property
    def epoch_key(self) -> str:
        return f"{self.prefix}segno-epoch"

    async def next_number(self, tenant_id: str, meeting_id: str, claim: Claim) -> int:
        keys = [
            self.counter_key(tenant_id, meeting_id),
            self.claims_key(tenant_id, meeting_id),
            self.known_key(tenant_id, meeting_id),
        ]
        floor = self.floor(tenant_id, meeting_id)
        number = await self._call(keys, claim, floor, "")
        if number < 0:  # the counter is missing: seed it (store, outbox, what we saw)
            seed = await self._seed_missing(tenant_id, meeting_id)
            number = await self._call(keys, claim, floor, str(seed))
        self.observe(tenant_id, meeting_id, number)
        return number

    async def _seed_missing(self, tenant_id: str, meeting_id: str) -> int:
        try:
            return await self._seed_value(tenant_id, meeting_id)
        except NumberingUnavailable:  # the database cannot be read
            if self._offline_seed is None or not await self._never_numbered(tenant_id, meeting_id):
                raise
        # A new meeting: nothing of it is stored, so what this replica knows is the whole seed.
        return max(
            await self._offline_seed(tenant_id, meeting_id), self.floor(tenant_id, meeting_id)
        )

    async def _never_numbered(self, tenant_id: str, meeting_id: str) -> bool:
        """No mark of the meeting, and Redis has kept its data since this process first read
        the epoch (a loss takes every mark with it)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._epoch is None:
                    await self._read_epoch()
                epoch, known = await self._client.mget(
                    self.epoch_key, self.known_key(tenant_id, meeting_id)
                )
        except _NETWORK_ERRORS as exc:
            raise NumberingUnavailable(f"redis: {type(exc).__name__}") from exc
        return known is None and epoch is not None and epoch.decode() == self._epoch

    async def _read_epoch(self) -> None:
        """This Redis's epoch: a random value set once (never expiring), remembered by this
        process. A Redis that lost its data has another one, or none."""
        await self._client.set(self.epoch_key, secrets.token_hex(8), nx=True)
        value = await self._client.get(self.epoch_key)
        self._epoch = value.decode() if value is not None else None

    async def _call(self, keys: list[str], claim: Claim, floor: int, seed: str) -> int:
        args = [claim.stream_id, claim.stream_seq, floor, seed, self._ttl_ms, self._known_ttl_ms]
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
                self.counter_key(tenant_id, meeting_id),
                self.claims_key(tenant_id, meeting_id),
                self.known_key(tenant_id, meeting_id),  # deleted: nothing of it is stored now
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
                await self._read_epoch()
        except _NETWORK_ERRORS:
            pass  # numbering connects (and retries) when a final needs it

    async def aclose(self) -> None:
        await self._client.aclose()
