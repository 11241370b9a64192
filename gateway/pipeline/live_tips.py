"""Live tips: one replica follows a meeting's finals on the bus and publishes `ai.tip` messages.

An ingest stream that starts asks for its meeting's tips (`want`), with the backend its
handshake's `ai_mode` picks: `standard` gets the offline rules, `super` the configured backend
(INSIGHTS_BACKEND; INSIGHTS_LIVE=always gives every meeting the configured backend, `off` none).
Every replica with such a stream tries to take the meeting's insights lease (the ingest lease
mechanism, under the role `@insights`, never a valid source name); the one holding it follows the
meeting's transcript topic. Finals on the bus only wake it: each call reads the finals after its
cursor from the store, so a final the bus lost is still covered. The schedule (rate, single
flight, cursor, dedup) is `ingest.insights.live.TipSchedule`; a global semaphore bounds calls in
flight across meetings. A tip is stored (numbered per meeting, store.tips) and then published on
the meeting's transcript topic. A follower lets its meeting go when no stream of it runs here and
no final came for FOLLOW_IDLE_S after its trailing run; another replica's stream then takes over.
No transcript text is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Literal

from fanout.bus import Bus
from fanout.coordinator import Coordinator, IngestLease
from fanout.messages import TipMessage
from fanout.topics import transcript_topic
from gateway.observability.logs import get_logger
from gateway.observability.metrics import Metrics
from ingest.insights.base import FinalLine, Insight, InsightsBackend
from ingest.insights.live import RECENT_TIPS, WINDOW_FINALS, TipSchedule
from shared.tasks import cancel_and_wait
from store.base import TranscriptStore
from store.tips import NewTip, StoredTip, TipStore

log = get_logger("gateway.pipeline.live_tips")

INSIGHTS_ROLE = "@insights"  # the lease's source: `@` is never in a stream's source name
FOLLOW_IDLE_S = 120.0
ACQUIRE_EVERY_S = 2.0  # a replica with a stream retries the lease this often (a holder died)
_FINAL_PREFIX = b'{"type":"transcript.final"'

LiveMode = Literal["handshake", "always", "off"]


class LiveTips:
    def __init__(
        self,
        *,
        bus: Bus,
        coordinator: Coordinator,
        store: TranscriptStore,
        tips: TipStore,
        rules: InsightsBackend,
        configured: InsightsBackend,
        mode: LiveMode,
        min_interval_s: float,
        call_timeout_s: float,
        max_calls: int,
        holder: str,
        metrics: Metrics,
    ) -> None:
        self.bus, self.coordinator, self.store, self.tips = bus, coordinator, store, tips
        self._rules, self._configured = rules, configured
        self._mode = mode
        self.min_interval_s = min_interval_s
        self.call_timeout_s = call_timeout_s
        self.calls = asyncio.Semaphore(max_calls)
        self.holder = holder
        self.metrics = metrics
        self._wanted: dict[tuple[str, str], list[InsightsBackend]] = {}
        # Meetings wanted only until a follower starts: their streams ended before one did.
        self._ending: set[tuple[str, str]] = set()
        # Whether a meeting was deleted lately (services sets MeetingDeletion.is_deleted).
        self.is_deleted: Callable[[str, str], bool] = lambda tenant_id, meeting_id: False
        self._followers: dict[tuple[str, str], _Follower] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def want(self, tenant_id: str, meeting_id: str, ai_mode: str) -> Callable[[], None]:
        """A stream of the meeting runs here: follow its tips. Call the result when it ends."""
        backend = self._backend_for(ai_mode)
        key = (tenant_id, meeting_id)
        if backend is None or self.is_deleted(tenant_id, meeting_id):
            return lambda: None
        if key in self._ending:  # a stream again: wanted by it, not by the one that ended
            self._ending.discard(key)
            self._wanted[key] = []
        self._wanted.setdefault(key, []).append(backend)
        self._wake.set()

        def unwant() -> None:
            backends = self._wanted.get(key, [])
            with contextlib.suppress(ValueError):
                backends.remove(backend)
            if backends:
                return
            if key in self._followers or key in self._ending:
                self._wanted.pop(key, None)
                return
            # Its stream said something and ended before the meeting was followed (streams
            # want tips from their first final on): followed once still, with the backend it
            # asked for, for the tip after its last words.
            self._wanted[key] = [backend]
            self._ending.add(key)
            self._wake.set()

        return unwant

    def forget_meeting(self, tenant_id: str, meeting_id: str) -> None:
        """The meeting was deleted: stop following it now (its lease is released, not renewed:
        a renewal would take the deleted key again); `is_deleted` keeps it from being followed
        again while its tombstone lasts."""
        key = (tenant_id, meeting_id)
        self._wanted.pop(key, None)
        follower = self._followers.get(key)
        if follower is not None:
            follower.cancel()

    def wanted_here(self, key: tuple[str, str]) -> bool:
        return key in self._wanted

    def backend_of(
        self, key: tuple[str, str], used: InsightsBackend | None = None
    ) -> InsightsBackend:
        """The richest backend any of the meeting's streams here asked for, or that its
        follower used (`used`): the last tips after a `super` stream ends are the LLM's too."""
        backends = self._wanted.get(key, [])
        if self._configured in backends or used is self._configured:
            return self._configured
        return self._rules

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._manage(), name="live-tips")

    async def aclose(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        for follower in list(self._followers.values()):
            await follower.stop()

    def _backend_for(self, ai_mode: str) -> InsightsBackend | None:
        if self._mode == "off":
            return None
        if self._mode == "always" or ai_mode == "super":
            return self._configured
        return self._rules

    async def _manage(self) -> None:
        while True:
            for key, follower in list(self._followers.items()):
                if follower.done:
                    del self._followers[key]
            for key in list(self._wanted):
                settled = key in self._followers or await self._try_follow(key)
                if settled and key in self._ending:  # followed now, here or elsewhere: done
                    self._ending.discard(key)
                    self._wanted.pop(key, None)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ACQUIRE_EVERY_S):
                    await self._wake.wait()

    async def _try_follow(self, key: tuple[str, str]) -> bool:
        """Follow the meeting if its lease can be had; whether it is followed now (here or by
        another replica), or was deleted."""
        tenant_id, meeting_id = key
        if self.is_deleted(tenant_id, meeting_id):
            self._wanted.pop(key, None)
            self._ending.discard(key)
            return True
        try:
            lease = await self.coordinator.acquire_ingest(
                tenant_id, meeting_id, INSIGHTS_ROLE, self.holder
            )
        except Exception as exc:  # the coordinator is unreachable: next round
            log.warning("insights lease not taken", error=type(exc).__name__)
            return False
        if lease is None:
            return True  # another replica produces this meeting's tips
        follower = _Follower(self, key, lease)
        follower.backend = self.backend_of(key)  # kept once no stream wants it any more
        self._followers[key] = follower
        follower.start()
        return True


