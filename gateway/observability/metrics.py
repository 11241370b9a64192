"""Every counter the gateway keeps, in one place: exported on `/metrics`, read by the stats
endpoints.

Names are prefixed `meeting_gateway_`. Figures about a tenant's activity carry a `tenant` label so
`/api/v1/ws/stats` can show an ops token only its own tenant's figures; engine, latency and
outbox figures are replica-wide. With `serve --workers N` the CLI points PROMETHEUS_MULTIPROC_DIR
at a fresh directory before the workers start; every worker then writes its values there and
`/metrics` (and the stats endpoint) add them up, so any worker answers for the whole replica.

The code that counts receives this object (`services.metrics`) and calls one method per event;
nothing else in the code base creates a Prometheus metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from fanout.publication import Kind, Publication
from gateway.close_codes import close_label
from shared.tasks import cancel_and_wait

PREFIX = "meeting_gateway_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The WebSocket scope key under which a connection's tenant is kept once authenticated, so
# protocol-level events (heartbeat drops) can be attributed to it.
SCOPE_TENANT = "meeting_gateway.tenant"
# ... and the tenant of a token whose signature held, before the connection opened: a refusal
# for its role or meeting (4403) is counted for that tenant.
SCOPE_TOKEN_TENANT = "meeting_gateway.token_tenant"

# Seconds: engine latencies span tens of milliseconds to several seconds.
ENGINE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
# Seconds: in-process hops (bus publish, socket write, store write).
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

_MESSAGE_TYPE_PREFIX = b'{"type":"'
_TS_FIELD = b'"ts":"'  # every envelope's publish time, e.g. "2026-11-21T10:15:03.120Z"


def message_type(data: bytes) -> str:
    """The `type` of an encoded wire message (always its first field), without parsing it."""
    if not data.startswith(_MESSAGE_TYPE_PREFIX):
        return "unknown"
    start = len(_MESSAGE_TYPE_PREFIX)
    end = data.find(b'"', start)
    return data[start:end].decode("ascii", "replace") if end > 0 else "unknown"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


# Recording jobs' stages and queue waits: seconds to hours.
JOB_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)


class IngestCounts:
    """An ingest stream's per-frame counters. The stream tallies its messages and frames in
    plain ints (`IngestRules`); `sync` adds what is new to the label children bound here once,
    every second and at the stream's end, instead of two locked increments per frame."""

    __slots__ = ("_frames", "_messages", "_synced")

    def __init__(self, messages: Any, frames: Any) -> None:
        self._messages = messages  # messages_received{role="ingest",tenant}
        self._frames = frames  # audio_frames{tenant}
        self._synced = (0, 0)

    def sync(self, messages: int, frames: int) -> None:
        """Bring the counters up to the stream's tallies so far."""
        synced_messages, synced_frames = self._synced
        if messages > synced_messages:
            self._messages.inc(messages - synced_messages)
        if frames > synced_frames:
            self._frames.inc(frames - synced_frames)
        self._synced = (messages, frames)


