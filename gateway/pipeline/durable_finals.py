"""Wiring for finals that survive a database outage: numbering, the on-disk outbox, its writer.

Built once per process by `build_services`. The seed of a missing counter combines everything
this replica knows about a meeting's numbers (store, its own outbox, what its viewers were given),
and a final the store had to renumber (numbering state was lost, see the README) is published
again under its stored number, so viewers and the store agree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from fanout.bus import Bus
from fanout.rooms import RoomRegistry
from fanout.topics import status_topic, transcript_topic
from gateway.config import Settings
from gateway.observability.logs import get_logger
from gateway.observability.metrics import Metrics
from gateway.pipeline.stored_finals import correction_message, final_message
from shared.backoff import backoff_delay
from shared.tasks import detach
from store.base import FinalSegment, TranscriptStore
from store.numbering import SegmentNumbering
from store.numbering_local import LocalNumbering
from store.outbox import FinalOutbox, OutboxEntry, OutboxStats, OutboxWriter

log = get_logger("gateway.pipeline.durable_finals")

STUCK_AFTER_S = 5.0  # a final waiting this long means the store is not taking writes
RENUMBERED_BY = "gateway"  # `edited_by` of a correction after a renumbering
CORRECTION_DELAY_S = 1.0  # after the stream's own publish of the number it was given
CORRECTION_ATTEMPTS = 12


@dataclass
class DurableFinals:
    numbering: SegmentNumbering
    outbox: FinalOutbox
    writer: OutboxWriter

    def stats(self) -> OutboxStats:
        """The replica's outbox depth and age, for /metrics (no I/O)."""
        return self.writer.stats()

    def writes_failing(self) -> bool:
        """Whether every write of this process's finals has failed for seconds: a database
        that answers a probe but takes no write (a full disk, a read-only file)."""
        return self.writer.failing_for_s() > STUCK_AFTER_S

    def outbox_failing(self) -> bool:
        """Whether the outbox's own file has failed for seconds (its disk, a lock held
        elsewhere; not the database): this replica cannot keep finals."""
        return self.outbox.failing_for_s() > STUCK_AFTER_S

    async def tenant_backlog(self, tenant_id: str) -> dict[str, float | bool]:
        """One tenant's waiting finals, for its ops' `/api/v1/ws/stats`, and whether the
        replica's last store write succeeded."""
        backlog: dict[str, float | bool] = {**await self.outbox.tenant_backlog(tenant_id)}
        # Finals waiting for seconds (in any worker's file) say writes fail, even if this
        # worker's last write (or none yet) went through; a final between its append and its
        # insert (milliseconds) says nothing.
        stuck = float(backlog["oldest_age_s"]) > STUCK_AFTER_S
        backlog["store_reachable"] = self.writer.store_reachable and not stuck
        return backlog


async def counter_seed(
    waiting: Callable[[], Awaitable[int]], stored: Callable[[], Awaitable[int]]
) -> int:
    """A missing counter's seed: the highest of the numbers waiting to be stored (outbox, what
    viewers were given) and the store's last. Waiting ones first: a final the writer moves to
    the store between the two reads is then seen by the second; read the other way round, it
    would be seen by neither, and its number handed out again."""
    highest_waiting = await waiting()
    return max(highest_waiting, await stored())


async def correct_taken_number(
    store: TranscriptStore, bus: Bus, entry: OutboxEntry, *, delay_s: float = CORRECTION_DELAY_S
) -> None:
    """Viewers were given this final under `entry.segment_no`, which the store keeps for the
    final that took it first (a recording's, or another replica's): they may hold this one's
    text there, and drop the other as a repeat. A correction of that number to the whole final
    the store holds puts their line right (`segment.corrected`, `edited_by` "gateway"; a viewer
    that does not hold the number takes it as the final). Sent after the stream's own publish
    of the number (a moment later), and tried again while the bus is away."""
    tenant_id, meeting_id, number = entry.tenant_id, entry.meeting_id, entry.segment_no
    for attempt in range(CORRECTION_ATTEMPTS):
        await asyncio.sleep(delay_s if attempt == 0 else backoff_delay(attempt, 1.0, 10.0))
        try:
            async with asyncio.timeout(5):
                kept = await store.finals_after(tenant_id, meeting_id, after=number - 1, limit=1)
                if not kept or kept[0].segment_no != number:
                    return
                message = correction_message(meeting_id, kept[0], RENUMBERED_BY)
                await bus.publish(status_topic(tenant_id, meeting_id), message)
                return
        except Exception as exc:
            log.warning("taken number not corrected yet", error=type(exc).__name__)


async def open_durable_finals(
    settings: Settings,
    store: TranscriptStore,
    bus: Bus,
    rooms: RoomRegistry,
    stack: AsyncExitStack,
    metrics: Metrics,
) -> DurableFinals:
    outbox = FinalOutbox(settings.outbox_dir, settings.database_url)
    stack.push_async_callback(outbox.aclose)
    if outbox.depth:
        log.warning("outbox: finals from an earlier run are waiting", depth=outbox.depth)

    async def offline_seed(tenant_id: str, meeting_id: str) -> int:
        pending = await outbox.pending_high(tenant_id, meeting_id)
        return max(pending, rooms.high_water(tenant_id, meeting_id) or 0)

    async def seed(tenant_id: str, meeting_id: str) -> int:
        return await counter_seed(
            lambda: offline_seed(tenant_id, meeting_id),
            lambda: store.last_segment_no(tenant_id, meeting_id, live_path=True),
        )

    numbering: SegmentNumbering
    if settings.redis_url:
        from store.numbering_redis import RedisNumbering

        numbering = RedisNumbering(
            settings.redis_url,
            seed,
            prefix=settings.redis_key_prefix,
            offline_seed=offline_seed,
            numbered_meetings=store.numbered_meetings,
            max_connections=settings.redis_max_connections,
            pool_timeout_s=settings.redis_pool_timeout_s,
        )
    else:
        numbering = LocalNumbering(seed)
    stack.push_async_callback(numbering.aclose)
    await numbering.warm_up()

    async def republish(entry: OutboxEntry, stored: FinalSegment) -> None:
        # Numbering lagged behind the store: raise it first, or the next finals collide too.
        try:
            await numbering.ensure_at_least(entry.tenant_id, entry.meeting_id, stored.segment_no)
        except Exception as exc:
            log.warning("could not raise the meeting's counter", error=type(exc).__name__)
        try:
            async with asyncio.timeout(5):
                topic = transcript_topic(entry.tenant_id, entry.meeting_id)
                await bus.publish(topic, final_message(entry.meeting_id, stored))
        except Exception as exc:
            log.warning("renumbered final not republished", error=type(exc).__name__)
        # Not in the writer's way, and after the stream's own publish of the number.
        detach(correct_taken_number(store, bus, entry), "correct-taken-number")

    writer = OutboxWriter(
        outbox,
        store,
        on_renumbered=republish,
        on_store_write=lambda seconds: metrics.store_write("numbered_final", seconds),
    )
    writer.start()
    stack.push_async_callback(writer.aclose)
    return DurableFinals(numbering, outbox, writer)
