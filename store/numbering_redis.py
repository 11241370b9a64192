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
offline seed (outbox + what this replica saw). The marks are only trusted under an epoch: the
`{prefix}segno-epoch` key is set once every meeting with stored finals carries its mark (one
replica writes them from the database first, `numbered_meetings`), and a process trusts the
marks only while that key holds the value it read. A Redis that lost its data (no epoch, or
another one) has lost marks: no meeting is taken for new until the marks are written again.

Every request also carries this replica's floor (the highest number it knows of), and the
counter is raised to it: a replica never hands out a number it has seen. What a re-seed cannot
know is another replica's finals that are numbered but not yet in the store; see the README
("Delivery guarantees") for the exact guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable

from redis.exceptions import RedisError

from shared.lua import lua_script
from shared.redis_pool import DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT_S, blocking_client
from shared.tasks import cancel_and_wait, shared_task
from store.numbering import (
    IDLE_FORGET_S,
    Claim,
    Clock,
    NumberingUnavailable,
    Seed,
    SegmentNumbering,
)

log = logging.getLogger("store.numbering")

_NETWORK_ERRORS = (RedisError, OSError, TimeoutError)

DEFAULT_TTL_S = 7 * 24 * 3600.0
DEFAULT_KNOWN_TTL_S = 90 * 24 * 3600.0
SEED_READ_TIMEOUT_S = 2.0
EPOCH_BUILD_S = 600  # one replica writes the marks; another takes over if it dies meanwhile
EPOCH_RETRY_S = 10.0

NumberedMeetings = Callable[[], AsyncIterator[list[tuple[str, str]]]]
WARM_UP_TIMEOUT_S = 2.0


