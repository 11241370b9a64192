"""ASR_ENGINE and the engine settings become a chain (gateway/engines.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config import Settings
from gateway.engines import EngineChain, EngineConfigError, UnknownEngine


def settings(**env: object) -> Settings:
    return Settings(**env)  # type: ignore[arg-type]


async def test_names_aliases_and_settings_make_the_chain() -> None:
    chain = EngineChain.from_settings(
        settings(
            asr_engine="Deepgram, gcp",
            deepgram_api_key="dg-key-0123456789",
            deepgram_url="ws://127.0.0.1:9",
            gcp_speech_endpoint="127.0.0.1:9",
            gcp_speech_insecure=True,
            gcp_stream_rotate_s=60,
            engine_breaker_failures=5,
            engine_retry_attempts=2,
            engine_replay_max_s=30,
        )
    )
    assert [engine.name for engine in chain.engines] == ["deepgram", "google"]
    assert chain.policy.breaker_failures == 5 and chain.policy.retry_attempts == 2
    assert chain.policy.replay_max_s == 30
    assert chain.engines[1].options.rotate_s == 60  # type: ignore[attr-defined]
    assert chain.serving("tr") == chain.engines and chain.serving("auto") == chain.engines[:1]
    await chain.aclose()


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"asr_engine": "deepgram"}, EngineConfigError),  # no key
        ({"asr_engine": "google", "gcp_speech_insecure": True}, EngineConfigError),
        ({"asr_engine": "local,whisperx"}, UnknownEngine),
        ({"asr_engine": "local,local"}, UnknownEngine),
        ({"asr_engine": " , "}, UnknownEngine),
    ],
)
def test_misconfiguration_is_refused_at_startup(env: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        EngineChain.from_settings(settings(**env))


def test_the_api_key_is_not_in_the_settings_repr() -> None:
    configured = settings(deepgram_api_key="dg-key-0123456789")
    assert "dg-key-0123456789" not in repr(configured) and "dg-key" not in str(configured)
    assert settings(deepgram_api_key="").deepgram_api_key is None


def test_a_key_read_from_a_secrets_file_loses_its_newline() -> None:
    loaded = settings(deepgram_api_key="dg-key\n", insights_llm_api_key="  \n")
    assert loaded.deepgram_api_key is not None
    assert loaded.deepgram_api_key.get_secret_value() == "dg-key"
    assert loaded.insights_llm_api_key is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"engine_open_timeout_s": float("inf")}, "engine_open_timeout_s"),
        ({"gcp_operation_timeout_s": float("nan")}, "gcp_operation_timeout_s"),
        ({"deepgram_url": "not a url"}, "deepgram_url"),
        ({"deepgram_url": "ftp://dg.example.com"}, "deepgram_url"),
    ],
)
def test_settings_no_engine_could_work_with_are_refused(env: dict, named: str) -> None:
    """A timeout of inf never gives up on a hung engine; a Deepgram URL without a scheme and
    host fails every stream at runtime: both are refused when the settings are read."""
    with pytest.raises(ValidationError) as refused:
        settings(**env)
    assert named in str(refused.value)


def test_deepgram_urls_of_every_scheme_are_taken() -> None:
    for url in ("ws://127.0.0.1:9", "wss://dg.internal", "https://api.deepgram.com"):
        assert settings(deepgram_url=url).deepgram_url == url


def test_an_engines_failures_are_logged_once_a_minute_and_counted_every_time() -> None:
    # A revoked vendor key sent every stream to the next engine, and only a metric said so.
    from structlog.testing import capture_logs

    from gateway.engines import LoggingReporter
    from ingest.engines.reporter import NoEngineReporter

    counted: list[tuple[str, str]] = []

    class Counting(NoEngineReporter):
        def engine_failed(self, engine: str, reason: str) -> None:
            counted.append((engine, reason))

    now = [0.0]
    reporter = LoggingReporter(Counting(), clock=lambda: now[0])
    with capture_logs() as logs:
        for second in range(0, 130, 10):
            now[0] = float(second)
            reporter.engine_failed("deepgram", "auth")
        reporter.engine_failed("local", "capacity")  # full, not failing: load
    assert len(counted) == 14
    lines = [(e["engine"], e["reason"], e["failures"]) for e in logs]
    assert lines == [("deepgram", "auth", 1), ("deepgram", "auth", 6), ("deepgram", "auth", 6)]
    assert all(e["log_level"] == "warning" for e in logs)
