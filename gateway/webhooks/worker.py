"""Drains the webhook outbox: every replica claims due deliveries under a lease, sends them
concurrently, and records each outcome (delivered, or the next attempt, or failed for good)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime

from gateway.observability.logs import get_logger
from gateway.observability.metrics import Metrics
from gateway.webhooks.schedule import next_attempt
from gateway.webhooks.sender import Outcome, WebhookSender
from shared.tasks import cancel_and_wait
from store.webhooks import Delivery, Endpoint, WebhookStore

log = get_logger("gateway.webhooks")

BATCH = 32  # deliveries claimed per round
LEASE_MARGIN_S = 30.0  # a lease outlasts the attempt's timeout by this much


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
    ) -> None:
        self._store = store
        self._sender = sender
        self._metrics = metrics
        self._owner = owner
        self._lease_s = timeout_s + LEASE_MARGIN_S
        self._poll_s = poll_s
        self._retry = {"base_s": retry_base_s, "cap_s": retry_max_s, "max_age_s": max_age_s}
        self._rng = random.Random()
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._under_way = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="webhooks")

    async def aclose(self) -> None:
        """Stop claiming, and let the round under way finish: each attempt ends within the
        sender's timeout and is settled, so a receiver that answered is not sent the delivery
        again after a restart. A round still running when its leases would lapse is cancelled;
        its deliveries are claimed again then, by whichever replica runs."""
        self._closing.set()
        log.info("webhook worker stopping", attempts_under_way=self._under_way)
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._lease_s):
                    await asyncio.shield(self._task)
            await cancel_and_wait(self._task)  # a no-op once it has ended
        await self._sender.aclose()

    async def _loop(self) -> None:
        failing = False
        while not self._closing.is_set():
            try:
                sent = await self.run_once()
            except Exception as exc:  # a database outage: the outbox waits in the database
                if not failing:  # once per outage, not once per poll
                    log.warning("webhook rounds failing", error=type(exc).__name__)
                failing, sent = True, 0
            else:
                if failing:
                    log.info("webhook rounds running again")
                failing = False
            if sent < BATCH:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_s):
                        await self._closing.wait()

    async def run_once(self) -> int:
        """One round: claim, send and settle; how many deliveries were attempted."""
        claimed = await self._store.claim(self._owner, lease_s=self._lease_s, limit=BATCH)
        self._under_way = len(claimed)
        try:
            await asyncio.gather(*(self._attempt(d, endpoint) for d, endpoint in claimed))
        finally:
            self._under_way = 0
        return len(claimed)

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
            endpoint=endpoint.endpoint_id,
            delivery=delivery.delivery_id,
            attempts=delivery.attempts + 1,
            outcome=result,
            error=outcome.error,
        )
