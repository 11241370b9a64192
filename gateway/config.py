"""Configuration from the environment (documented in the README's Configuration table)."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio.connection import ConnectionPool
from sqlalchemy.engine import make_url

from store.urls import async_database_url, sqlite_file

# Bounds no sensible setting reaches, below what overflows a date, a timedelta or an index.
MAX_SECONDS = 1e9
MAX_DAYS = 36_500
MAX_COUNT = 2**31 - 1
MIN_HTTP_LINE_BYTES = 2048
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}
_PATH_SETTINGS = {"jwt_public_key_path", "outbox_dir", "recordings_dir", "webhooks_file"}


def database_url_setting(value: str) -> str:
    """DATABASE_URL (or `db upgrade --database-url`) as the store opens it: the async driver's
    form; ValueError naming what is wrong (an in-memory SQLite database among it)."""
    url = async_database_url(value)
    try:
        make_url(url).port  # noqa: B018 - parsed when read: a port that is no number raises
    except ValueError:
        raise ValueError("has a port that is not a number") from None
    if sqlite_file(url) in ("", ":memory:"):
        raise ValueError(
            "names no SQLite file (an in-memory database is one per connection and goes "
            "with the process); use sqlite+aiosqlite:///path/to/file.db"
        )
    return url


class Settings(BaseSettings):
    # No setting means anything by inf or nan (a timeout of inf would never give up).
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", frozen=True, allow_inf_nan=False
    )

    jwt_public_key_path: Path = Path("./keys/jwt.pub")
    jwt_audience: str = "meetings"
    jwt_issuer: str = "our-app"
    jwt_leeway_s: float = Field(default=30.0, ge=0, le=3600)  # more is expiry switched off
    # How often an open connection checks that the key which signed its token is still current.
    key_recheck_s: float = Field(default=30.0, gt=0, le=3600)
    # How often (at most) the key file or directory is looked at for changes (rotation).
    key_reload_s: float = Field(default=5.0, gt=0, le=3600)

    database_url: str = "sqlite+aiosqlite:///./data/gateway.db"
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    redis_url: str | None = None
    redis_key_prefix: str = ""

    asr_engine: str = "local"
    # unset: one per usable core
    local_engine_workers: int | None = Field(default=None, ge=1, le=256)
    # unset: 3 per worker (8 with LOCAL_FINALS_MODEL=pocketsphinx)
    local_engine_max_streams: int | None = Field(default=None, ge=1)
    # Whisper model for the local engine's finals: "tiny.en" (bundled), a faster-whisper model
    # name, a model directory, or "pocketsphinx" (one pass, no Whisper).
    local_finals_model: str = "tiny.en"
    # Recordings (ingest/files/local.py): Whisper model for uploaded files; unset: the live finals
    # model (tiny.en when that is pocketsphinx). "base": multilingual Whisper base from the
    # `multilingual` extra (tr, auto, ...); or a faster-whisper model name or model directory.
    local_recordings_model: str | None = None

    max_ws_clients_per_meeting: int = Field(default=20, ge=1)
    # Viewer connections of one tenant on one process, over all its meetings: one tenant cannot
    # hold every socket the process may open (set it below the open-file limit's share).
    max_ws_clients_per_tenant: int = Field(default=10_000, ge=1)
    max_ingest_msg_bytes: int = Field(default=32768, ge=1024)
    ingest_sample_rate: int = Field(default=48000, ge=8000, le=48000)
    subscriber_msgs_per_s: float = Field(default=10.0, gt=0)
    ingest_frames_per_s: float = Field(default=50.0, gt=0)
    subscriber_queue_max: int = Field(default=1000, ge=1)
    subscriber_send_timeout_s: float = Field(default=10.0, gt=0)
    store_retry_s: float = Field(default=20.0, ge=0)
    ws_ping_interval_s: float = Field(default=20.0, gt=0)
    ws_ping_timeout_s: float = Field(default=20.0, gt=0)
    drain_timeout_s: float = Field(default=25.0, gt=0)  # SIGTERM to exit, drain included
    # Proxies whose X-Forwarded-For/-Proto are believed (comma-separated IPs or networks, or *).
    forwarded_allow_ips: str = "127.0.0.1"
    # Numbered finals wait here (on disk) for the database; see README "Delivery guarantees".
    outbox_dir: Path = Path("./data/outbox")
    # Redis commands wait up to redis_pool_timeout_s for one of redis_max_connections.
    redis_max_connections: int = Field(default=50, ge=1)
    redis_pool_timeout_s: float = Field(default=5.0, gt=0)

    # Cloud engines and the failover chain (README "Engines").
    deepgram_api_key: SecretStr | None = None
    deepgram_model: str = "nova-3"
    deepgram_language: str | None = None  # unset: the handshake's language
    deepgram_url: str | None = None  # base URL override: self-hosted Deepgram, tests
    deepgram_keyterms: str = ""  # comma-separated
    # Audio gathered per message to Deepgram (0: each client frame as its own message).
    deepgram_send_batch_ms: int = Field(default=100, ge=0, le=250)
    gcp_speech_model: str = "latest_long"
    gcp_speech_endpoint: str | None = None
    gcp_speech_insecure: bool = False
    gcp_stream_rotate_s: float = Field(default=240.0, gt=0, le=290)
    engine_breaker_failures: int = Field(default=3, ge=1)
    engine_breaker_cooldown_s: float = Field(default=30.0, ge=0)
    engine_breaker_successes: int = Field(default=1, ge=1)
    engine_open_timeout_s: float = Field(default=5.0, gt=0)
    engine_retry_attempts: int = Field(default=3, ge=1)
    subscriber_queue_max_bytes: int = Field(default=1 << 20, ge=1024)

    # Recordings through the vendors' batch APIs (ingest.files.vendors; README "Recordings with
    # Deepgram and Google"). The live engines' key, URL, endpoint and model settings apply too.
    deepgram_file_timeout_s: float = Field(default=600.0, gt=0)  # longest wait without progress
    gcp_recordings_model: str | None = None  # unset: GCP_SPEECH_MODEL (latest_* cannot diarize)
    gcp_operation_timeout_s: float = Field(default=1800.0, gt=0)  # one chunk's operation
    gcp_recordings_bucket: str | None = None  # set: chunks go to Speech as gs:// objects
    recording_vendor_attempts: int = Field(default=4, ge=1)  # per request: 429, 5xx, timeouts

    @field_validator(
        "gcp_recordings_model",
        "gcp_recordings_bucket",
        "transcript_retention_days",
        "local_engine_workers",
        "local_engine_max_streams",
        "local_recordings_model",
        mode="before",
    )
    @classmethod
    def _empty_optional_setting_is_unset(cls, value: object) -> object:
        # Documented as "unset" by default: an empty value (a blank line of a template) too.
        return None if value == "" else value

    # Meetings whose last activity is older are deleted (README "Meetings API"); unset: kept.
    transcript_retention_days: float | None = Field(default=None, gt=0)
    retention_interval_s: float = Field(default=3600.0, gt=0)
    # Capacity (issue 19): the part of the local engine's streams one tenant may hold at once
    # (at least 2: both sources of a meeting), and how long an ingest stream may send no audio
    # before it is closed 4408 (reason "idle") and its engine slot released.
    local_engine_tenant_share: float = Field(default=0.5, gt=0, le=1)
    ingest_idle_s: float = Field(default=60.0, gt=0)

    log_level: str = "INFO"
    log_format: Literal["console", "json"] = "console"

    # HTTP edge (gateway.http.edge): request-head limits and the time allowed to send a head.
    # At least 2 KiB: a token (700 bytes and more) must fit a `?token=` and an Authorization line.
    http_max_request_line_bytes: int = Field(default=8192, ge=MIN_HTTP_LINE_BYTES, le=8192)
    http_max_header_line_bytes: int = Field(default=8192, ge=MIN_HTTP_LINE_BYTES, le=8192)
    http_max_headers: int = Field(default=100, ge=8, le=128)
    http_max_head_bytes: int = Field(default=32768, ge=1024, le=1 << 20)
    http_head_timeout_s: float = Field(default=5.0, gt=0)
    # An idle kept-alive connection is closed after this long: longer than proxies keep idle
    # upstream connections (ingress-nginx and cloud load balancers: 60 s), so the proxy, not
    # the gateway, closes them (gateway/server/edge.py).
    http_keepalive_s: float = Field(default=75.0, gt=0)
    # A request body with no data this long (the server reading), or a response of which the
    # client reads nothing this long, closes the connection (gateway/server/edge.py).
    http_body_idle_timeout_s: float = Field(default=30.0, gt=0)
    http_send_stall_timeout_s: float = Field(default=60.0, gt=0)
    exports_per_tenant: int = Field(default=4, ge=1)  # whole exports streaming, per process
    searches_per_tenant: int = Field(default=2, ge=1)  # searches running at once, per process

    # /metrics on a port of its own (README "Metrics"); unset: served on the main port. With it
    # set the main port answers /metrics with 404.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_metrics_port_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    # Engine timing a loaded machine (a shared CI runner) needs wider: a replacement worker may
    # take seconds to start. Defaults are production's; the test harness widens them.
    engine_failover_open_timeout_s: float = Field(default=1.5, gt=0)  # first failover round
    # Audio a stream keeps until a final covers it, replayed to the next engine on failover.
    engine_replay_max_s: float = Field(default=120.0, ge=1.0, le=600.0)
    local_engine_stall_timeout_s: float = Field(default=30.0, gt=0)  # unanswered: worker killed
    # Recordings (issue 15, gateway/http/recordings.py, gateway/pipeline/recordings.py): uploads
    # are streamed to RECORDINGS_DIR and transcribed as durable jobs by any replica.
    recordings_dir: Path = Path("./data/recordings")
    recording_max_bytes: int = Field(default=2 << 30, ge=1)
    recording_max_seconds: float = Field(default=6 * 3600.0, gt=0)
    recording_jobs_per_tenant: int = Field(default=2, ge=1)  # running at once, per tenant
    recording_queue_max: int = Field(default=20, ge=1)  # queued per tenant, 429 beyond
    recording_uploads_per_tenant: int = Field(default=4, ge=1)  # being received, per process
    recording_disk_budget_bytes: int = Field(default=20 << 30, ge=1)  # files of unended jobs
    # The part of it one tenant's jobs may hold: the rest stays for the other tenants.
    recording_disk_tenant_share: float = Field(default=0.5, gt=0, le=1)
    recording_max_attempts: int = Field(default=3, ge=1)
    recording_engine_outage_s: float = Field(default=900.0, ge=0)  # all engines down: wait
    recording_keep_audio: bool = False
    recording_workers: int = Field(default=1, ge=0)  # jobs this replica runs at once; 0: none
    recording_lease_s: float = Field(default=30.0, gt=0)
    recording_poll_s: float = Field(default=1.0, gt=0)

    # Webhooks (gateway/webhooks/, README "Webhooks"): endpoints from WEBHOOKS_FILE and the admin
    # routes; deliveries retried from WEBHOOKS_RETRY_BASE_S doubling up to WEBHOOKS_RETRY_MAX_S
    # until WEBHOOKS_MAX_AGE_S old. meeting.ended follows MEETING_IDLE_S without a stream.
    webhooks_file: Path | None = None
    webhooks_allow_private: bool = False
    webhooks_ca_file: Path | None = None  # PEM: CAs trusted for receivers, besides the system's
    webhooks_timeout_s: float = Field(default=10.0, gt=0, le=60)
    webhooks_retry_base_s: float = Field(default=5.0, gt=0)
    webhooks_retry_max_s: float = Field(default=3600.0, gt=0)
    webhooks_max_age_s: float = Field(default=86400.0, gt=0)
    webhooks_poll_s: float = Field(default=1.0, gt=0)
    webhooks_log_retention_days: float = Field(default=30.0, gt=0)
    meeting_idle_s: float = Field(default=300.0, gt=0)

    # Insights (ingest/insights/, README "Meeting insights"): `rules` (offline, the default) or
    # `llm`, any OpenAI-compatible chat-completions server at INSIGHTS_LLM_URL (its API base,
    # e.g. http://127.0.0.1:11434/v1). Post-meeting notes are retried NOTES_MAX_ATTEMPTS times.
    insights_backend: Literal["rules", "llm"] = "rules"
    insights_llm_url: str | None = None
    insights_llm_model: str = "llama3.2"
    insights_llm_api_key: SecretStr | None = None
    insights_llm_timeout_s: float = Field(default=60.0, gt=0, le=600)
    # Tokens a notes answer may take (a model's context must hold the prompt, about 1,500 tokens
    # a part, and this): a busy meeting's notes need room; a small-context server lower.
    insights_llm_notes_max_tokens: int = Field(default=2048, ge=256, le=32768)
    # Live tips (gateway/pipeline/live_tips.py): `handshake` follows each stream's ai_mode
    # (standard: rules, super: INSIGHTS_BACKEND), `always` uses INSIGHTS_BACKEND for every
    # meeting, `off` publishes none. At most one tip per INSIGHTS_MIN_INTERVAL_S per meeting and
    # INSIGHTS_MAX_CALLS backend calls in flight per replica.
    insights_live: Literal["handshake", "always", "off"] = "handshake"
    insights_min_interval_s: float = Field(default=30.0, ge=0)
    insights_max_calls: int = Field(default=4, ge=1)
    notes_max_attempts: int = Field(default=3, ge=1)
    notes_poll_s: float = Field(default=1.0, gt=0)
    # Meetings' notes one replica makes at once, one per tenant (a long meeting's notes are
    # many calls: one tenant's must not hold every other tenant's up).
    notes_concurrency: int = Field(default=2, ge=1, le=64)

    @model_validator(mode="after")
    def _llm_needs_a_url(self) -> Settings:
        if self.insights_backend == "llm" and not self.insights_llm_url:
            raise ValueError("INSIGHTS_BACKEND=llm needs INSIGHTS_LLM_URL (the API base URL)")
        return self

    @model_validator(mode="after")
    def _retry_base_within_its_cap(self) -> Settings:
        # Accepted silently, every retry waited the cap: the base meant nothing.
        if self.webhooks_retry_base_s > self.webhooks_retry_max_s:
            raise ValueError(
                "WEBHOOKS_RETRY_BASE_S must not exceed WEBHOOKS_RETRY_MAX_S (the first wait and "
                "the longest)"
            )
        return self

    @field_validator("webhooks_file", "webhooks_ca_file", mode="before")
    @classmethod
    def _empty_webhooks_file_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator(
        "jwt_public_key_path",
        "jwt_audience",
        "jwt_issuer",
        "database_url",
        "asr_engine",
        "local_finals_model",
        "deepgram_model",
        "gcp_speech_model",
        "insights_llm_model",
        "forwarded_allow_ips",
        "outbox_dir",
        "recordings_dir",
        "metrics_host",
        mode="before",
    )
    @classmethod
    def _not_empty(cls, value: object) -> object:
        # Taken literally, an empty value was worse than refused: JWT_AUDIENCE= accepted no
        # token at all, OUTBOX_DIR= wrote finals into the working directory.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty (leave the variable out for its default)")
        return value

    @field_validator("*")
    @classmethod
    def _within_reason(cls, value: object, info: ValidationInfo) -> object:
        """No duration, count or size so large that it overflows where it is used (a date
        `TRANSCRIPT_RETENTION_DAYS` back, a lease's expiry, a worker count): a value that
        passed here then failed every background round."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        name = info.field_name or ""
        if name.endswith("_s") and not name.endswith("_per_s") and value > MAX_SECONDS:
            raise ValueError(f"must be at most {MAX_SECONDS:.0f} (seconds: about 30 years)")
        if name.endswith("_days") and value > MAX_DAYS:
            raise ValueError(f"must be at most {MAX_DAYS} (days: 100 years)")
        if not name.endswith("_bytes") and value > MAX_COUNT:
            raise ValueError(f"must be at most {MAX_COUNT}")
        return value

    @field_validator("http_max_request_line_bytes", "http_max_header_line_bytes", mode="before")
    @classmethod
    def _room_for_a_token(cls, value: object) -> object:
        # Said with its reason, not pydantic's "greater than or equal to".
        number = value if isinstance(value, int) else None
        if isinstance(value, str) and value.strip().isdigit():
            number = int(value)
        if number is not None and number < MIN_HTTP_LINE_BYTES:
            raise ValueError(
                f"must be at least {MIN_HTTP_LINE_BYTES}: a token (700 bytes and more) must fit "
                "a ?token= request line or an Authorization header line"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        return database_url_setting(value)

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ConnectionPool.from_url(value)  # parses only; connects nothing
        except ValueError as exc:
            raise ValueError(f"{exc}; for example redis://host:6379/0") from None
        parts = urlsplit(value)
        database = parts.path.strip("/")
        if parts.scheme != "unix" and database and not database.isdigit():
            # redis-py ignores a database that is no number, and uses 0: another's data.
            raise ValueError(
                f"names database {database!r}, not a number; for example redis://host:6379/0"
            )
        return value

    @field_validator(
        "deepgram_api_key",
        "insights_llm_url",
        "insights_llm_api_key",
        "deepgram_language",
        "deepgram_url",
        "gcp_speech_endpoint",
        mode="before",
    )
    @classmethod
    def _empty_engine_setting_is_unset(cls, value: object) -> object:
        # A key read from a secrets file often ends in a newline, which no server accepts.
        if isinstance(value, str):
            value = value.strip()
        return None if value == "" else value

    @field_validator("deepgram_url")
    @classmethod
    def _deepgram_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
            raise ValueError("must be a ws://, wss://, http:// or https:// base URL with a host")
        return value

    @field_validator("insights_llm_url")
    @classmethod
    def _llm_base_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// base URL with a host")
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        # As uvicorn reads it: `*` alone trusts every peer; otherwise addresses and networks,
        # parsed strictly (10.0.0.1/8 is no network to uvicorn: it would match nothing).
        if value == "*":
            return value
        for entry in (part.strip() for part in value.split(",")):
            try:
                if "/" in entry:
                    ipaddress.ip_network(entry)
                else:
                    ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(
                    "must be comma-separated IP addresses or networks (10.0.0.0/8, host bits "
                    "zero), or * alone; one entry is neither"
                ) from None
        return value

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        level = LOG_LEVEL_ALIASES.get(value.upper(), value.upper())
        if level not in LOG_LEVELS:
            aka = {level: alias for alias, level in LOG_LEVEL_ALIASES.items()}
            names = [f"{n} (or {aka[n]})" if n in aka else n for n in LOG_LEVELS]
            raise ValueError(f"must be one of {', '.join(names)}")
        return level

    # Defined last: pydantic runs "before" validators last-defined first, so every other one
    # sees the stripped value.
    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, value: object, info: ValidationInfo) -> object:
        """A value read from a file (a Kubernetes Secret made --from-file) often ends in a
        newline: no setting means anything by surrounding whitespace, except where earlier
        versions took the value as given and something already exists under it."""
        if not isinstance(value, str) or value == (stripped := value.strip()):
            return value
        name = info.field_name
        if name == "redis_key_prefix":
            return value  # running replicas' keys and channels are named with it
        if name == "database_url":
            as_given = sqlite_file(value)
        else:
            as_given = value if name in _PATH_SETTINGS else None
        if as_given and Path(as_given).expanduser().exists():
            return value  # a file or directory in use under that name: not left behind
        return stripped

    @cached_property
    def engine_chain(self) -> list[str]:
        """ASR_ENGINE is a comma-separated fallback chain, first choice first."""
        return [name.strip() for name in self.asr_engine.split(",") if name.strip()]

    @property
    def uses_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
