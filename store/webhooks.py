"""Webhook endpoints and the durable delivery outbox.

An event is enqueued in the same transaction as the state change that raises it (a meeting's
lifecycle moving, a recording job ending, a meeting deleted): one `webhook_deliveries` row per
endpoint of the tenant that subscribes to the event, its body fixed then. Replicas claim due
rows under a lease (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: BEGIN IMMEDIATE), so each
delivery runs on one replica at a time, and a replica that dies mid-delivery leaves it to be
claimed again once the lease lapses: at least once.
"""

from __future__ import annotations

import json
import secrets
import uuid
from base64 import b64encode
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Row, and_, bindparam, delete, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.sql import any_row, write_engine
from store.tables import webhook_deliveries, webhook_endpoints

EventType = Literal[
    "meeting.started",
    "meeting.ended",
    "recording.succeeded",
    "recording.failed",
    "meeting.deleted",
    "notes.ready",
]
EVENT_TYPES: tuple[EventType, ...] = (
    "meeting.started",
    "meeting.ended",
    "recording.succeeded",
    "recording.failed",
    "meeting.deleted",
    "notes.ready",
)
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
MAX_DESCRIPTION_CHARS = 200  # an endpoint's description, from the API or WEBHOOKS_FILE
SECRET_PREFIX = "whsec_"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + b64encode(secrets.token_bytes(32)).decode()


# A fair claim reads this many times its limit of due rows to pick from.
CLAIM_SCAN_FACTOR = 4
PRUNE_BATCH = 1000  # settled deliveries deleted per transaction


def fair_share(
    due: Sequence[tuple[str, str]], limit: int, per_tenant: int | None, busy: Mapping[str, int]
) -> list[str]:
    """Of `due` (delivery id, tenant), oldest first, the ids to claim: at most `limit`, and at
    most `per_tenant` of a tenant counting what it has under way (`busy`)."""
    if per_tenant is None:
        return [delivery_id for delivery_id, _ in due[:limit]]
    taken: dict[str, int] = dict(busy)
    ids: list[str] = []
    for delivery_id, tenant in due:
        if len(ids) == limit:
            break
        if taken.get(tenant, 0) < per_tenant:
            taken[tenant] = taken.get(tenant, 0) + 1
            ids.append(delivery_id)
    return ids


class EndpointExists(Exception):
    """The tenant has an endpoint for that URL already (each event would go to it twice)."""

    def __init__(self, endpoint_id: str) -> None:
        super().__init__(f"this tenant already has an endpoint for that url: {endpoint_id}")
        self.endpoint_id = endpoint_id


# Replaced secrets that may sign at once (retried or repeated rotations within their grace).
MAX_PREVIOUS_SECRETS = 3


class DeclaredInFile(Exception):
    """The endpoint comes from WEBHOOKS_FILE: what it is, its secret too, is set there."""


