"""The metrics module with plain values: what it counts, how the stats read it, and that the
exposition is valid Prometheus text."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fanout.publication import Publication
from gateway.observability.metrics import SCOPE_TENANT, Metrics, message_type
from gateway.observability.stats import tenant_stats


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b'{"type":"transcript.final","segment_no":3}', "transcript.final"),
        (b'{"type":"pong"}', "pong"),
        (b'{"segment_no":3}', "unknown"),
        (b'{"type":"unterminated', "unknown"),
    ],
)
def test_message_type_reads_the_leading_type_field(data: bytes, kind: str) -> None:
    assert message_type(data) == kind


def test_a_meeting_is_active_while_it_has_a_connection() -> None:
    metrics = Metrics()
    metrics.connection_opened("ingest", "acme", "m1")
    metrics.connection_opened("viewer", "acme", "m1")
    metrics.connection_opened("viewer", "acme", "m2")
    assert tenant_stats(metrics, "acme", "r")["active_meetings"] == 2
    metrics.connection_closed("ingest", "acme", "m1", 1000)
    assert tenant_stats(metrics, "acme", "r")["active_meetings"] == 2  # a viewer remains
    metrics.connection_closed("viewer", "acme", "m1", 4408)
    stats = tenant_stats(metrics, "acme", "r")
    assert stats["active_meetings"] == 1
    assert stats["connections"] == {"ingest": 0, "viewer": 1}
    assert stats["connections_total"] == {"ingest": 1, "viewer": 2}
    assert stats["closes_by_code"] == {"1000": 1, "4408": 1}


def test_an_ingest_streams_tallies_reach_the_counters_once_each() -> None:
    metrics = Metrics()
    counts = metrics.ingest_counts("acme")
    value = metrics.registry.get_sample_value
    messages = ("meeting_gateway_messages_received_total", {"role": "ingest", "tenant": "acme"})
    frames = ("meeting_gateway_audio_frames_total", {"tenant": "acme"})
    counts.sync(messages=3, frames=2)
    counts.sync(messages=3, frames=2)  # nothing new: nothing added
    assert (value(*messages), value(*frames)) == (3, 2)
    counts.sync(messages=7, frames=5)
    assert (value(*messages), value(*frames)) == (7, 5)
    metrics.ingest_counts("acme").sync(messages=1, frames=1)  # a second stream of the tenant adds
    assert (value(*messages), value(*frames)) == (8, 6)


def test_stats_show_only_the_asking_tenant() -> None:
    metrics = Metrics()
    metrics.connection_opened("viewer", "acme", "m1")
    final = Publication.parse(b'{"type":"transcript.final","segment_no":1}')
    partial = Publication.parse(b'{"type":"transcript.partial","segment_no":2}')
    metrics.publication_delivered("acme", final, 1, live=False)  # a room wrote it to 1 viewer
    metrics.publication_delivered("globex", partial, 0, live=True)  # queued: counted when sent
    metrics.delivery_counter("globex").sent(partial, queued=True)  # ... by the viewer's outbox
    metrics.published("transcript.final", "globex", 0.001)
    metrics.limit_hit("subscriber_messages", "globex")
    metrics.heartbeat_timeout({SCOPE_TENANT: "globex"})
    metrics.heartbeat_timeout({})  # before authentication: nobody's
    acme, globex = (tenant_stats(metrics, t, "r") for t in ("acme", "globex"))
    assert acme["connections"]["viewer"] == 1 and globex["connections"]["viewer"] == 0
    assert acme["messages_delivered"] == {"transcript.final": 1}
    assert globex["messages_delivered"] == {"transcript.partial": 1}
    assert (acme["finals_published"], globex["finals_published"]) == (0, 1)
    assert acme["rate_limit_rejections"] == {}
    assert globex["rate_limit_rejections"] == {"subscriber_messages": 1}
    assert (acme["heartbeat_timeouts"], globex["heartbeat_timeouts"]) == (0, 1)
    assert tenant_stats(metrics, "initech", "r")["messages_out"] == 0


def test_exposition_parses_and_carries_every_family() -> None:
    metrics = Metrics()
    metrics.engine_opened("local")
    metrics.first_partial_latency("local", 0.4)
    metrics.final_latency("local", 0.9)
    metrics.audio_ingested("local", "en", 2.5)
    for variant in ("en-gb", "en-x1", "en-x2-y3"):  # the client's spelling makes no new series
        metrics.audio_ingested("local", variant, 1.0)
    metrics.store_write("append_final", 0.003)
    metrics.delivery_latency.observe(0.002)
    metrics.set_outbox(7, 1.5, 1)
    metrics.coalesced("acme", 3)
    metrics.recording_state("succeeded")
    metrics.recording_stage_done("transcribe", 12.0)
    metrics.recording_audio("local", 30.0)
    metrics.recording_waited(0.5)
    metrics.recording_failed("damaged")
    metrics.webhook_attempt("meeting.ended", "retry")
    metrics.insights_call("rules", "tips", "ok")
    metrics.tip_published("decision")
    metrics.publication_delivered("acme", Publication.parse(b'{"type":"status"}'), 3, False)
    metrics.delivery_counter("acme").closed("stall")
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert all(name.startswith("meeting_gateway_") for name in families)
    value = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    # The process's own figures, for memory growth over a long meeting (Linux's /proc).
    assert value[("meeting_gateway_process_resident_memory_bytes", ())] > 10 << 20
    assert ("meeting_gateway_process_open_fds", ()) in value
    audio = [k for k in value if k[0] == "meeting_gateway_audio_seconds_total"]
    assert audio == [
        ("meeting_gateway_audio_seconds_total", (("engine", "local"), ("language", "en")))
    ]
    assert value[audio[0]] == 5.5
    assert value[("meeting_gateway_engine_first_partial_seconds_count", (("engine", "local"),))]
    assert value[("meeting_gateway_outbox_depth", ())] == 7
    assert value[("meeting_gateway_outbox_oldest_age_seconds", ())] == 1.5
    assert value[("meeting_gateway_partials_coalesced_total", (("tenant", "acme"),))] == 3
    assert value[("meeting_gateway_recording_audio_seconds_total", (("engine", "local"),))] == 30
    assert value[("meeting_gateway_recording_failures_total", (("reason", "damaged"),))] == 1
    assert value[("meeting_gateway_recording_jobs_total", (("state", "succeeded"),))] == 1
    assert value[("meeting_gateway_viewer_writes_total", (("path", "direct"),))] == 3
    assert value[("meeting_gateway_viewer_queues_closed_total", (("reason", "stall"),))] == 1
    webhook = (("event", "meeting.ended"), ("result", "retry"))
    assert value[("meeting_gateway_webhook_attempts_total", webhook)] == 1
    assert value[("meeting_gateway_tips_published_total", (("kind", "decision"),))] == 1
    expected = {
        "connections", "connections_opened", "disconnects", "active_meetings", "ingest_streams",
        "auth_failures", "rate_limit_rejections", "heartbeat_timeouts", "messages_received",
        "audio_frames", "messages_published", "publish_failures", "messages_delivered",
        "finals_replayed", "partials_coalesced", "finals_not_kept", "engine_stream_opens",
        "engine_stream_failures",
        "engine_failovers", "engine_rotations", "engine_first_partial_seconds",
        "engine_final_seconds", "audio_seconds", "delivery_seconds", "store_write_seconds",
        "bus_publish_seconds", "outbox_depth", "outbox_oldest_age_seconds", "outbox_unwritable",
        "engine_breaker_open",
        "dependency_up",
        # Recordings.
        "recording_jobs", "recording_jobs_running", "recording_stage_seconds",
        "recording_audio_seconds", "recording_queue_wait_seconds", "recording_failures",
        "recording_vendor_retries",
        # Webhooks.
        "webhook_attempts",
        # Insights.
        "insights_calls", "tips_published",
        # Viewer writes (fanout.delivery's tallies, folded in).
        "viewer_writes", "viewer_queues_closed",
        # The process (prometheus-client's ProcessCollector).
        "process_cpu_seconds", "process_resident_memory_bytes", "process_virtual_memory_bytes",
        "process_open_fds", "process_max_fds", "process_start_time_seconds",
    }  # fmt: skip
    names = {name.removeprefix("meeting_gateway_") for name in families}
    assert {name for name in names if not name.endswith("_created")} == expected