class Metrics:
    """This process's metrics. Create one per application (it owns its registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.started_at = time.time()
        self._started_monotonic = time.monotonic()
        # Connections per (tenant, meeting) on this process: a meeting is active while it has one.
        self._meeting_connections: Tally[tuple[str, str]] = Tally()
        # Messages this process wrote to viewer sockets: a drain waits for it to stop moving.
        self.deliveries = 0
        # Deliveries and coalesced partials counted as plain ints on the hot path (one per viewer
        # per message) and folded into the Prometheus counters by `flush_deliveries`.
        self._delivered: Tally[tuple[str, str]] = Tally()  # (type, tenant)
        self._coalesced: Tally[str] = Tally()  # tenant
        self._writes: Tally[str] = Tally()  # path: direct, queued
        self._queues_closed: Tally[str] = Tally()  # reason: overflow, stall
        r = self.registry
        # The process's memory, CPU and open files (`meeting_gateway_process_*`): one process's
        # own; with `serve --workers`, whose workers share one exposition, they are left out.
        if multiprocess_dir() is None:
            ProcessCollector(namespace=PREFIX.rstrip("_"), registry=r)

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(PREFIX + name, doc, list(labels), registry=r)

        def gauge(name: str, doc: str, labels: Iterable[str] = (), mode: str = "livesum") -> Gauge:
            # `mode`: how `serve --workers N` combines the live workers' values.
            return Gauge(PREFIX + name, doc, list(labels), registry=r, multiprocess_mode=mode)

        def histogram(name: str, doc: str, labels: Iterable[str], buckets: Any) -> Histogram:
            return Histogram(PREFIX + name, doc, list(labels), registry=r, buckets=buckets)

        # Connections and sessions.
        self.connections = gauge("connections", "Open WebSocket connections", ["role", "tenant"])
        self.connections_opened = counter(
            "connections_opened", "WebSocket connections accepted", ["role", "tenant"]
        )
        self.disconnects = counter(
            "disconnects", "WebSocket connections ended, by close code", ["role", "code", "tenant"]
        )
        self.active_meetings = gauge(
            "active_meetings", "Meetings with a connection (ingest or viewer) here", ["tenant"]
        )
        self.ingest_streams = gauge("ingest_streams", "Ingest streams running here", ["tenant"])
        self.auth_failures = counter(
            "auth_failures", "Requests refused by authentication or authorization", ["reason"]
        )
        self.rate_limited = counter(
            "rate_limit_rejections",
            "Connections closed or refused by a rate or size limit",
            ["limit", "tenant"],
        )
        self.heartbeat_timeouts = counter(
            "heartbeat_timeouts", "WebSocket peers dropped for not answering pings", ["tenant"]
        )
        # Messages.
        self.messages_received = counter(
            "messages_received", "WebSocket messages received from clients", ["role", "tenant"]
        )
        self.audio_frames = counter("audio_frames", "PCM frames received", ["tenant"])
        self.messages_published = counter(
            "messages_published", "Messages published on the bus, by type", ["type", "tenant"]
        )
        self.publish_failures = counter(
            "publish_failures", "Failed publish attempts (each retry counts)", ["tenant"]
        )
        # fanout.delivery's process-wide write tallies (plain ints on the hot path), folded in
        # by `flush_deliveries`: which path wrote to viewers, and queues closed and why.
        self.viewer_writes = counter(
            "viewer_writes", "Messages written to viewer sockets, by path", ["path"]
        )
        self.viewer_queues_closed = counter(
            "viewer_queues_closed", "Viewer queues closed (4408), by reason", ["reason"]
        )
        self.messages_delivered = counter(
            "messages_delivered", "Messages written to viewer sockets, by type", ["type", "tenant"]
        )
        self.finals_replayed = counter(
            "finals_replayed", "Finals re-delivered from the store after a bus gap", ["tenant"]
        )
        self.partials_coalesced = counter(
            "partials_coalesced", "Partials replaced by a newer one before being sent", ["tenant"]
        )
        self.finals_not_kept = counter(
            "finals_not_kept",
            "Finals given up: neither numbered nor stored within STORE_RETRY_S (closed 4503)",
            ["tenant"],
        )
        # Engines.
        self.engine_stream_opens = counter(
            "engine_stream_opens", "Engine streams opened", ["engine"]
        )
        self.engine_stream_failures = counter(
            "engine_stream_failures",
            "Engine streams that failed to open or broke, by reason",
            ["engine", "reason"],
        )
        self.engine_failovers = counter(
            "engine_failovers",
            "Streams moved to the next engine of the chain",
            ["from_engine", "to_engine"],
        )
        self.engine_rotations = counter(
            "engine_rotations", "Engine streams replaced before a vendor time limit", ["engine"]
        )
        self.engine_first_partial = histogram(
            "engine_first_partial_seconds",
            "Audio received to the engine's first partial of an utterance",
            ["engine"],
            ENGINE_BUCKETS,
        )
        self.engine_final = histogram(
            "engine_final_seconds",
            "End of an utterance's audio to its final",
            ["engine"],
            ENGINE_BUCKETS,
        )
        self.audio_seconds = counter(
            "audio_seconds", "Seconds of audio ingested", ["engine", "language"]
        )
        # Delivery and storage.
        self.delivery_latency = histogram(
            "delivery_seconds", "Bus publish to viewer socket write", [], FAST_BUCKETS
        )
        self.store_write_latency = histogram(
            "store_write_seconds", "Transcript store writes", ["operation"], FAST_BUCKETS
        )
        self.bus_publish_latency = histogram(
            "bus_publish_seconds", "Bus publish calls", [], FAST_BUCKETS
        )
        # As the replica sees them now: `engine_breaker_open` as of the scrape, `dependency_up`
        # as of the last readiness check (/readyz*: probe one, as Kubernetes does).
        self.engine_breaker_open = gauge(
            "engine_breaker_open",
            "1 from the engine's breaker tripping until a stream works on it again",
            ["engine"],
            mode="livemax",
        )
        # The latest check's, whichever worker made it (`serve --workers N`).
        self.dependency_up = gauge(
            "dependency_up",
            "1 when the dependency answered the last readiness check (database, bus, outbox)",
            ["dependency"],
            mode="livemostrecent",
        )
        self.outbox_depth = gauge("outbox_depth", "Numbered finals on disk waiting for the store")
        self.outbox_oldest_age = gauge(
            "outbox_oldest_age_seconds",
            "How long the oldest final in the outbox has waited for the database",
            mode="livemax",
        )
        self.outbox_unwritable = gauge(
            "outbox_unwritable",
            "Finals the database refused for their values, set aside in the outbox file",
        )
        # Recordings (gateway/pipeline/recordings.py).
        self.recording_jobs = counter(
            "recording_jobs", "Recording jobs reaching a state, by state", ["state"]
        )
        self.recording_jobs_running = gauge(
            "recording_jobs_running", "Recording jobs running on this replica"
        )
        self.recording_stage = histogram(
            "recording_stage_seconds",
            "Time a recording job spent in a stage",
            ["stage"],
            JOB_BUCKETS,
        )
        self.recording_audio_seconds = counter(
            "recording_audio_seconds", "Seconds of recorded audio transcribed", ["engine"]
        )
        self.recording_queue_wait = histogram(
            "recording_queue_wait_seconds",
            "Upload to first claim of a recording job",
            [],
            JOB_BUCKETS,
        )
        self.recording_failures = counter(
            "recording_failures", "Recording jobs failed, by reason", ["reason"]
        )
        self.recording_vendor_retries = counter(
            "recording_vendor_retries",
            "Vendor batch requests of recordings tried again, by engine and reason",
            ["engine", "reason"],
        )
        # Webhooks (gateway/webhooks/worker.py): delivered, retry (failed, tried again), failed.
        self.webhook_attempts = counter(
            "webhook_attempts",
            "Webhook delivery attempts, by event and result",
            ["event", "result"],
        )
        # Insights (gateway/pipeline/live_tips.py, notes.py): backend calls by what they were
        # for (tips, notes) and result (ok, unavailable, timeout); tips published by kind.
        self.insights_calls = counter(
            "insights_calls",
            "Insights backend calls, by backend, purpose and result",
            ["backend", "purpose", "result"],
        )
        self.tips_published = counter(
            "tips_published", "Live tips (ai.tip) stored and published, by kind", ["kind"]
        )

    # -- connections ---------------------------------------------------------------------------

    def connection_opened(self, role: str, tenant: str, meeting: str) -> None:
        """An authenticated connection of `role` started serving `meeting`."""
        self.connections.labels(role, tenant).inc()
        self.connections_opened.labels(role, tenant).inc()
        key = (tenant, meeting)
        self._meeting_connections[key] += 1
        if self._meeting_connections[key] == 1:
            self.active_meetings.labels(tenant).inc()

    def connection_closed(self, role: str, tenant: str, meeting: str, code: int) -> None:
        """The end of a connection `connection_opened` counted."""
        self.connections.labels(role, tenant).dec()
        self.disconnects.labels(role, close_label(code), tenant).inc()
        key = (tenant, meeting)
        self._meeting_connections[key] -= 1
        if self._meeting_connections[key] <= 0:
            del self._meeting_connections[key]
            self.active_meetings.labels(tenant).dec()

    def connection_refused(self, role: str, code: int, tenant: str = "") -> None:
        """A connection closed before it opened: `tenant` the one its verified token names, ""
        when none verified."""
        self.disconnects.labels(role, close_label(code), tenant).inc()

    def auth_failed(self, reason: str) -> None:
        """`reason`: unauthorized (no or bad token) or forbidden (role, meeting or tenant)."""
        self.auth_failures.labels(reason).inc()

    def limit_hit(self, limit: str, tenant: str) -> None:
        """`limit`: ingest_frames, subscriber_messages, meeting_subscribers, tenant_subscribers,
        engine_tenant_share, recording_queue, recording_uploads, exports, notes_previews or
        searches."""
        self.rate_limited.labels(limit, tenant).inc()

    def heartbeat_timeout(self, scope: Mapping[str, Any]) -> None:
        """A peer dropped by the WebSocket keepalive (gateway.server.heartbeat listener)."""
        self.heartbeat_timeouts.labels(str(scope.get(SCOPE_TENANT, ""))).inc()

    def ingest_stream_started(self, tenant: str) -> None:
        self.ingest_streams.labels(tenant).inc()

    def ingest_stream_ended(self, tenant: str) -> None:
        self.ingest_streams.labels(tenant).dec()

    # -- messages ------------------------------------------------------------------------------

    def message_received(self, role: str, tenant: str) -> None:
        self.messages_received.labels(role, tenant).inc()

    def ingest_counts(self, tenant: str) -> IngestCounts:
        """One ingest stream's message and frame counters, their labels looked up once."""
        return IngestCounts(
            self.messages_received.labels("ingest", tenant), self.audio_frames.labels(tenant)
        )

    def published(self, kind: str, tenant: str, seconds: float) -> None:
        """A message of type `kind` published on the bus; `seconds` the publish call took."""
        self.messages_published.labels(kind, tenant).inc()
        self.bus_publish_latency.observe(seconds)

    def publish_failed(self, tenant: str) -> None:
        self.publish_failures.labels(tenant).inc()

    def delivery_counter(self, tenant: str) -> TenantDeliveries:
        """What one viewer's outbox tells of its deliveries (fanout.delivery.DeliveryCounter)."""
        return TenantDeliveries(self, tenant)

    def flush_deliveries(self) -> None:
        """Fold the hot path's tallies into the Prometheus counters (at every scrape or stats
        read, and once a second from the application's lifespan for other workers' scrapes)."""
        writes, self._writes = self._writes, Tally()
        for path, n in writes.items():
            self.viewer_writes.labels(path).inc(n)
        closed, self._queues_closed = self._queues_closed, Tally()
        for reason, n in closed.items():
            self.viewer_queues_closed.labels(reason).inc(n)
        delivered, self._delivered = self._delivered, Tally()
        for (kind, tenant), n in delivered.items():
            self.messages_delivered.labels(kind, tenant).inc(n)
        coalesced, self._coalesced = self._coalesced, Tally()
        for tenant, n in coalesced.items():
            self.partials_coalesced.labels(tenant).inc(n)

    def publication_delivered(self, tenant: str, pub: Publication, sent: int, live: bool) -> None:
        """A room handed a message to its viewers and wrote it to `sent` idle sockets at once
        (fanout.rooms.Observer): count those, and for a live bus message observe the time since
        its publisher stamped it (`ts`, wall clock, any replica)."""
        if sent:
            self.deliveries += sent
            self._writes["direct"] += sent
            self._delivered[(_delivered_type(pub), tenant)] += sent
        if not live:
            return
        start = pub.data.find(_TS_FIELD)
        if start < 0:
            return
        start += len(_TS_FIELD)
        try:
            stamped = datetime.fromisoformat(pub.data[start : start + 24].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return
        self.delivery_latency.observe(max(0.0, time.time() - stamped.timestamp()))

    @contextlib.asynccontextmanager
    async def flushing(
        self, every_s: float = 1.0, refresh: Callable[[], None] | None = None
    ) -> AsyncIterator[None]:
        """With `--workers N` a scrape reads every worker's files: keep this worker's current
        (its deliveries, and what `refresh` sets, such as its outbox gauges: a scrape answered
        by another worker would otherwise read this one's values as of its last scrape)."""
        task: asyncio.Task[None] | None = None
        if multiprocess_dir() is not None:

            async def flush_every() -> None:
                while True:
                    await asyncio.sleep(every_s)
                    self.flush_deliveries()
                    if refresh is not None:
                        refresh()

            task = asyncio.create_task(flush_every(), name="metrics-flush")
        try:
            yield
        finally:
            if task is not None:
                await cancel_and_wait(task)
            self.flush_deliveries()

    def final_not_kept(self, tenant: str) -> None:
        self.finals_not_kept.labels(tenant).inc()

    def replayed(self, tenant: str, finals: int) -> None:
        self.finals_replayed.labels(tenant).inc(finals)

    def coalesced(self, tenant: str, partials: int = 1) -> None:
        """Partials a viewer's outbox dropped because a newer one of the same source replaced it."""
        self._coalesced[tenant] += partials

    # -- engines -------------------------------------------------------------------------------

    def engine_opened(self, engine: str) -> None:
        self.engine_stream_opens.labels(engine).inc()

    def engine_failed(self, engine: str, reason: str) -> None:
        self.engine_stream_failures.labels(engine, reason).inc()

    def engine_failover(self, from_engine: str, to_engine: str) -> None:
        self.engine_failovers.labels(from_engine, to_engine).inc()

    def engine_rotated(self, engine: str) -> None:
        self.engine_rotations.labels(engine).inc()

    def first_partial_latency(self, engine: str, seconds: float) -> None:
        self.engine_first_partial.labels(engine).observe(seconds)

    def final_latency(self, engine: str, seconds: float) -> None:
        self.engine_final.labels(engine).observe(seconds)

    def audio_ingested(self, engine: str, language: str, seconds: float) -> None:
        # The base language only: the client chooses the tag's region and variant parts, and
        # each spelling would be a series of its own (`en-x1`, `en-x2`, ...).
        self.audio_seconds.labels(engine, language.partition("-")[0]).inc(seconds)

    # -- storage -------------------------------------------------------------------------------

    def store_write(self, operation: str, seconds: float) -> None:
        self.store_write_latency.labels(operation).observe(seconds)

    def set_breakers(self, open_by_engine: dict[str, bool]) -> None:
        for engine, is_open in open_by_engine.items():
            self.engine_breaker_open.labels(engine).set(1 if is_open else 0)

    def set_dependencies(self, up: dict[str, bool]) -> None:
        for dependency, is_up in up.items():
            self.dependency_up.labels(dependency).set(1 if is_up else 0)

    def set_outbox(self, depth: int, oldest_age_s: float, unwritable: int = 0) -> None:
        self.outbox_depth.set(depth)
        self.outbox_oldest_age.set(oldest_age_s)
        self.outbox_unwritable.set(unwritable)

    # -- recordings ----------------------------------------------------------------------------

    def recording_state(self, state: str) -> None:
        self.recording_jobs.labels(state).inc()

    def recording_stage_done(self, stage: str, seconds: float) -> None:
        self.recording_stage.labels(stage).observe(seconds)

    def recording_audio(self, engine: str, seconds: float) -> None:
        self.recording_audio_seconds.labels(engine).inc(seconds)

    def recording_waited(self, seconds: float) -> None:
        self.recording_queue_wait.observe(seconds)

    def recording_failed(self, reason: str) -> None:
        self.recording_failures.labels(reason).inc()

    def recording_vendor_retry(self, engine: str, reason: str) -> None:
        self.recording_vendor_retries.labels(engine, reason).inc()

    def webhook_attempt(self, event: str, result: str) -> None:
        self.webhook_attempts.labels(event, result).inc()

    def insights_call(self, backend: str, purpose: str, result: str) -> None:
        self.insights_calls.labels(backend, purpose, result).inc()

    def tip_published(self, kind: str) -> None:
        self.tips_published.labels(kind).inc()

    def close(self) -> None:
        """At the end of the process's application: with several workers, this process's live
        gauges (connections, meetings, streams) stop counting toward the replica's sums."""
        if (directory := multiprocess_dir()) is not None:
            mark_process_dead(os.getpid(), directory)

    # -- reading -------------------------------------------------------------------------------

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started_monotonic

    def collect(self) -> Iterable[Metric]:
        """This replica's metrics: every worker's when several share a multiprocess directory."""
        self.flush_deliveries()
        directory = multiprocess_dir()
        if directory is None:
            return self.registry.collect()
        return MultiProcessCollector(None, path=directory).collect()

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format body and its content type."""
        self.flush_deliveries()
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def tenant_figures(self, tenant: str) -> dict[str, dict[tuple[str, ...], float]]:
        """Samples labelled with `tenant`, by sample name, keyed by their other label values."""
        figures: dict[str, dict[tuple[str, ...], float]] = {}
        for metric in self.collect():
            for sample in metric.samples:
                if sample.labels.get("tenant") != tenant:
                    continue
                others = tuple(v for k, v in sorted(sample.labels.items()) if k != "tenant")
                by_labels = figures.setdefault(sample.name.removeprefix(PREFIX), {})
                by_labels[others] = by_labels.get(others, 0.0) + sample.value
        return figures


_KIND_TYPES = {
    Kind.PARTIAL: "transcript.partial",
    Kind.FINAL: "transcript.final",
    Kind.STREAM_ENDED: "status",
}


def _delivered_type(pub: Publication) -> str:
    return _KIND_TYPES.get(pub.kind) or message_type(pub.data)


class TenantDeliveries:
    """One viewer's delivery counter: a dict increment per message, nothing else."""

    __slots__ = ("_metrics", "_tenant")

    def __init__(self, metrics: Metrics, tenant: str) -> None:
        self._metrics, self._tenant = metrics, tenant

    def sent(self, pub: Publication, *, queued: bool) -> None:
        metrics = self._metrics
        metrics.deliveries += 1
        metrics._writes["queued" if queued else "direct"] += 1
        metrics._delivered[(_delivered_type(pub), self._tenant)] += 1

    def coalesced(self, partials: int) -> None:
        self._metrics._coalesced[self._tenant] += partials

    def closed(self, reason: str) -> None:
        self._metrics._queues_closed[reason] += 1
