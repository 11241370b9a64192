"""Configuration from the environment (documented in the README's Configuration table)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    jwt_public_key_path: Path = Path("./keys/jwt.pub")
    jwt_audience: str = "meetings"
    jwt_issuer: str = "our-app"
    jwt_leeway_s: float = Field(default=30.0, ge=0)

    database_url: str = "sqlite+aiosqlite:///./data/gateway.db"
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    redis_url: str | None = None
    redis_key_prefix: str = ""

    asr_engine: str = "local"
    local_engine_workers: int | None = Field(default=None, ge=1)  # unset: one per usable core
    local_engine_max_streams: int | None = Field(default=None, ge=1)  # unset: 8 per worker

    max_ws_clients_per_meeting: int = Field(default=20, ge=1)
    max_ingest_msg_bytes: int = Field(default=32768, ge=1024)
    ingest_sample_rate: int = Field(default=48000, ge=8000, le=48000)
    subscriber_msgs_per_s: float = Field(default=10.0, gt=0)
    ingest_frames_per_s: float = Field(default=50.0, gt=0)
    subscriber_queue_max: int = Field(default=1000, ge=1)
    subscriber_send_timeout_s: float = Field(default=10.0, gt=0)
    store_retry_s: float = Field(default=20.0, ge=0)
    ws_ping_interval_s: float = Field(default=20.0, gt=0)
    ws_ping_timeout_s: float = Field(default=20.0, gt=0)
    subscriber_queue_max_bytes: int = Field(default=1 << 20, ge=1024)

    log_level: str = "INFO"
    log_format: Literal["console", "json"] = "console"

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @cached_property
    def engine_chain(self) -> list[str]:
        """ASR_ENGINE is a comma-separated fallback chain, first choice first."""
        return [name.strip() for name in self.asr_engine.split(",") if name.strip()]

    @property
    def uses_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
