"""`RedisCoordinator`: ingest leases and per-meeting subscriber caps shared by all replicas.

Ingest lease: `{prefix}ingest:{tenant}:{meeting}:{source}` = "<holder>:<nonce>", set with
SET NX PX. A background task renews this process's leases with a compare-and-pexpire script, so
a dead replica's lease expires within `lease_ttl_s`. The nonce makes each lease distinct even if
two streams report the same holder id, so a stale holder can never renew or release a newer one.

Riding through a Redis outage: a renewal that fails (Redis unreachable) ends nothing. The stream
keeps its lease and renewal goes on every `renew_every_s`; while Redis is unreachable nobody can
take the lease. When no renewal has succeeded for nearly a TTL the lease is marked `in_doubt`
(another replica that still reaches Redis, in a partition, could take it once the key expires).
The first renewal that reaches Redis decides: the key holds our token or is gone (a restart
without persistence) -> renewed or taken again, the stream goes on; another stream's token ->
`lost` is set with `taken_over`, and that stream yields (4409). A stream is never ended merely
because Redis was unreachable; its finals' numbering and storage have their own deadline.

Subscriber cap: sorted set `{prefix}subs:{tenant}:{meeting}`, member = connection id, score =
expiry (ms, Redis server clock, so replica clocks do not matter). Joining is one script: purge
expired members, then add if under the limit (or already a member). A background task pushes
this process's members' expiry forward; members of a dead replica expire after `member_ttl_s`.

Storm safety: joins and leaves of one meeting that arrive together are coalesced into one script
call per meeting (shared.batching), and the refresh is one script per meeting for all of this
process's members, so Redis load grows with meetings and replicas, not viewers. Commands wait
(bounded) for a pooled connection instead of failing when the pool is busy (shared.redis_pool).

Needs Redis >= 5 (scripts that call TIME before writing). The scripts are in `fanout/lua/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from redis.exceptions import RedisError

from fanout.coordinator import Coordinator, CoordinatorUnavailable, IngestLease
from shared.backoff import describe
from shared.batching import KeyedBatcher
from shared.lua import lua_script
from shared.outage_log import OutageLines
from shared.redis_pool import DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT_S, blocking_client
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_NETWORK_ERRORS = (RedisError, OSError, TimeoutError)

# Give up a lease this fraction of its TTL after the last renewal was sent (see module doc).
_SAFE_TTL_FRACTION = 0.9


class _RedisLease(IngestLease):
    def __init__(self, owner: RedisCoordinator, key: str, token: str, holder: str) -> None:
        super().__init__()
        self._owner = owner
        self.key, self.token, self.holder = key, token, holder
        self.released = False
        self.deadline: asyncio.TimerHandle | None = None
        # No renewal confirmed it for nearly a TTL: the next one that reaches Redis decides.
        self.in_doubt = False

    async def release(self) -> None:
        """Give the lease back. Never raises: if Redis is unreachable, the key expires within
        the TTL anyway (renewal has stopped)."""
        await self._owner._release(self)


class RedisCoordinator(Coordinator):
    def __init__(
        self,
        url: str,
        prefix: str = "",
        lease_ttl_s: float = 8.0,
        renew_every_s: float = 2.0,
        member_ttl_s: float = 30.0,
        *,
        member_refresh_s: float | None = None,
        op_timeout_s: float = 2.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
    ) -> None:
        # Renewing at most every half TTL leaves room for one failed renewal before giving up.
        if not 0 < renew_every_s <= lease_ttl_s / 2:
            raise ValueError("renew_every_s must be positive and at most half of lease_ttl_s")
        self.prefix = prefix
        # A Redis outage fails every renewal and refresh round: said once, at its start.
        self._renew_outage = OutageLines(log)
        self._refresh_outage = OutageLines(log)
        self.lease_ttl_s = lease_ttl_s
        self.renew_every_s = renew_every_s
        self.member_ttl_s = member_ttl_s
        self.member_refresh_s = member_refresh_s or member_ttl_s / 3
        if not 0 < self.member_refresh_s < member_ttl_s:
            raise ValueError("need 0 < member_refresh_s < member_ttl_s")
        # A command may first wait for a pooled connection, then run: bound both.
        self._op_timeout_s = op_timeout_s + pool_timeout_s
        # redis-py retries after connection errors (shared.redis_pool). Every command here is
        # idempotent under retry (compare-and-set scripts, joins keyed by connection id) except
        # SET NX, which acquire checks by reading its own token back.
        self._client = blocking_client(
            url,
            max_connections=max_connections,
            pool_timeout_s=pool_timeout_s,
            op_timeout_s=op_timeout_s,
        )
        self._renew = self._client.register_script(lua_script("fanout", "renew_lease"))
        self._release_script = self._client.register_script(lua_script("shared", "delete_if_equal"))
        self._join_many = self._client.register_script(lua_script("fanout", "join_subscribers"))
        self._joins: KeyedBatcher[str, tuple[str, int], bool] = KeyedBatcher(
            self._flush_joins, max_batch=500, on_abandoned=self._abandoned_join
        )
        self._leaves: KeyedBatcher[str, str, None] = KeyedBatcher(self._flush_leaves)
        self._refresh = self._client.register_script(lua_script("fanout", "refresh_subscribers"))
        self._count = self._client.register_script(lua_script("fanout", "count_subscribers"))
        self._leases: set[_RedisLease] = set()
        self._members: dict[str, set[str]] = {}  # zset key -> this process's conn ids
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- keys --------------------------------------------------------------------------------

    def ingest_key(self, tenant_id: str, meeting_id: str, source: str) -> str:
        return f"{self.prefix}ingest:{tenant_id}:{meeting_id}:{source}"

    def members_key(self, tenant_id: str, meeting_id: str) -> str:
        return f"{self.prefix}subs:{tenant_id}:{meeting_id}"

    async def forget_meeting(self, tenant_id: str, meeting_id: str) -> None:
        """Delete a deleted meeting's keys: its ingest leases and subscriber set. (Ids hold no
        glob characters, gateway.ids, so the pattern matches this meeting's leases only.)"""
        leases = self.ingest_key(tenant_id, meeting_id, "*")
        keys = [key async for key in self._client.scan_iter(match=leases, count=100)]
        await self._client.delete(self.members_key(tenant_id, meeting_id), *keys)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._ensure_started()

    def _ensure_started(self) -> None:
        if self._closed:
            raise RuntimeError("RedisCoordinator is closed")
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._every(self.renew_every_s, self._renew_leases)),
                asyncio.create_task(self._every(self.member_refresh_s, self._refresh_members)),
            ]

    async def _stop_tasks(self) -> None:
        await cancel_and_wait(*self._tasks)

    async def aclose(self) -> None:
        """Stop renewing and give back this process's leases and subscriber slots."""
        if self._closed:
            return
        self._closed = True
        await self._stop_tasks()
        closed = CoordinatorUnavailable("redis coordinator closed")
        await self._joins.aclose(closed)
        await self._leaves.aclose(closed)
        leases, members = list(self._leases), self._members
        self._forget_all()
        try:
            async with asyncio.timeout(self._op_timeout_s):
                async with self._client.pipeline(transaction=False) as pipe:
                    for lease in leases:
                        lease.released = True
                        await self._release_script([lease.key], [lease.token], client=pipe)
                    for key, conn_ids in members.items():
                        pipe.zrem(key, *conn_ids)
                    await pipe.execute(raise_on_error=False)
        except _NETWORK_ERRORS as exc:
            log.warning(
                "redis coordinator: release on close failed (keys expire): %s", describe(exc)
            )
        await self._client.aclose()

    async def abandon(self) -> None:
        """Stop all background work and disconnect WITHOUT giving anything back, as a crashed
        replica would: its leases and members expire by TTL. For tests and emergency exits."""
        self._closed = True
        await self._stop_tasks()
        closed = CoordinatorUnavailable("redis coordinator closed")
        await self._joins.aclose(closed)
        await self._leaves.aclose(closed)
        self._forget_all()
        await self._client.aclose()

    def _forget_all(self) -> None:
        for lease in self._leases:
            self._disarm(lease)
        self._leases, self._members = set(), {}

    @contextlib.asynccontextmanager
    async def _op(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._op_timeout_s):
                yield
        except _NETWORK_ERRORS as exc:
            raise CoordinatorUnavailable(f"{what}: {describe(exc)}") from exc

    async def _every(self, interval_s: float, tick: Callable[[], Awaitable[None]]) -> None:
        while not self._closed:  # also ends a loop whose cancel a tick lost (shared.tasks)
            await asyncio.sleep(interval_s)
            try:
                await tick()
            except Exception:
                log.exception("redis coordinator: background %s failed", tick.__name__)

    # -- ingest leases -----------------------------------------------------------------------

    async def acquire_ingest(
        self, tenant_id: str, meeting_id: str, source: str, holder: str
    ) -> IngestLease | None:
        self._ensure_started()
        key = self.ingest_key(tenant_id, meeting_id, source)
        token = f"{holder}:{uuid.uuid4().hex}"
        sent_at = asyncio.get_running_loop().time()
        try:
            async with self._op("acquire ingest lease"):
                acquired = await self._client.set(
                    key, token, nx=True, px=self._ms(self.lease_ttl_s)
                )
                # A retried SET whose first attempt did land finds its own token: still ours.
                if not acquired and await self._client.get(key) != token.encode():
                    return None
        except CoordinatorUnavailable:
            # The SET may have landed before the answer was lost: give back what nobody will
            # renew, or it would refuse the client's retry (4409) until it expires.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._op_timeout_s):
                    await self._release_script(keys=[key], args=[token])
            raise
        lease = _RedisLease(self, key, token, holder)
        self._leases.add(lease)
        self._arm(lease, sent_at)
        return lease

    def _arm(self, lease: _RedisLease, sent_at: float) -> None:
        # `sent_at` precedes the command, so Redis expires the key no earlier than sent_at + TTL.
        self._disarm(lease)
        lease.deadline = asyncio.get_running_loop().call_at(
            sent_at + self.lease_ttl_s * _SAFE_TTL_FRACTION, self._doubt, lease
        )

    @staticmethod
    def _disarm(lease: _RedisLease) -> None:
        if lease.deadline is not None:
            lease.deadline.cancel()
            lease.deadline = None

    async def _release(self, lease: _RedisLease) -> None:
        if lease.released:
            return
        lease.released = True
        self._leases.discard(lease)
        self._disarm(lease)
        if self._closed:
            return
        try:
            async with asyncio.timeout(self._op_timeout_s):
                await self._release_script(keys=[lease.key], args=[lease.token])
        except _NETWORK_ERRORS as exc:
            log.warning(
                "redis coordinator: release of %s failed (expires): %s", lease.key, describe(exc)
            )

    def _doubt(self, lease: _RedisLease) -> None:
        """No renewal reached Redis for nearly a TTL: keep the stream (see module doc)."""
        lease.deadline = None
        if lease in self._leases and not lease.in_doubt:
            lease.in_doubt = True
            log.warning(
                "redis coordinator: ingest lease %s not renewed within %gs; the stream goes on "
                "and the next renewal that reaches Redis decides",
                lease.key,
                self.lease_ttl_s,
            )

    def leases_in_doubt(self) -> int:
        """How many of this process's leases no renewal has confirmed for nearly a TTL."""
        return sum(lease.in_doubt for lease in self._leases)

    def _lose(self, lease: _RedisLease, why: str) -> None:
        if lease not in self._leases:
            return
        self._disarm(lease)
        log.warning("redis coordinator: ingest lease %s lost: %s", lease.key, why)
        self._leases.discard(lease)
        lease.lost.set()

    async def _renew_leases(self) -> None:
        leases = list(self._leases)
        if not leases:
            self._renew_outage.succeeded()  # nothing to renew: the next outage is a new one
            return
        sent_at = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self._op_timeout_s):
                async with self._client.pipeline(transaction=False) as pipe:
                    ttl_ms = self._ms(self.lease_ttl_s)
                    for lease in leases:
                        await self._renew(keys=[lease.key], args=[lease.token, ttl_ms], client=pipe)
                    results = await pipe.execute(raise_on_error=False)
        except _NETWORK_ERRORS as exc:
            # Nobody can take a lease while Redis is unreachable: keep it, renew on the next tick.
            self._renew_outage.failed(
                "redis coordinator: lease renewal failed (retried): %s", describe(exc)
            )
            return
        self._renew_outage.succeeded()
        for lease, result in zip(leases, results, strict=True):
            if lease not in self._leases:
                continue  # released while renewing
            if result == 1:
                if lease.in_doubt:
                    lease.in_doubt = False
                    log.info("redis coordinator: ingest lease %s renewed again", lease.key)
                self._arm(lease, sent_at)
            elif result == 0:
                lease.taken_over = True
                self._lose(lease, "taken over by another stream")
            # Anything else (an error reply) decides nothing: the next renewal tries again.

    # -- subscriber cap ----------------------------------------------------------------------

    async def join_meeting(self, tenant_id: str, meeting_id: str, conn_id: str, limit: int) -> bool:
        self._ensure_started()
        key = self.members_key(tenant_id, meeting_id)
        # Coalesced with the meeting's other joins in flight: one script call per batch. Each
        # flush is bounded by the op timeout; the bound here also covers the wait for the flush
        # in flight before ours, so a join never hangs (a late answer is undone, see
        # `_abandoned_join`).
        try:
            async with asyncio.timeout(3 * self._op_timeout_s):
                return await self._joins.submit(key, (conn_id, limit))
        except TimeoutError:
            log.warning("redis coordinator: join of %s got no answer in time", key)
            raise CoordinatorUnavailable("join meeting: no answer in time") from None

    async def _flush_joins(self, key: str, joins: Sequence[tuple[str, int]]) -> list[bool]:
        ttl_ms = self._ms(self.member_ttl_s)
        args: list[str | int] = [ttl_ms]
        for conn_id, limit in joins:
            args += [conn_id, limit]
        async with self._op("join meeting"):
            results = await self._join_many(keys=[key], args=args)
        joined = [bool(result) for result in results]
        for (conn_id, _), ok in zip(joins, joined, strict=True):
            if ok:
                self._members.setdefault(key, set()).add(conn_id)
        return joined

    def _abandoned_join(self, key: str, join: tuple[str, int], joined: bool) -> None:
        # Its caller is gone: stop refreshing the slot, so it expires after member_ttl_s.
        if joined:
            self._forget_member(key, join[0])

    def _forget_member(self, key: str, conn_id: str) -> None:
        conn_ids = self._members.get(key)
        if conn_ids is not None:
            conn_ids.discard(conn_id)
            if not conn_ids:
                del self._members[key]

    async def leave_meeting(self, tenant_id: str, meeting_id: str, conn_id: str) -> None:
        """Never raises: if Redis is unreachable the member expires after `member_ttl_s`, since
        it is no longer refreshed."""
        key = self.members_key(tenant_id, meeting_id)
        self._forget_member(key, conn_id)
        if self._closed:
            return
        try:
            await self._leaves.submit(key, conn_id)
        except CoordinatorUnavailable as exc:
            log.warning("redis coordinator: leave %s failed (member expires): %s", key, exc)

    async def _flush_leaves(self, key: str, conn_ids: Sequence[str]) -> list[None]:
        async with self._op("leave meeting"):
            await self._client.zrem(key, *conn_ids)
        return [None] * len(conn_ids)

    async def subscriber_count(self, tenant_id: str, meeting_id: str) -> int:
        async with self._op("count subscribers"):
            return int(await self._count(keys=[self.members_key(tenant_id, meeting_id)]))

    async def _refresh_members(self) -> None:
        members = {key: list(conn_ids) for key, conn_ids in self._members.items()}
        if not members:
            self._refresh_outage.succeeded()  # nothing to refresh: the next outage is a new one
            return
        ttl_ms = self._ms(self.member_ttl_s)
        try:
            async with asyncio.timeout(self._op_timeout_s):
                async with self._client.pipeline(transaction=False) as pipe:
                    for key, conn_ids in members.items():
                        await self._refresh(keys=[key], args=[ttl_ms, *conn_ids], client=pipe)
                    await pipe.execute(raise_on_error=False)
            # The script adds missing members back: one that left while this refresh was on
            # its way (its removal may have reached Redis first) is taken out again.
            departed = {
                key: gone
                for key, conn_ids in members.items()
                if (gone := [c for c in conn_ids if c not in self._members.get(key, ())])
            }
            if departed:
                async with asyncio.timeout(self._op_timeout_s):
                    async with self._client.pipeline(transaction=False) as pipe:
                        for key, gone in departed.items():
                            pipe.zrem(key, *gone)
                        await pipe.execute(raise_on_error=False)
        except _NETWORK_ERRORS as exc:
            self._refresh_outage.failed(
                "redis coordinator: member refresh failed: %s", describe(exc)
            )
        else:
            self._refresh_outage.succeeded()

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))
