"""Drains the webhook outbox: every replica claims due deliveries under a lease, sends them
concurrently, and records each outcome (delivered, or the next attempt, or failed for good).

Attempts run side by side, at most IN_FLIGHT per replica and TENANT_IN_FLIGHT of one tenant's,
and a new claim follows each attempt's end: a tenant whose receivers answer slowly (or never,
each attempt then taking WEBHOOKS_TIMEOUT_S) holds only its own share, not a round every other
tenant's deliveries wait behind."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from gateway.observability.logs import get_logger
from gateway.observability.metrics import Metrics
from gateway.webhooks.schedule import next_attempt
from gateway.webhooks.sender import Outcome, WebhookSender
from shared.outage_log import OutageLog
from shared.tasks import cancel_and_wait
from store.webhooks import Delivery, Endpoint, WebhookStore

log = get_logger("gateway.webhooks")

IN_FLIGHT = 32  # attempts under way at once on a replica
TENANT_IN_FLIGHT = 8  # of them, at most this many of one tenant's
LEASE_MARGIN_S = 30.0  # a lease outlasts the attempt's timeout by this much
RELEASE_TIMEOUT_S = 1.0  # for giving back the leases of attempts cut short by a stop
PRUNE_EVERY_S = 3600.0  # how often settled deliveries past WEBHOOKS_LOG_RETENTION_DAYS go


class WebhookWorker:
    def __init__(
        self,
        store: WebhookStore,
        sender: WebhookSender,
        metrics: Metrics,
        *,
        owner: str,
        timeout_s: float,
        poll_s: float,
        retry_base_s: float,
        retry_max_s: float,
        max_age_s: float,
        log_retention_s: float,
        prune_every_s: float = PRUNE_EVERY_S,
    ) -> None:
        self._store = store
        self._log_retention = timedelta(seconds=log_retention_s)
        self._prune_every_s = prune_every_s
        self._pruner: asyncio.Task[None] | None = None
        self._sender = sender
        self._metrics = metrics
        self._owner = owner
        self._lease_s = timeout_s + LEASE_MARGIN_S
        self._poll_s = poll_s
        self._retry = {"base_s": retry_base_s, "cap_s": retry_max_s, "max_age_s": max_age_s}
        self._rng = random.Random()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = asyncio.Event()  # an attempt ended, or the worker is closing
        self._attempts: set[asyncio.Task[None]] = set()
        self._leased: dict[asyncio.Task[None], str] = {}  # attempt -> its delivery's id
        self._busy: Counter[str] = Counter()  # attempts under way by tenant

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._loop(), name="webhooks")
        self._pruner = loop.create_task(self._prune_loop(), name="webhooks-prune")

    async def _prune_loop(self) -> None:
        """Every replica prunes (deleting is idempotent): the delivery log keeps what was
        settled within WEBHOOKS_LOG_RETENTION_DAYS, not every event of the gateway's life."""
        while True:
            try:
                pruned = await self._store.prune(datetime.now(UTC) - self._log_retention)
            except Exception as exc:  # a database outage: the next round
                log.warning("webhook log pruning failed", error=type(exc).__name__)
            else:
                if pruned:
                    log.info("webhook log pruned", deliveries=pruned)
            await asyncio.sleep(self._prune_every_s)

    async def aclose(self, within_s: float | None = None) -> None:
        """Stop claiming, and let the attempts under way finish within `within_s` (the stop's
        share of DRAIN_TIMEOUT_S; at most until their leases lapse): one that ends is settled,
        so a receiver that answered is not sent the delivery again after a restart. Attempts
        still running then are cancelled and their leases given back, so the deliveries are
        claimed again at once, by whichever replica runs (a receiver may get one twice)."""
        self._closing = True
        self._wake.set()
        await cancel_and_wait(self._pruner)
        log.info("webhook worker stopping", attempts_under_way=len(self._attempts))
        wait_s = self._lease_s if within_s is None else min(within_s, self._lease_s)
        with contextlib.suppress(TimeoutError):  # one deadline for the loop and the attempts
            async with asyncio.timeout(wait_s):
                if self._task is not None:  # it ends at its next turn (a claim completes)
                    await asyncio.shield(self._task)
                if self._attempts:
                    await asyncio.shield(asyncio.wait(set(self._attempts)))
        cut_short = [self._leased[task] for task in self._attempts if not task.done()]
        await cancel_and_wait(self._task, *self._attempts)  # no-ops for those that ended
        if cut_short:
            try:
                async with asyncio.timeout(RELEASE_TIMEOUT_S):
                    await self._store.release(cut_short, self._owner)
            except Exception as exc:  # their leases lapse instead
                log.warning("webhook leases not given back", error=type(exc).__name__)
            log.info("webhook attempts cut short by the stop", deliveries=len(cut_short))
        await self._sender.aclose()

    async def _loop(self) -> None:
        outage = OutageLog(log, "webhook claims failing", "webhook claims working again")
        while not self._closing:
            self._wake.clear()
            free = IN_FLIGHT - len(self._attempts)
            started = 0
            if free > 0:
                try:
                    claimed = await self._store.claim(
                        self._owner,
                        lease_s=self._lease_s,
                        limit=free,
                        per_tenant=TENANT_IN_FLIGHT,
                        busy=self._busy,
                    )
                except Exception as exc:  # a database outage: the outbox waits in the database
                    outage.failed(exc)
                else:
                    outage.succeeded()
                    started = self._start(claimed)
            if started and started == free:
                continue  # as many as there was room for: more may be due
            # The next claim when an attempt ends (room again), or after the poll interval.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()

    def _start(self, claimed: list[tuple[Delivery, Endpoint]]) -> int:
        loop = asyncio.get_running_loop()
        for delivery, endpoint in claimed:
            tenant = delivery.tenant_id
            self._busy[tenant] += 1
            task = loop.create_task(self._attempt(delivery, endpoint))
            self._attempts.add(task)
            self._leased[task] = delivery.delivery_id
            task.add_done_callback(lambda done, tenant=tenant: self._ended(done, tenant))
        return len(claimed)

    def _ended(self, task: asyncio.Task[None], tenant: str) -> None:
        self._attempts.discard(task)
        self._leased.pop(task, None)
        self._busy[tenant] -= 1
        if self._busy[tenant] <= 0:
            del self._busy[tenant]
        if not task.cancelled() and task.exception() is not None:
            # Not settled (the database): its lease lapses and it is claimed again.
            log.warning("webhook attempt not recorded", error=type(task.exception()).__name__)
        self._wake.set()

    async def _attempt(self, delivery: Delivery, endpoint: Endpoint) -> None:
        try:
            outcome = await self._sender.send(delivery, endpoint)
        except Exception as exc:  # a failed attempt like any other, never a failed round
            log.warning("webhook attempt raised", error=type(exc).__name__)
            outcome = Outcome(False, error=f"the attempt failed: {type(exc).__name__}")
        if outcome.delivered:
            await self._store.delivered(
                delivery.delivery_id, self._owner, status_code=outcome.status_code or 200
            )
            self._metrics.webhook_attempt(delivery.event_type, "delivered")
            return
        now = datetime.now(UTC)
        retry_at = next_attempt(
            delivery.attempts + 1,
            created_at=delivery.created_at,
            now=now,
            rng=self._rng,
            **self._retry,
        )
        await self._store.attempt_failed(
            delivery.delivery_id,
            self._owner,
            error=outcome.error or "failed",
            status_code=outcome.status_code,
            retry_at=retry_at,
            now=now,
        )
        result = "retry" if retry_at is not None else "failed"
        self._metrics.webhook_attempt(delivery.event_type, result)
        log.info(
            "webhook attempt failed",
            tenant=delivery.tenant_id,
            endpoint=endpoint.endpoint_id,
            delivery=delivery.delivery_id,
            attempts=delivery.attempts + 1,
            outcome=result,
            error=outcome.loggable_error,
        )
