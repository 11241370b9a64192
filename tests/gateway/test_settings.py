"""Settings as deployments give them: values from files (a trailing newline), URLs checked at
startup with a sentence naming the variable, never at first use with a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.cli import settings_problems
from gateway.config import Settings


def from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    with pytest.raises(ValidationError) as refused:
        from_env(monkeypatch, **env)
    return settings_problems(refused.value)


def test_a_value_read_from_a_file_loses_its_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    # kubectl create secret --from-file keeps the file's last newline.
    settings = from_env(
        monkeypatch,
        DATABASE_URL="postgresql+asyncpg://gw@db:5432/meetings\n",
        REDIS_URL=" redis://cache:6379/0\n",
        JWT_PUBLIC_KEY_PATH="/etc/keys/jwt.pub\n",
        LOG_LEVEL="info\n",
    )
    assert settings.database_url == "postgresql+asyncpg://gw@db:5432/meetings"
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.jwt_public_key_path == Path("/etc/keys/jwt.pub")
    assert settings.log_level == "INFO"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("127.0.0.1:6379", "REDIS_URL: Redis URL must specify one of the following schemes"),
        ("redis://cache:port/0", "REDIS_URL: Port could not be cast to integer"),
    ],
)
def test_a_redis_url_that_cannot_work_is_refused_at_startup(
    monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    problems = refusal(monkeypatch, REDIS_URL=url)
    assert says in problems and "for example redis://host:6379/0" in problems


@pytest.mark.parametrize("url", ["sqlite://", "sqlite+aiosqlite:///:memory:"])
def test_an_in_memory_database_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    # One per pooled connection: migrated on one, missing on the others.
    assert "DATABASE_URL: names no SQLite file" in refusal(monkeypatch, DATABASE_URL=url)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"DATABASE_URL": "postgresql://gw@db:port/meetings"},
            "DATABASE_URL: has a port that is not a number",
        ),
        (
            {"INSIGHTS_BACKEND": "llm", "INSIGHTS_LLM_URL": "notaurl"},
            "INSIGHTS_LLM_URL: must be an http:// or https:// base URL",
        ),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.1,proxy"}, "FORWARDED_ALLOW_IPS: must be comma-separated"),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.0/33"}, "FORWARDED_ALLOW_IPS: must be comma-separated"),
        # uvicorn takes neither: host bits set, and `*` among others, each match nothing.
        ({"FORWARDED_ALLOW_IPS": "10.0.0.1/8"}, "FORWARDED_ALLOW_IPS: must be comma-separated"),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.0/8,*"}, "FORWARDED_ALLOW_IPS: must be comma-separated"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    problems = refusal(monkeypatch, **env)
    assert says in problems and "notaurl" not in problems and "port/" not in problems


def test_proxies_and_model_names_that_can_work_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = from_env(
        monkeypatch,
        FORWARDED_ALLOW_IPS="10.0.0.0/8, ::1,192.0.2.7",
        LOCAL_FINALS_MODEL="Systran/faster-whisper-small",
    )
    assert settings.local_finals_model == "Systran/faster-whisper-small"
    assert from_env(monkeypatch, FORWARDED_ALLOW_IPS="*").forwarded_allow_ips == "*"


def test_a_blank_redis_url_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    assert from_env(monkeypatch, REDIS_URL=" \n").redis_url is None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        # Accepted, then every token refused (PyJWT takes an empty audience as none).
        ({"JWT_AUDIENCE": ""}, "JWT_AUDIENCE: must not be empty"),
        ({"JWT_ISSUER": " "}, "JWT_ISSUER: must not be empty"),
        # Accepted, then finals written into the working directory.
        ({"OUTBOX_DIR": ""}, "OUTBOX_DIR: must not be empty"),
        ({"DEEPGRAM_MODEL": ""}, "DEEPGRAM_MODEL: must not be empty"),
        # Accepted, then every background round failed (a date before year 1, a lease's end).
        ({"TRANSCRIPT_RETENTION_DAYS": "1000000"}, "TRANSCRIPT_RETENTION_DAYS: must be at most"),
        ({"WEBHOOKS_LOG_RETENTION_DAYS": "1e9"}, "WEBHOOKS_LOG_RETENTION_DAYS: must be at most"),
        ({"RECORDING_LEASE_S": "1e15"}, "RECORDING_LEASE_S: must be at most"),
        ({"MEETING_IDLE_S": "1e15"}, "MEETING_IDLE_S: must be at most"),
        ({"LOCAL_ENGINE_WORKERS": "99999999999999999999"}, "LOCAL_ENGINE_WORKERS:"),
        # redis-py dropped a database that is no number and used 0.
        ({"REDIS_URL": "redis://cache:6379/abc"}, "REDIS_URL: names database 'abc'"),
        # A token fits neither a ?token= nor an Authorization line below 2 KiB.
        ({"HTTP_MAX_REQUEST_LINE_BYTES": "512"}, "HTTP_MAX_REQUEST_LINE_BYTES: must be at least"),
        # A rate is no duration: its bound is said as a count.
        ({"INGEST_FRAMES_PER_S": "1e10"}, "INGEST_FRAMES_PER_S: must be at most 2147483647"),
    ],
)
def test_values_that_were_accepted_then_failed_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    assert says in refusal(monkeypatch, **env)


@pytest.mark.parametrize(
    "name", ["TRANSCRIPT_RETENTION_DAYS", "LOCAL_ENGINE_WORKERS", "LOCAL_ENGINE_MAX_STREAMS"]
)
def test_an_empty_value_of_a_setting_unset_by_default_is_unset(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    assert getattr(from_env(monkeypatch, **{name: ""}), name.lower()) is None


def test_large_byte_sizes_and_long_durations_within_reason_are_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = from_env(
        monkeypatch,
        RECORDING_DISK_BUDGET_BYTES=str(1 << 40),
        TRANSCRIPT_RETENTION_DAYS="3650",
        WEBHOOKS_MAX_AGE_S=str(30 * 86400),
    )
    assert settings.recording_disk_budget_bytes == 1 << 40


def test_what_an_earlier_version_used_as_given_is_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Earlier versions took values as given: a SQLite file or outbox directory created under
    # a name ending in a newline holds data, and the key prefix names running replicas' keys.
    (tmp_path / "gw.db\n").write_bytes(b"")
    (tmp_path / "outbox\n").mkdir()
    settings = from_env(
        monkeypatch,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/gw.db\n",
        OUTBOX_DIR=f"{tmp_path}/outbox\n",
        RECORDINGS_DIR=f"{tmp_path}/recordings\n",  # nothing there yet: stripped
        REDIS_KEY_PREFIX="prod:\n",
    )
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path}/gw.db\n"
    assert settings.outbox_dir == tmp_path / "outbox\n"
    assert settings.recordings_dir == tmp_path / "recordings"
    assert settings.redis_key_prefix == "prod:\n"


@pytest.mark.parametrize(
    ("chain", "engines"),
    [("Deepgram", ["deepgram"]), ("gcp,LOCAL", ["google", "local"]), ("local", ["local"])],
)
def test_recordings_use_the_live_chains_engine_names(
    monkeypatch: pytest.MonkeyPatch, chain: str, engines: list[str]
) -> None:
    """One spelling for both: `ASR_ENGINE=Deepgram` sent recordings to the local engine, and
    `gcp` offered uploads an engine named "gcp" the docs call google."""
    from gateway.pipeline.recordings import build_file_engines

    settings = from_env(
        monkeypatch, ASR_ENGINE=chain, DEEPGRAM_API_KEY="k" * 40, LOCAL_RECORDINGS_MODEL="tiny.en"
    )
    assert list(build_file_engines(settings)) == engines


def test_the_notes_token_limit_reaches_the_llm_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.insights import insights_backend
    from ingest.insights.llm import LlmInsights

    settings = from_env(
        monkeypatch,
        INSIGHTS_BACKEND="llm",
        INSIGHTS_LLM_URL="http://127.0.0.1:9/v1",
        INSIGHTS_LLM_NOTES_MAX_TOKENS="512",
    )
    backend = insights_backend(settings)
    assert isinstance(backend, LlmInsights) and backend.config.notes_max_tokens == 512