class TooManyEndpoints(Exception):
    """The tenant has as many webhook endpoints as it may."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a tenant has at most {limit} webhook endpoints")


@dataclass(frozen=True, slots=True)
class Event:
    """Ids and states only, never transcript text."""

    type: EventType
    tenant_id: str
    meeting_id: str
    data: Mapping[str, object] = field(default_factory=dict)
    at: datetime = field(default_factory=_utcnow)

    def body(self) -> str:
        """The Standard Webhooks payload: `type`, `timestamp` and `data`."""
        data = {"tenant_id": self.tenant_id, "meeting_id": self.meeting_id, **self.data}
        payload = {"type": self.type, "timestamp": self.at.isoformat(), "data": data}
        return json.dumps(payload, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: str
    tenant_id: str
    url: str
    events: tuple[str, ...]
    secret: str
    description: str | None
    source: str
    created_at: datetime
    # Secrets rotations replaced, newest first, each signing too until its time.
    previous_secrets: tuple[tuple[str, datetime], ...] = ()

    def signing_secrets(self, now: datetime) -> tuple[str, ...]:
        """The secrets a delivery at `now` is signed with: the current one, and those rotations
        replaced while their grace lasts (receivers accept any of the signatures)."""
        return (self.secret, *(secret for secret, until in self.previous_secrets if now < until))

    def previous_until(self, now: datetime) -> datetime | None:
        """When the last replaced secret stops signing, if one still does."""
        return max((until for _, until in self.previous_secrets if now < until), default=None)


@dataclass(frozen=True, slots=True)
class Delivery:
    delivery_id: str
    endpoint_id: str
    tenant_id: str
    meeting_id: str | None
    event_type: str
    payload: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


def _endpoint(values: Mapping[str, Any]) -> Endpoint:
    previous = json.loads(values.get("previous_secrets") or "[]")
    return Endpoint(
        **{
            **values,
            "events": tuple(json.loads(values["events"])),
            "previous_secrets": tuple(
                (secret, datetime.fromisoformat(until)) for secret, until in previous
            ),
        }
    )


def _previous_json(previous: Sequence[tuple[str, datetime]]) -> str | None:
    if not previous:
        return None
    return json.dumps([[secret, until.isoformat()] for secret, until in previous])


_DELIVERY_COLUMNS = tuple(webhook_deliveries.c[name] for name in Delivery.__dataclass_fields__)


def _delivery(row: Row[Any]) -> Delivery:
    return Delivery(**row._mapping)


async def enqueue(conn: AsyncConnection, event: Event, now: datetime | None = None) -> int:
    """One pending delivery per endpoint of the tenant that takes `event.type`, on `conn`'s
    transaction (the caller's state change and its event commit together); how many."""
    e = webhook_endpoints
    rows = (
        await conn.execute(
            select(e.c.endpoint_id, e.c.events).where(e.c.tenant_id == event.tenant_id)
        )
    ).all()
    targets = [endpoint_id for endpoint_id, events in rows if event.type in json.loads(events)]
    if not targets:
        return 0
    now = now or _utcnow()
    body = event.body()
    await conn.execute(
        webhook_deliveries.insert(),
        [
            {
                "delivery_id": "msg_" + uuid.uuid4().hex,
                "endpoint_id": endpoint_id,
                "tenant_id": event.tenant_id,
                "meeting_id": event.meeting_id,
                "event_type": event.type,
                "payload": body,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for endpoint_id in targets
        ],
    )
    return len(targets)


class WebhookStore:
    """Endpoints and deliveries on the transcript store's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._writer = write_engine(engine)
        self._postgres = engine.dialect.name == "postgresql"

    # -- endpoints -----------------------------------------------------------------------------

    async def create_endpoint(
        self,
        tenant_id: str,
        url: str,
        events: Sequence[str],
        *,
        description: str | None = None,
        secret: str | None = None,
        endpoint_id: str | None = None,
        source: str = "api",
        limit: int | None = None,
        url_key: Callable[[str], str] | None = None,
    ) -> Endpoint:
        """A new endpoint; with `limit`, TooManyEndpoints if the tenant has that many of this
        `source` already, and EndpointExists if it has one for `url` (compared through
        `url_key`, so two spellings of a URL are one; checked and inserted in one transaction,
        under a per-tenant lock on PostgreSQL)."""
        row = {
            "endpoint_id": endpoint_id or "ep_" + uuid.uuid4().hex,
            "tenant_id": tenant_id,
            "url": url,
            "events": json.dumps(list(events)),
            "secret": secret or new_secret(),
            "description": description,
            "source": source,
            "created_at": _utcnow(),
        }
        e = webhook_endpoints
        async with self._writer.begin() as conn:
            if limit is not None:
                if conn.dialect.name == "postgresql":  # SQLite: BEGIN IMMEDIATE serialises
                    key = func.hashtext(bindparam("key", f"webhook-endpoints:{tenant_id}"))
                    await conn.execute(select(func.pg_advisory_xact_lock(key)))
                key = url_key or str
                theirs = select(e.c.endpoint_id, e.c.url).where(e.c.tenant_id == tenant_id)
                for existing, stored in (await conn.execute(theirs)).all():
                    if key(stored) == key(url):  # a tenant has a few dozen at most
                        raise EndpointExists(existing)
                held = (
                    select(func.count())
                    .select_from(e)
                    .where(e.c.tenant_id == tenant_id, e.c.source == source)
                )
                if (await conn.execute(held)).scalar_one() >= limit:
                    raise TooManyEndpoints(limit)
            await conn.execute(e.insert().values(**row))
        return _endpoint(row)

    async def endpoints(self, tenant_id: str | None = None) -> list[Endpoint]:
        """A tenant's endpoints (every tenant's with None), oldest first."""
        e = webhook_endpoints
        stmt = select(e).order_by(e.c.created_at, e.c.endpoint_id)
        if tenant_id is not None:
            stmt = stmt.where(e.c.tenant_id == tenant_id)
        async with self.engine.connect() as conn:
            return [_endpoint(row._mapping) for row in (await conn.execute(stmt)).all()]

    async def endpoint(self, endpoint_id: str, tenant_id: str | None = None) -> Endpoint | None:
        e = webhook_endpoints
        stmt = select(e).where(e.c.endpoint_id == endpoint_id)
        if tenant_id is not None:
            stmt = stmt.where(e.c.tenant_id == tenant_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else _endpoint(row._mapping)

    async def delete_endpoint(self, endpoint_id: str, tenant_id: str | None = None) -> bool:
        """The endpoint and its delivery log; whether it was there."""
        e, d = webhook_endpoints, webhook_deliveries
        where = e.c.endpoint_id == endpoint_id
        if tenant_id is not None:
            where = and_(where, e.c.tenant_id == tenant_id)
        async with self._writer.begin() as conn:
            found = (await conn.execute(select(e.c.endpoint_id).where(where))).first()
            if found is None:
                return False
            await conn.execute(delete(d).where(d.c.endpoint_id == endpoint_id))
            await conn.execute(delete(e).where(e.c.endpoint_id == endpoint_id))
        return True

    async def rotate_secret(
        self, endpoint_id: str, tenant_id: str, grace: timedelta, now: datetime | None = None
    ) -> Endpoint | None:
        """A new secret for the endpoint, the current one signing beside it for `grace` (so
        receivers can switch without losing a delivery), as earlier ones still do until their
        own time; None if there is no such endpoint, DeclaredInFile for one of WEBHOOKS_FILE."""
        e = webhook_endpoints
        now = now or _utcnow()
        where = and_(e.c.endpoint_id == endpoint_id, e.c.tenant_id == tenant_id)
        async with self._writer.begin() as conn:
            # Locked: two rotations at once each replace the secret the other made, in turn.
            row = (await conn.execute(select(e).where(where).with_for_update())).first()
            if row is None:
                return None
            current = _endpoint(row._mapping)
            if current.source == "file":
                raise DeclaredInFile(endpoint_id)
            # A retried rotation (its answer lost) must not retire the secret the receiver
            # still holds: every replaced secret signs until its own time (MAX_PREVIOUS_SECRETS
            # at most). No grace retires them all at once (a leaked secret).
            previous: tuple[tuple[str, datetime], ...] = ()
            if grace > timedelta(0):
                live = tuple((s, until) for s, until in current.previous_secrets if now < until)
                previous = ((current.secret, now + grace), *live)[:MAX_PREVIOUS_SECRETS]
            secret = new_secret()
            await conn.execute(
                update(e)
                .where(where)
                .values(secret=secret, previous_secrets=_previous_json(previous))
            )
        return replace(current, secret=secret, previous_secrets=previous)

    async def replace_file_endpoints(self, endpoints: Sequence[Endpoint]) -> dict[str, int]:
        """Make the `file` endpoints exactly `endpoints` (WEBHOOKS_FILE, read at start): new ones
        added, changed ones updated in place (their delivery log kept), missing ones removed
        with their deliveries. An endpoint is its tenant and url: one whose url changed is a
        removal and an addition. Returns the removed endpoints' undelivered events by id."""
        e = webhook_endpoints
        wanted = {endpoint.endpoint_id: endpoint for endpoint in endpoints}
        async with self._writer.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Replicas (and workers) starting together each sync the file: one at a time,
                # or two would insert the same new endpoint. SQLite's writer already locks.
                lock = func.pg_advisory_xact_lock(func.hashtext(literal("webhooks_file")))
                await conn.execute(select(lock))
            present = set(
                (await conn.execute(select(e.c.endpoint_id).where(e.c.source == "file")))
                .scalars()
                .all()
            )
            dropped: dict[str, int] = {}
            for endpoint_id in sorted(present - wanted.keys()):
                pending = select(func.count()).where(
                    webhook_deliveries.c.endpoint_id == endpoint_id,
                    webhook_deliveries.c.status == PENDING,
                )
                if count := (await conn.execute(pending)).scalar_one():
                    dropped[endpoint_id] = count
                await conn.execute(
                    delete(webhook_deliveries).where(
                        webhook_deliveries.c.endpoint_id == endpoint_id
                    )
                )
                await conn.execute(delete(e).where(e.c.endpoint_id == endpoint_id))
            for endpoint_id, endpoint in wanted.items():
                values = {
                    "tenant_id": endpoint.tenant_id,
                    "url": endpoint.url,
                    "events": json.dumps(list(endpoint.events)),
                    "secret": endpoint.secret,
                    "description": endpoint.description,
                    "source": "file",
                }
                if endpoint_id in present:
                    await conn.execute(
                        update(e).where(e.c.endpoint_id == endpoint_id).values(**values)
                    )
                else:
                    await conn.execute(
                        e.insert().values(
                            endpoint_id=endpoint_id, created_at=endpoint.created_at, **values
                        )
                    )
        return dropped

    # -- deliveries ----------------------------------------------------------------------------

    async def enqueue(self, event: Event) -> int:
        async with self._writer.begin() as conn:
            return await enqueue(conn, event)

    async def deliveries(
        self, endpoint_id: str, *, limit: int, before: tuple[datetime, str] | None = None
    ) -> list[Delivery]:
        """An endpoint's deliveries, newest first, after the keyset position `before`."""
        d = webhook_deliveries
        stmt = select(*_DELIVERY_COLUMNS).where(d.c.endpoint_id == endpoint_id)
        if before is not None:
            created, delivery_id = before
            stmt = stmt.where(
                or_(
                    d.c.created_at < created,
                    and_(d.c.created_at == created, d.c.delivery_id < delivery_id),
                )
            )
        stmt = stmt.order_by(d.c.created_at.desc(), d.c.delivery_id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [_delivery(row) for row in (await conn.execute(stmt)).all()]

    async def claim(
        self,
        owner: str,
        *,
        lease_s: float,
        limit: int,
        per_tenant: int | None = None,
        busy: Mapping[str, int] | None = None,
        now: datetime | None = None,
    ) -> list[tuple[Delivery, Endpoint]]:
        """Due pending deliveries not leased by another replica, leased to `owner`, oldest due
        first. With `per_tenant`, at most that many of a tenant's, less what `busy` says the
        tenant already has under way: one tenant's backlog (slow receivers, many endpoints)
        leaves room for the others' deliveries."""
        now = now or _utcnow()
        d, e = webhook_deliveries, webhook_endpoints
        busy = busy or {}
        # Enough due rows to fill `limit` after the per-tenant cut, most of the time.
        scan = limit if per_tenant is None else limit * CLAIM_SCAN_FACTOR
        due = (
            select(d.c.delivery_id, d.c.tenant_id)
            .where(
                d.c.status == PENDING,
                d.c.next_attempt_at <= now,
                or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at < now),
            )
            .order_by(d.c.next_attempt_at, d.c.delivery_id)
            .limit(scan)
        )
        if per_tenant is not None:
            full = [tenant for tenant, n in busy.items() if n >= per_tenant]
            if full:
                due = due.where(d.c.tenant_id.not_in(full))
        if not await any_row(self.engine, due):
            return []
        if self._postgres:
            due = due.with_for_update(skip_locked=True)
        async with self._writer.begin() as conn:
            rows = (await conn.execute(due)).all()
            ids = fair_share(rows, limit, per_tenant, busy)
            if not ids:
                return []
            await conn.execute(
                update(d)
                .where(d.c.delivery_id.in_(ids))
                .values(
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    updated_at=now,
                )
            )
            claimed = [
                _delivery(row)
                for row in await conn.execute(
                    select(*_DELIVERY_COLUMNS)
                    .where(d.c.delivery_id.in_(ids))
                    .order_by(d.c.next_attempt_at, d.c.delivery_id)
                )
            ]
            wanted = {delivery.endpoint_id for delivery in claimed}
            endpoints = {
                row.endpoint_id: _endpoint(row._mapping)
                for row in await conn.execute(select(e).where(e.c.endpoint_id.in_(wanted)))
            }
        return [(delivery, endpoints[delivery.endpoint_id]) for delivery in claimed]

    async def delivered(
        self, delivery_id: str, owner: str, *, status_code: int, now: datetime | None = None
    ) -> bool:
        now = now or _utcnow()
        return await self._settle(
            delivery_id,
            owner,
            status=DELIVERED,
            last_status_code=status_code,
            last_error=None,
            delivered_at=now,
            updated_at=now,
        )

    async def attempt_failed(
        self,
        delivery_id: str,
        owner: str,
        *,
        error: str,
        status_code: int | None,
        retry_at: datetime | None,
        now: datetime | None = None,
    ) -> bool:
        """Record a failed attempt: tried again at `retry_at`, or failed for good with None."""
        now = now or _utcnow()
        return await self._settle(
            delivery_id,
            owner,
            status=PENDING if retry_at is not None else FAILED,
            next_attempt_at=retry_at if retry_at is not None else now,
            last_status_code=status_code,
            last_error=error[:500],
            updated_at=now,
        )

    async def prune(self, settled_before: datetime, *, batch: int = PRUNE_BATCH) -> int:
        """Delete delivered and failed deliveries whose last attempt was due before
        `settled_before`, a batch per transaction (the log would grow with every event for
        good); how many. Pending ones stay whatever their age."""
        d = webhook_deliveries
        old = (
            select(d.c.delivery_id)
            .where(d.c.status.in_((DELIVERED, FAILED)), d.c.next_attempt_at < settled_before)
            .limit(batch)
            .scalar_subquery()
        )
        total = 0
        while True:
            async with self._writer.begin() as conn:
                gone = (await conn.execute(delete(d).where(d.c.delivery_id.in_(old)))).rowcount
            total += gone
            if gone < batch:
                return total

    async def release(self, delivery_ids: Sequence[str], owner: str) -> int:
        """Give back `owner`'s leases of attempts cut short (the process stopping): claimable
        again at once, with no attempt counted. How many were still leased."""
        if not delivery_ids:
            return 0
        d = webhook_deliveries
        stmt = (
            update(d)
            .where(
                d.c.delivery_id.in_(list(delivery_ids)),
                d.c.lease_owner == owner,
                d.c.status == PENDING,
            )
            .values(lease_owner=None, lease_expires_at=None)
        )
        async with self._writer.begin() as conn:
            return (await conn.execute(stmt)).rowcount

    async def _settle(self, delivery_id: str, owner: str, **values: Any) -> bool:
        d = webhook_deliveries
        stmt = (
            update(d)
            .where(d.c.delivery_id == delivery_id, d.c.lease_owner == owner, d.c.status == PENDING)
            .values(attempts=d.c.attempts + 1, lease_owner=None, lease_expires_at=None, **values)
        )
        async with self._writer.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1
