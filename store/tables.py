"""Table definitions. `migrations/versions/` must create exactly this schema (a test compares)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

# Deterministic constraint names, so the hand-written migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on every dialect.

    PostgreSQL keeps the offset (timestamptz); SQLite stores naive text, so values are normalised
    to UTC before writing (keeping text comparisons chronological) and tagged UTC on reading.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


meetings = Table(
    "meetings",
    metadata,
    Column("tenant_id", String, primary_key=True),
    Column("meeting_id", String, primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    # Numbering counter: bumped under the row lock in the same transaction as the segment insert.
    Column("last_segment_no", Integer, nullable=False, server_default="0"),
    # Set through PATCH /api/v1/meetings/{id}: a title, and speaker labels mapped to names
    # (a JSON object, {"Speaker 1": "Ayşe"}).
    Column("title", String, nullable=True),
    Column("speaker_names", Text, nullable=True),
    # Lifecycle for webhooks (store.meeting_lifecycle): NULL (never streamed), "live" or "ended",
    # moved by one compare-and-set so one replica raises each meeting.started / meeting.ended.
    Column("lifecycle", String, nullable=True),
    Column("lifecycle_at", UTCDateTime, nullable=True),
    Index(None, "tenant_id", "created_at", "meeting_id"),  # a tenant's list, newest first
    Index(None, "created_at", "tenant_id", "meeting_id"),  # retention's walk, oldest first
)

segments = Table(
    "segments",
    metadata,
    # SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("tenant_id", String, nullable=False),
    Column("meeting_id", String, nullable=False),
    Column("segment_no", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("start_ms", Integer, nullable=False),
    Column("end_ms", Integer, nullable=False),
    Column("speaker", String, nullable=True),
    Column("confidence", Float, nullable=True),
    Column("source", String, nullable=False),
    Column("stream_id", String, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    # The final's position within its ingest stream: the idempotency key that lets a write be
    # retried after an ambiguous commit failure without storing the final twice.
    Column("stream_seq", Integer, nullable=True),
    # A corrected final keeps what the engine said, and who corrected it when.
    Column("original_text", Text, nullable=True),
    Column("edited_by", String, nullable=True),
    Column("edited_at", UTCDateTime, nullable=True),
    # Also the index behind "finals of a meeting after N, ordered by segment_no".
    UniqueConstraint("tenant_id", "meeting_id", "segment_no"),
    Index("uq_segments_stream_id_stream_seq", "stream_id", "stream_seq", unique=True),
    # Search walks a tenant's matches newest first (store.search_sql.SEARCH_WINDOW).
    Index("ix_segments_tenant_id_id", "tenant_id", "id"),
    ForeignKeyConstraint(
        ["tenant_id", "meeting_id"],
        ["meetings.tenant_id", "meetings.meeting_id"],
        ondelete="CASCADE",
    ),
    # A row number is never given twice (migration 0008): search pages rely on it.
    sqlite_autoincrement=True,
)

ingest_streams = Table(
    "ingest_streams",
    metadata,
    Column("stream_id", String, primary_key=True),
    Column("tenant_id", String, nullable=False),
    Column("meeting_id", String, nullable=False),
    Column("source", String, nullable=False),
    Column("engine", String, nullable=False),
    Column("sample_rate", Integer, nullable=False),
    Column("channels", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    # When its audio began, for a stream that resumed another (its handshake's `resumes`):
    # before it started. Exports place its finals from it; null: from `started_at`.
    Column("audio_started_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("audio_ms", BigInteger, nullable=False, server_default="0"),
    Column("frames", BigInteger, nullable=False, server_default="0"),
    ForeignKeyConstraint(
        ["tenant_id", "meeting_id"],
        ["meetings.tenant_id", "meetings.meeting_id"],
        ondelete="CASCADE",
    ),
    Index(None, "tenant_id", "meeting_id", "ended_at"),
)

# Full-text search objects (migration 0004): dialect-specific, so not described above.
SEARCH_TABLE_PREFIX = "segments_fts"
SEARCH_COLUMN = "search_vector"
SEARCH_INDEX = "ix_segments_search_vector"


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, _compare: Any) -> bool:
    """Alembic's schema-comparison filter: leave the search index objects out."""
    if name is None:
        return True
    if type_ == "table" and name.startswith(SEARCH_TABLE_PREFIX):
        return False
    return not (
        (type_ == "column" and name == SEARCH_COLUMN) or (type_ == "index" and name == SEARCH_INDEX)
    )


