"""Watches meetings' streams and moves their lifecycle (store.meeting_lifecycle): every replica
runs the loop; the compare-and-set in the store raises each meeting.started and meeting.ended
once, with its webhook deliveries enqueued in the same transaction."""

from __future__ import annotations

import asyncio

from gateway.observability.logs import get_logger
from shared.outage_log import OutageLog
from store.meeting_lifecycle import MeetingLifecycle

log = get_logger("gateway.pipeline.meeting_lifecycle")


def watch_interval_s(idle_s: float) -> float:
    """Often enough that meeting.ended comes within a quarter of MEETING_IDLE_S of its time."""
    return max(0.5, min(5.0, idle_s / 4))


async def watch_lifecycle(lifecycle: MeetingLifecycle, *, idle_s: float) -> None:
    every_s = watch_interval_s(idle_s)
    outage = OutageLog(log, "meeting lifecycle rounds failing")
    while True:
        try:
            for event in await lifecycle.mark_started(idle_s) + await lifecycle.mark_ended(idle_s):
                log.info(event.type, tenant=event.tenant_id, meeting_id=event.meeting_id)
        except Exception as exc:  # a database outage: the next round sees the same state
            outage.failed(exc)
        else:
            outage.succeeded()
        await asyncio.sleep(every_s)