class RedisNumbering(SegmentNumbering):
    def __init__(
        self,
        url: str,
        seed: Seed,
        *,
        prefix: str = "",
        offline_seed: Seed | None = None,
        numbered_meetings: NumberedMeetings | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        known_ttl_s: float = DEFAULT_KNOWN_TTL_S,
        op_timeout_s: float = 2.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
        clock: Clock = time.monotonic,
        idle_forget_s: float = IDLE_FORGET_S,
    ) -> None:
        super().__init__(seed, clock=clock, idle_forget_s=idle_forget_s)
        self.prefix = prefix
        self._offline_seed = offline_seed
        self._numbered_meetings = numbered_meetings
        self._epoch: str | None = None  # the epoch key's value, once it vouches for the marks
        self._epoch_task: asyncio.Task[None] | None = None
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
        self._release = self._client.register_script(lua_script("shared", "delete_if_equal"))
        self._set_epoch = self._client.register_script(lua_script("store", "set_epoch_if_locked"))
        self._extend = self._client.register_script(lua_script("store", "extend_if_held"))
        self._epoch_watch: asyncio.Task[None] | None = None
        self._closing = False

    def counter_key(self, tenant_id: str, meeting_id: str) -> str:
        return f"{self.prefix}segno:{tenant_id}:{meeting_id}"

    def claims_key(self, tenant_id: str, meeting_id: str) -> str:
        return f"{self.prefix}segno-claims:{tenant_id}:{meeting_id}"

    def known_key(self, tenant_id: str, meeting_id: str) -> str:
        return f"{self.prefix}segno-known:{tenant_id}:{meeting_id}"

    @property
    def epoch_key(self) -> str:
        return f"{self.prefix}segno-epoch"

    @property
    def marking_key(self) -> str:
        return f"{self.prefix}segno-epoch-marking"

    async def reserve(self, tenant_id: str, meeting_id: str, claim: Claim, count: int) -> int:
        if count < 1:
            raise ValueError("count must be >= 1")
        keys = [
            self.counter_key(tenant_id, meeting_id),
            self.claims_key(tenant_id, meeting_id),
            self.known_key(tenant_id, meeting_id),
        ]
        floor = self.floor(tenant_id, meeting_id)
        first = await self._call(keys, claim, floor, "", count)
        if first < 0:  # the counter is missing: seed it (store, outbox, what we saw)
            seed = await self._seed_missing(tenant_id, meeting_id)
            first = await self._call(keys, claim, floor, str(seed), count)
        self.observe(tenant_id, meeting_id, first + count - 1)
        return first

    async def _seed_missing(self, tenant_id: str, meeting_id: str) -> int:
        try:
            # Bounded well inside a numbering attempt: a database that hangs (a partition)
            # rather than refuses must still leave time for the offline seed.
            async with asyncio.timeout(SEED_READ_TIMEOUT_S):
                return await self._seed_value(tenant_id, meeting_id)
        except (NumberingUnavailable, TimeoutError) as exc:  # the database cannot be read
            if self._offline_seed is None or not await self._never_numbered(tenant_id, meeting_id):
                if isinstance(exc, NumberingUnavailable):
                    raise
                raise NumberingUnavailable("cannot seed the meeting's counter: timed out") from exc
        # A new meeting: nothing of it is stored, so what this replica knows is the whole seed.
        return max(
            await self._offline_seed(tenant_id, meeting_id), self.floor(tenant_id, meeting_id)
        )

    async def _never_numbered(self, tenant_id: str, meeting_id: str) -> bool:
        """No mark of the meeting, and Redis has kept its data since this process first read
        the epoch (a loss takes every mark with it)."""
        if self._epoch is None:
            self._mark_meetings()  # marks not vouched for (yet): none is taken for new
            return False
        try:
            async with asyncio.timeout(self._timeout_s):
                epoch, known = await self._client.mget(
                    self.epoch_key, self.known_key(tenant_id, meeting_id)
                )
        except _NETWORK_ERRORS as exc:
            raise NumberingUnavailable(f"redis: {type(exc).__name__}") from exc
        if epoch is None or epoch.decode() != self._epoch:  # Redis lost its data since
            self._epoch = None
            self._mark_meetings()
            return False
        return known is None

    def _mark_meetings(self) -> None:
        """Get the epoch established in the background (marks written, then the key)."""
        if (
            not self._closing
            and self._numbered_meetings is not None
            and (self._epoch_task is None or self._epoch_task.done())
        ):
            self._epoch_task = shared_task(self._establish_epoch())

    async def _establish_epoch(self) -> None:
        while self._epoch is None:
            try:
                value = await self._client.get(self.epoch_key)
                if value is None:
                    await self._build_epoch()
                    value = await self._client.get(self.epoch_key)
                if value is not None:
                    self._epoch = value.decode()
                    return
            except Exception as exc:  # Redis or the database away: later
                log.debug("numbering marks not written yet (%s)", type(exc).__name__)
            await asyncio.sleep(EPOCH_RETRY_S)

    async def _build_epoch(self) -> None:
        """Write the marks, then the epoch, under a lock one replica takes (another takes it
        over if that one dies). The epoch is set only while the lock still holds (a Redis that
        lost its data meanwhile lost the marks written so far with it). A build that fails (the
        database away) gives the lock back at once: held until it expired, it kept every
        replica from building for EPOCH_BUILD_S."""
        token = secrets.token_hex(8)
        if not await self._client.set(self.marking_key, token, nx=True, ex=EPOCH_BUILD_S):
            return  # another replica is building it
        try:
            if await self._client.get(self.epoch_key) is not None:
                return  # another replica built it just before we took the lock
            await self._write_marks(token)
            keys = [self.marking_key, self.epoch_key]
            await self._set_epoch(keys=keys, args=[token, secrets.token_hex(8)])
        finally:
            with contextlib.suppress(Exception):  # expires anyway
                await self._release(keys=[self.marking_key], args=[token])

    async def _watch_epoch(self) -> None:
        """Notice Redis losing its data while the database answers (the marks go with it): a
        new meeting is taken for new only while the epoch this process read still stands, and
        a later database outage must find the marks written again."""
        while not self._closing:
            await asyncio.sleep(EPOCH_RETRY_S)
            read = self._epoch
            if read is None:
                self._mark_meetings()  # being established (or its task ended): see it runs
                continue
            try:
                value = await self._client.get(self.epoch_key)
            except Exception:  # Redis away: its next answer tells
                continue
            if self._epoch == read and (value is None or value.decode() != read):
                log.warning("numbering epoch changed (Redis lost its data): marks checked again")
                self._epoch = None
                self._mark_meetings()

    async def _write_marks(self, token: str) -> None:
        """Mark every meeting with stored finals, batch by batch, extending the lock after each
        (a build may outlast EPOCH_BUILD_S on a large database); a lock lost meanwhile ends the
        build: its epoch would be refused."""
        assert self._numbered_meetings is not None
        async for batch in self._numbered_meetings():
            async with self._client.pipeline(transaction=False) as pipe:
                for tenant_id, meeting_id in batch:
                    pipe.set(self.known_key(tenant_id, meeting_id), "1", px=self._known_ttl_ms)
                await pipe.execute()
            if not await self._extend(keys=[self.marking_key], args=[token, EPOCH_BUILD_S]):
                raise RuntimeError("numbering marks: the build's lock was lost")

    async def _call(self, keys: list[str], claim: Claim, floor: int, seed: str, count: int) -> int:
        args = [
            *(claim.stream_id, claim.stream_seq, floor, seed),
            *(self._ttl_ms, self._known_ttl_ms, count),
        ]
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
                known = self.known_key(tenant_id, meeting_id)
                await self._raise(
                    keys=[key, known], args=[segment_no, self._ttl_ms, self._known_ttl_ms]
                )
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
        except _NETWORK_ERRORS:
            pass  # numbering connects (and retries) when a final needs it
        self._mark_meetings()
        if self._numbered_meetings is not None and self._epoch_watch is None:
            self._epoch_watch = shared_task(self._watch_epoch())

    async def aclose(self) -> None:
        self._closing = True  # no epoch task started after this
        try:
            await cancel_and_wait(self._epoch_watch, self._epoch_task)
        finally:
            await self._client.aclose()