# Recordings (issue 15): one durable row per uploaded file's transcription job. A replica claims
# a queued (or lease-expired running) job, renews `lease_expires_at` while it runs, and advances
# the checkpoint (`next_chunk`, `audio_ms_done`) in the same transaction as the chunk's finals.
recording_jobs = Table(
    "recording_jobs",
    metadata,
    Column("job_id", String, primary_key=True),
    Column("tenant_id", String, nullable=False),
    Column("meeting_id", String, nullable=False),
    Column("status", String, nullable=False),  # queued|running|succeeded|failed|cancelled
    Column("stage", String, nullable=False),
    Column("audio_ms_done", BigInteger, nullable=False, server_default="0"),
    Column("audio_ms_total", BigInteger, nullable=False, server_default="0"),
    Column("engine", String, nullable=True),  # requested engine; NULL: the chain
    Column("engines_used", Text, nullable=False, server_default="{}"),  # JSON: engine -> ms
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("error", Text, nullable=True),
    Column("idempotency_key", String, nullable=True),
    Column("file_path", Text, nullable=False),
    Column("file_bytes", BigInteger, nullable=False, server_default="0"),
    Column("label", String, nullable=False),
    Column("language", String, nullable=False),
    Column("diarize", Integer, nullable=False, server_default="1"),
    Column("split_channels", Integer, nullable=False, server_default="0"),
    Column("lease_owner", String, nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("cancel_requested", Integer, nullable=False, server_default="0"),
    Column("next_chunk", Integer, nullable=False, server_default="0"),
    Column("finals", Integer, nullable=False, server_default="0"),
    Column("last_segment_no", Integer, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    UniqueConstraint("tenant_id", "idempotency_key"),
    ForeignKeyConstraint(
        ["tenant_id", "meeting_id"],
        ["meetings.tenant_id", "meetings.meeting_id"],
        ondelete="CASCADE",
    ),
    Index(None, "tenant_id", "meeting_id", "created_at"),
    Index(None, "status", "created_at"),
)


# Webhooks (store.webhooks): a tenant's endpoints, and one durable delivery row per event and
# endpoint (the outbox), claimed under a lease by one replica at a time and retried until
# delivered or too old.
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("endpoint_id", String, primary_key=True),
    Column("tenant_id", String, nullable=False),
    Column("url", Text, nullable=False),
    Column("events", Text, nullable=False),  # JSON list of event types
    Column("secret", String, nullable=False),  # whsec_<base64>
    Column("description", String, nullable=True),
    Column("source", String, nullable=False, server_default="api"),  # api | file
    Column("created_at", UTCDateTime, nullable=False),
    # Secrets rotations replaced, each signing beside the current one until its time: JSON
    # [[secret, until (ISO 8601)], ...], newest first.
    Column("previous_secrets", Text, nullable=True),
    Index(None, "tenant_id", "created_at"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("delivery_id", String, primary_key=True),  # the webhook-id header
    Column("endpoint_id", String, nullable=False),
    Column("tenant_id", String, nullable=False),
    Column("meeting_id", String, nullable=True),
    Column("event_type", String, nullable=False),
    Column("payload", Text, nullable=False),  # the body, fixed at enqueue: retries send the same
    Column("status", String, nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_owner", String, nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime, nullable=True),
    ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.endpoint_id"], ondelete="CASCADE"),
    Index(None, "status", "next_attempt_at"),
    Index(None, "endpoint_id", "created_at"),
)

# Post-meeting notes (store.notes): one row per meeting, requested when the meeting ends, a
# recording job succeeds or a client asks, and made by one replica at a time (a lease).
meeting_notes = Table(
    "meeting_notes",
    metadata,
    Column("tenant_id", String, primary_key=True),
    Column("meeting_id", String, primary_key=True),
    Column("state", String, nullable=False),  # pending | ready | failed
    Column("reason", String, nullable=False),  # meeting.ended | recording | request
    Column("generation", Integer, nullable=False, server_default="1"),  # bumped by each request
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_owner", String, nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("backend", String, nullable=True),
    Column("body", Text, nullable=True),  # JSON: summary, decisions, action_items, questions
    Column("finals", Integer, nullable=True),  # how many finals the notes were made from
    Column("error", Text, nullable=True),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("generated_at", UTCDateTime, nullable=True),
    Index(None, "state", "next_attempt_at"),
)

# Live tips (store.tips): `ai.tip` messages as published, numbered per meeting by the one
# replica that produces the meeting's tips; replayed to viewers with `since` and exported.
meeting_tips = Table(
    "meeting_tips",
    metadata,
    Column("tenant_id", String, primary_key=True),
    Column("meeting_id", String, primary_key=True),
    Column("tip_no", Integer, primary_key=True),
    Column("kind", String, nullable=False),  # decision | action_item | question | summary
    Column("text", Text, nullable=False),
    Column("owner", String, nullable=True),
    Column("due", String, nullable=True),
    Column("segment_nos", Text, nullable=False),  # JSON list: the finals it comes from
    Column("segment_no_high", Integer, nullable=False),  # the highest of them (since= replay)
    Column("backend", String, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # A correction of a final it cites withdrew it: its words are gone, its number stays taken.
    Column("withdrawn_at", UTCDateTime, nullable=True),
    # The meeting's newest stored final when the tip was stored (since= replay: a viewer
    # holding finals up to N missed no tip stored before N was). NULL: stored before 0013.
    Column("newest_segment_no", Integer, nullable=True),
)

# Secrets every replica shares (store.server_secrets): the page cursors' key.
server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String, primary_key=True),
    Column("value", String, nullable=False),  # hex; written by migration 0012
)

# Deleted meetings (store.deletion_log): kept a day, so a replica that starts, or reconnects to
# the bus, after a deletion's notice still refuses connections that would bring the meeting back.
meeting_deletions = Table(
    "meeting_deletions",
    metadata,
    Column("tenant_id", String, primary_key=True),
    Column("meeting_id", String, primary_key=True),
    Column("deleted_at", UTCDateTime, nullable=False),  # the deleting replica's clock
    Index(None, "deleted_at"),
)
