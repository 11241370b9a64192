"""Everything a request handler needs, built once per process in the application's lifespan."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from fanout.bus import Bus
from fanout.bus_memory import InProcessBus
from fanout.coordinator import Coordinator
from fanout.coordinator_local import LocalCoordinator
from fanout.rooms import RoomRegistry
from fanout.topics import status_topic, transcript_topic
from gateway.auth import KeyRing, TokenVerifier
from gateway.config import Settings
from gateway.engines import EngineChain
from gateway.http.cursors import CursorSeal
from gateway.http.job_watch import JobWatch
from gateway.http.tenant_slots import TenantSlots
from gateway.http.uploads_in_flight import UploadsInFlight
from gateway.insights import insights_backend
from gateway.observability.logs import get_logger
from gateway.observability.metrics import Metrics
from gateway.pipeline.durable_finals import DurableFinals, open_durable_finals
from gateway.pipeline.forget_deleted import ForgetDeleted
from gateway.pipeline.gap_repair import GapRepair
from gateway.pipeline.live_tips import LiveTips
from gateway.pipeline.meeting_deletion import MeetingDeletion
from gateway.pipeline.meeting_lifecycle import watch_lifecycle
from gateway.pipeline.notes import NOTES_DEADLINE_S, NotesPreviews, NotesWorker
from gateway.pipeline.retention import run_retention
from gateway.pipeline.stream_row import StreamRowRefresher
from gateway.shutdown_budget import lifespan_shutdown_s
from gateway.webhooks.endpoints_file import load_endpoints_file
from gateway.webhooks.sender import WebhookSender
from gateway.webhooks.worker import WebhookWorker
from gateway.ws.live import ConnectionRegistry
from ingest.insights.base import InsightsBackend
from ingest.insights.rules import RulesInsights
from shared.tasks import cancel_and_wait
from store.base import STREAM_FRESH_WITHIN_S, STREAM_REFRESH_EVERY_S, TranscriptStore
from store.catalog import MeetingCatalog
from store.catalog_sql import SqlMeetingCatalog
from store.deletion_log import DeletionLog
from store.errors import DATABASE_UNREACHABLE
from store.jobs import Job, JobStore
from store.meeting_lifecycle import MeetingLifecycle
from store.migrate import open_store
from store.notes import NotesStore
from store.server_secrets import server_secret
from store.sql import SqlTranscriptStore
from store.tips import TipStore
from store.webhooks import WebhookStore

if TYPE_CHECKING:
    from gateway.pipeline.recordings import RecordingRunner


log = get_logger("gateway.services")


class LiveIngest(Protocol):
    """An ingest stream running on this replica, as the stats endpoints read it."""

    stream_id: str
    tenant_id: str
    meeting_id: str
    frames: int
    engine: str | None  # serving now: after a failover, not the one the stream opened with

    @property
    def audio_ms(self) -> int: ...


@dataclass
class Services:
    settings: Settings
    verifier: TokenVerifier
    store: TranscriptStore
    bus: Bus
    coordinator: Coordinator
    rooms: RoomRegistry
    engines: EngineChain
    finals: DurableFinals
    catalog: MeetingCatalog
    deletions: MeetingDeletion
    # Refreshes every live ingest stream's row at once (gateway/pipeline/stream_row.py).
    stream_rows: StreamRowRefresher
    metrics: Metrics = field(default_factory=Metrics)
    replica_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    live_ingests: dict[str, LiveIngest] = field(default_factory=dict)
    # Open connections that a token expiry or a drain can end (gateway/ws/live.py).
    connections: ConnectionRegistry = field(default_factory=ConnectionRegistry)
    # Set during a graceful drain (gateway/drain.py): /readyz 503, new connections 1012.
    draining: bool = False
    # Recordings (issue 15): durable jobs on the store's database and this replica's runner
    # (started by the app's lifespan, gateway/pipeline/recordings.py).
    jobs: JobStore | None = None
    recordings: RecordingRunner | None = None
    uploads: UploadsInFlight = field(default_factory=UploadsInFlight)  # being received here
    exports: TenantSlots = field(default_factory=TenantSlots)  # whole transcripts streaming
    searches: TenantSlots = field(default_factory=TenantSlots)  # searches running
    viewers: TenantSlots = field(default_factory=TenantSlots)  # viewer connections, per tenant
    job_watch: JobWatch[Job] | None = None  # one poll of a job for its event streams
    # Webhook endpoints and their delivery log (gateway/http/webhooks.py).
    webhooks: WebhookStore | None = None
    # Insights (INSIGHTS_BACKEND) and the stored post-meeting notes (gateway/pipeline/notes.py).
    insights: InsightsBackend = field(default_factory=RulesInsights)
    notes: NotesStore | None = None
    notes_previews: NotesPreviews = field(default_factory=NotesPreviews)
    live_tips: LiveTips | None = None
    # Seals page cursors (gateway/http/cursors.py); keyed from the database at first use.
    cursors: CursorSeal | None = None


async def build_services(settings: Settings, stack: AsyncExitStack) -> Services:
    """Connect everything; `stack` closes it all in reverse order at shutdown."""
    verifier = TokenVerifier(
        KeyRing(settings.jwt_public_key_path, reload_interval_s=settings.key_reload_s),
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        leeway_s=settings.jwt_leeway_s,
    )
    metrics = Metrics()
    engines = EngineChain.from_settings(settings, metrics)
    stack.push_async_callback(engines.aclose)
    await engines.warm_up()

    store = await open_store(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        # A restart during a database outage keeps serving live traffic (finals wait on disk).
        start_unreachable=True,
    )
    stack.push_async_callback(store.aclose)

    replica_id = uuid.uuid4().hex[:12]
    bus: Bus
    coordinator: Coordinator
    if settings.redis_url:
        from fanout.bus_redis import RedisBus
        from fanout.coordinator_redis import RedisCoordinator

        bus = RedisBus(
            settings.redis_url,
            prefix=settings.redis_key_prefix,
            # Named so ops (and tests) can find this replica's subscription in CLIENT LIST.
            client_name=f"meeting-gateway:{replica_id}:bus",
            max_connections=settings.redis_max_connections,
            pool_timeout_s=settings.redis_pool_timeout_s,
        )
        # Members of a crashed replica stop counting against the cap within 10 s.
        coordinator = RedisCoordinator(
            settings.redis_url,
            prefix=settings.redis_key_prefix,
            member_ttl_s=10.0,
            max_connections=settings.redis_max_connections,
            pool_timeout_s=settings.redis_pool_timeout_s,
        )
    else:
        bus, coordinator = InProcessBus(), LocalCoordinator()
    await bus.start()
    stack.push_async_callback(bus.aclose)
    await coordinator.start()
    stack.push_async_callback(coordinator.aclose)

    rooms = RoomRegistry(bus, on_publication=metrics.publication_delivered)
    finals = await open_durable_finals(settings, store, bus, rooms, stack, metrics)
    catalog = SqlMeetingCatalog(store.engine)
    connections = ConnectionRegistry()

    async def forget_keys(tenant_id: str, meeting_id: str) -> bool:
        await finals.numbering.forget(tenant_id, meeting_id)
        await coordinator.forget_meeting(tenant_id, meeting_id)
        await bus.forget(status_topic(tenant_id, meeting_id))
        await bus.forget(transcript_topic(tenant_id, meeting_id))
        return True

    jobs = JobStore(store.engine)
    lifecycle = MeetingLifecycle(store.engine, fresh_within_s=STREAM_FRESH_WITHIN_S)
    forgetting = ForgetDeleted(catalog.forget_deleted)
    stack.push_async_callback(forgetting.aclose)

    async def delete_rows(tenant_id: str, meeting_id: str, announce: bool) -> bool:
        """The meeting's rows, and its recordings: jobs deleted with it, uploaded files removed.
        Not cancelled first: a job's event stream and its runner, polling between the cancel and
        the deletion, ended it as cancelled rather than deleted (its runner stops within a watch
        round of the row's going, and says why)."""
        if announce:  # a stream the lifecycle watch has not seen yet: meeting.started first
            await lifecycle.mark_started(settings.meeting_idle_s, meeting=(tenant_id, meeting_id))
        files = []
        if jobs is not None:
            files = [
                Path(job.file_path) for job in await jobs.list_for_meeting(tenant_id, meeting_id)
            ]
        deleted = await catalog.delete_meeting(tenant_id, meeting_id, announce=announce)
        if deleted:
            forgetting.request()
        for file in files:
            await asyncio.to_thread(file.unlink, missing_ok=True)
        return deleted or bool(files)

    deletions = MeetingDeletion(
        bus, connections, delete_rows, forget_keys, deletion_log=DeletionLog(store.engine)
    )
    await deletions.start()
    stack.push_async_callback(deletions.aclose)
    if settings.transcript_retention_days is not None:
        retention = asyncio.get_running_loop().create_task(
            run_retention(
                catalog,
                deletions,
                days=settings.transcript_retention_days,
                interval_s=settings.retention_interval_s,
            )
        )
        stack.push_async_callback(cancel_and_wait, retention)
    webhooks = await start_webhooks(settings, store, metrics, replica_id, stack, lifecycle)
    insights, notes, live_tips = start_insights(
        settings, store, catalog, bus, coordinator, metrics, replica_id, stack
    )
    live_tips.is_deleted = deletions.is_deleted
    deletions.on_deleted(live_tips.forget_meeting)
    deletions.on_deleted(finals.numbering.forget_seen)
    deletions.on_deleted(finals.outbox.forget_meeting)
    stream_rows = StreamRowRefresher(store, STREAM_REFRESH_EVERY_S)
    services = Services(
        settings=settings,
        verifier=verifier,
        store=store,
        bus=bus,
        coordinator=coordinator,
        rooms=rooms,
        engines=engines,
        finals=finals,
        catalog=catalog,
        deletions=deletions,
        connections=connections,
        metrics=metrics,
        replica_id=replica_id,
        jobs=jobs,
        job_watch=JobWatch(jobs.get),
        webhooks=webhooks,
        insights=insights,
        notes=notes,
        live_tips=live_tips,
        stream_rows=stream_rows,
        cursors=CursorSeal(lambda: server_secret(store.engine, "cursor")),
    )
    refresher = asyncio.get_running_loop().create_task(stream_rows.run())
    stack.push_async_callback(cancel_and_wait, refresher)
    # Finals lost to a bus gap or a failed publish are refilled from the store, up to the
    # meeting's counter (the highest number handed out).
    bus.add_gap_listener(GapRepair(rooms, store, metrics, finals.numbering.current, bus.recent))
    return services


async def start_webhooks(
    settings: Settings,
    store: SqlTranscriptStore,
    metrics: Metrics,
    replica_id: str,
    stack: AsyncExitStack,
    lifecycle: MeetingLifecycle,
) -> WebhookStore:
    """WEBHOOKS_FILE's endpoints in the store, the delivery worker, the lifecycle watcher."""
    webhooks = WebhookStore(store.engine)
    if settings.webhooks_file is not None:
        # A bad file stops the start; a database outage does not (written once it answers).
        endpoints = load_endpoints_file(
            settings.webhooks_file, allow_private=settings.webhooks_allow_private
        )

        async def sync_file() -> None:
            dropped = await webhooks.replace_file_endpoints(endpoints)
            for endpoint_id, count in dropped.items():
                log.warning(
                    "WEBHOOKS_FILE endpoint removed with undelivered events (a changed url is "
                    "another endpoint)",
                    endpoint=endpoint_id,
                    undelivered=count,
                )

        try:
            await sync_file()
        except DATABASE_UNREACHABLE as exc:
            log.warning(
                "WEBHOOKS_FILE endpoints deferred: database unreachable", error=type(exc).__name__
            )
            syncing = asyncio.get_running_loop().create_task(_until_done(sync_file))
            stack.push_async_callback(cancel_and_wait, syncing)
    sender = WebhookSender(
        timeout_s=settings.webhooks_timeout_s,
        allow_private=settings.webhooks_allow_private,
        ca_file=settings.webhooks_ca_file,
    )
    worker = WebhookWorker(
        webhooks,
        sender,
        metrics,
        owner=replica_id,
        timeout_s=settings.webhooks_timeout_s,
        poll_s=settings.webhooks_poll_s,
        retry_base_s=settings.webhooks_retry_base_s,
        retry_max_s=settings.webhooks_retry_max_s,
        max_age_s=settings.webhooks_max_age_s,
        log_retention_s=settings.webhooks_log_retention_days * 86400,
    )
    worker.start()
    stack.push_async_callback(worker.aclose, lifespan_shutdown_s(settings.drain_timeout_s))
    watcher = asyncio.get_running_loop().create_task(
        watch_lifecycle(lifecycle, idle_s=settings.meeting_idle_s)
    )
    stack.push_async_callback(cancel_and_wait, watcher)
    return webhooks


def start_insights(
    settings: Settings,
    store: SqlTranscriptStore,
    catalog: MeetingCatalog,
    bus: Bus,
    coordinator: Coordinator,
    metrics: Metrics,
    replica_id: str,
    stack: AsyncExitStack,
) -> tuple[InsightsBackend, NotesStore, LiveTips]:
    """The insights backend (INSIGHTS_BACKEND), the notes worker, the live tips worker."""
    insights = insights_backend(settings)
    stack.push_async_callback(insights.aclose)
    notes = NotesStore(store.engine)
    notes_worker = NotesWorker(
        notes,
        store,
        catalog,
        insights,
        bus,
        metrics,
        owner=replica_id,
        deadline_s=NOTES_DEADLINE_S,
        poll_s=settings.notes_poll_s,
        max_attempts=settings.notes_max_attempts,
        concurrency=settings.notes_concurrency,
    )
    notes_worker.start()
    stack.push_async_callback(notes_worker.aclose)
    live_tips = LiveTips(
        bus=bus,
        coordinator=coordinator,
        store=store,
        tips=TipStore(store.engine),
        rules=RulesInsights(),
        configured=insights,
        mode=settings.insights_live,
        min_interval_s=settings.insights_min_interval_s,
        # Both of the llm backend's attempts, a 429's Retry-After between them (at most one
        # attempt's time), and the store read.
        call_timeout_s=3 * settings.insights_llm_timeout_s + 5,
        max_calls=settings.insights_max_calls,
        holder=replica_id,
        metrics=metrics,
    )
    live_tips.start()
    stack.push_async_callback(live_tips.aclose)
    return insights, notes, live_tips


async def _until_done(write: Callable[[], Awaitable[None]], every_s: float = 5.0) -> None:
    while True:
        try:
            return await write()
        except Exception:
            await asyncio.sleep(every_s)