class _Follower:
    """This replica produces one meeting's tips while it holds the lease."""

    def __init__(self, owner: LiveTips, key: tuple[str, str], lease: IngestLease) -> None:
        self.owner, self.key, self.lease = owner, key, lease
        self.schedule = TipSchedule(owner.min_interval_s)
        self.backend: InsightsBackend | None = None  # the last call's
        self.done = False
        self._woken = asyncio.Event()
        self._last_final_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tips")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    def cancel(self) -> None:
        """Stop soon (its `finally` releases the lease); `done` tells when it has."""
        if self._task is not None:
            self._task.cancel()

    def _on_message(self, data: bytes) -> None:
        if not data.startswith(_FINAL_PREFIX):
            return
        try:
            number = json.loads(data).get("segment_no")
        except ValueError:
            return
        if isinstance(number, int):
            self.schedule.on_final(number)
            self._last_final_at = time.monotonic()
            self._woken.set()

    async def _run(self) -> None:
        tenant_id, meeting_id = self.key
        owner = self.owner
        subscription = None
        try:
            subscription = await owner.bus.subscribe(
                transcript_topic(tenant_id, meeting_id), self._on_message
            )
            # Start where stored tips end; finals said before this replica followed count too.
            self.schedule.cursor = await owner.tips.covered_through(tenant_id, meeting_id)
            self.schedule.on_final(await owner.store.last_segment_no(tenant_id, meeting_id))
            log.info("following tips", meeting_id=meeting_id)
            while not self.lease.lost.is_set():
                due = self.schedule.next_run_at()
                now = time.monotonic()
                if due is None and self._idle(now):
                    break
                if due is not None and due <= now:
                    self.backend = owner.backend_of(self.key, self.backend)
                    await self._call(self.backend)
                    continue
                wait_s = FOLLOW_IDLE_S if due is None else due - now
                self._woken.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(wait_s, FOLLOW_IDLE_S)):
                        await self._woken.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store or bus is away: the next stream start retries
            log.warning("tips stopped", meeting_id=meeting_id, error=type(exc).__name__)
        finally:
            self.done = True
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.cancel()
            with contextlib.suppress(Exception):
                await self.lease.release()

    def _idle(self, now: float) -> bool:
        return not self.owner.wanted_here(self.key) and now - self._last_final_at > FOLLOW_IDLE_S

    async def _call(self, backend: InsightsBackend) -> None:
        owner, schedule = self.owner, self.schedule
        tenant_id, meeting_id = self.key
        call = schedule.start(time.monotonic())
        if call is None:
            return
        try:
            async with owner.calls:
                async with asyncio.timeout(owner.call_timeout_s):
                    finals = await owner.store.finals_after(
                        tenant_id, meeting_id, call.after, limit=WINDOW_FINALS
                    )
                    window = [
                        FinalLine(f.segment_no, f.text, f.start_ms / 1000, f.speaker, f.source)
                        for f in finals
                    ]
                    # The stored ones: a tip a correction withdrew leaves the backend's context.
                    schedule.recent.clear()
                    for stored in await owner.tips.latest(tenant_id, meeting_id, RECENT_TIPS):
                        schedule.recent.append(_insight(stored))
                    items = await backend.tips(window, list(schedule.recent), "auto")
        except Exception as exc:  # unavailable, timed out, the store away: the next run retries
            schedule.supersede(call, time.monotonic())
            result = "timeout" if isinstance(exc, TimeoutError) else "unavailable"
            owner.metrics.insights_call(backend.name, "tips", result)
            log.warning("tip call failed", meeting_id=meeting_id, error=type(exc).__name__)
            return
        owner.metrics.insights_call(backend.name, "tips", "ok")
        tip = schedule.finish(call, [line.segment_no for line in window], items)
        if tip is not None:
            try:
                await self._publish(tip, backend.name, {f.segment_no: f.text for f in window})
            except Exception as exc:  # the store went away: this tip is lost, the rest go on
                log.warning("tip not stored", meeting_id=meeting_id, error=type(exc).__name__)

    async def _publish(self, tip: Insight, backend: str, made_from: dict[int, str]) -> None:
        tenant_id, meeting_id = self.key
        owner = self.owner
        if not await owner.store.meeting_exists(tenant_id, meeting_id):
            return  # deleted meanwhile: nothing more of it may be written
        new = NewTip(tip.kind, tip.text, tip.segment_nos, tip.owner, tip.due)
        stored = await owner.tips.add(tenant_id, meeting_id, new, backend, made_from=made_from)
        if stored is None:
            log.debug("tip dropped: a final it cites was corrected", meeting_id=meeting_id)
            return
        owner.metrics.tip_published(tip.kind)
        with contextlib.suppress(Exception):  # stored: a viewer resuming with since= gets it
            await owner.bus.publish(
                transcript_topic(tenant_id, meeting_id), tip_message(meeting_id, stored).encode()
            )


def tip_message(meeting_id: str, tip: StoredTip) -> TipMessage:
    return TipMessage(
        meeting_id=meeting_id,
        tip_no=tip.tip_no,
        kind=tip.kind,  # type: ignore[arg-type]
        text=tip.text,
        owner=tip.owner,
        due=tip.due,
        segment_nos=list(tip.segment_nos),
        ts=tip.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )


def _insight(tip: StoredTip) -> Insight:
    return Insight(tip.kind, tip.text, tip.segment_nos, tip.owner, tip.due)  # type: ignore[arg-type]
