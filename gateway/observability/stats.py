"""`/api/v1/ws/stats`: one tenant's figures on this replica, read from the metrics."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.observability.metrics import Metrics

ROLES = ("ingest", "viewer")


def tenant_stats(metrics: Metrics, tenant: str, replica_id: str) -> dict[str, object]:
    """What ops of `tenant` see; whole-replica figures are only on `/metrics`."""
    figures = metrics.tenant_figures(tenant)

    def by_label(name: str) -> dict[str, int]:
        """A labelled figure by its (single remaining) label value."""
        return {labels[0]: round(v) for labels, v in sorted(figures.get(name, {}).items()) if v}

    def total(name: str) -> int:
        return round(sum(figures.get(name, {}).values()))

    connections = by_label("connections")
    closes: dict[str, int] = {}
    for (code, _role), n in figures.get("disconnects_total", {}).items():
        closes[code] = closes.get(code, 0) + round(n)
    received = by_label("messages_received_total")
    published = by_label("messages_published_total")
    return {
        "replica_id": replica_id,
        "tenant": tenant,
        "uptime_s": round(metrics.uptime_s, 3),
        "started_at": datetime.fromtimestamp(metrics.started_at, UTC).isoformat(),
        "connections": {role: connections.get(role, 0) for role in ROLES},
        "connections_total": by_label("connections_opened_total"),
        "closes_by_code": dict(sorted(closes.items(), key=_code_order)),
        "active_meetings": total("active_meetings"),
        "ingest_streams": total("ingest_streams"),
        "heartbeat_timeouts": total("heartbeat_timeouts_total"),
        "messages_in": sum(received.values()),
        "messages_out": total("messages_delivered_total"),
        "messages_delivered": by_label("messages_delivered_total"),
        "audio_frames_in": total("audio_frames_total"),
        "partials_published": published.get("transcript.partial", 0),
        "finals_published": published.get("transcript.final", 0),
        "finals_replayed": total("finals_replayed_total"),
        "partials_coalesced": total("partials_coalesced_total"),
        "publish_failures": total("publish_failures_total"),
        "rate_limit_rejections": by_label("rate_limit_rejections_total"),
    }


def _code_order(item: tuple[str, int]) -> tuple[int, int]:
    code = item[0]
    return (0, int(code)) if code.isdigit() else (1, 0)  # "other" last
