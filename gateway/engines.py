"""The ASR engine chain named by `ASR_ENGINE` (comma-separated, first choice first), built from
settings. The chain and failover logic live in `ingest.engines.chain`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from structlog.stdlib import get_logger

from gateway.config import Settings
from ingest.engines import chain
from ingest.engines.base import CAPACITY, ENGINE_ALIASES, Engine, engine_name
from ingest.engines.reporter import EngineReporter, NoEngineReporter


def _local(settings: Settings, reporter: EngineReporter) -> Engine:
    from ingest.engines.local.engine import LocalEngine
    from ingest.engines.local.whisper import finals_model_from_setting

    return LocalEngine(
        workers=settings.local_engine_workers,
        max_streams=settings.local_engine_max_streams,
        finals=finals_model_from_setting(settings.local_finals_model),
        tenant_share=settings.local_engine_tenant_share,
        stall_timeout_s=settings.local_engine_stall_timeout_s,
    )


def _deepgram(settings: Settings, reporter: EngineReporter) -> Engine:
    from ingest.engines.deepgram import DeepgramEngine, DeepgramOptions

    if settings.deepgram_api_key is None:
        raise EngineConfigError("the deepgram engine needs DEEPGRAM_API_KEY")
    keyterms = tuple(t.strip() for t in settings.deepgram_keyterms.split(",") if t.strip())
    options = DeepgramOptions(
        model=settings.deepgram_model,
        language=settings.deepgram_language,
        url=settings.deepgram_url,
        keyterms=keyterms,
        send_batch_ms=settings.deepgram_send_batch_ms,
    )
    return DeepgramEngine(settings.deepgram_api_key.get_secret_value(), options)


def _google(settings: Settings, reporter: EngineReporter) -> Engine:
    from ingest.engines.google import GoogleEngine, GoogleOptions

    if settings.gcp_speech_insecure and not settings.gcp_speech_endpoint:
        raise EngineConfigError("GCP_SPEECH_INSECURE=true needs GCP_SPEECH_ENDPOINT")
    options = GoogleOptions(
        model=settings.gcp_speech_model,
        endpoint=settings.gcp_speech_endpoint,
        insecure=settings.gcp_speech_insecure,
        rotate_s=settings.gcp_stream_rotate_s,
    )
    return GoogleEngine(options, reporter)


ENGINE_FACTORIES: dict[str, Callable[[Settings, EngineReporter], Engine]] = {
    "local": _local,
    "deepgram": _deepgram,
    "google": _google,
}


class UnknownEngine(ValueError):
    pass


class EngineConfigError(ValueError):
    pass


def policy_from_settings(settings: Settings) -> chain.ChainPolicy:
    return chain.ChainPolicy(
        breaker_failures=settings.engine_breaker_failures,
        breaker_cooldown_s=settings.engine_breaker_cooldown_s,
        breaker_successes=settings.engine_breaker_successes,
        open_timeout_s=settings.engine_open_timeout_s,
        failover_open_timeout_s=settings.engine_failover_open_timeout_s,
        retry_attempts=settings.engine_retry_attempts,
        replay_max_s=settings.engine_replay_max_s,
    )


def engine_names(settings: Settings) -> list[str]:
    """The chain's engine names (aliases resolved), or `UnknownEngine`/`EngineConfigError`
    saying what is wrong: `serve` checks this before starting."""
    names = [engine_name(name) for name in settings.engine_chain]
    unknown = [name for name in names if name not in ENGINE_FACTORIES]
    if unknown:
        raise UnknownEngine(
            f"unknown ASR engine(s) {', '.join(unknown)} in ASR_ENGINE; available: "
            + ", ".join(sorted([*ENGINE_FACTORIES, *ENGINE_ALIASES]))
        )
    if not names:
        raise UnknownEngine("ASR_ENGINE names no engine")
    if len(set(names)) != len(names):
        raise UnknownEngine("ASR_ENGINE names an engine twice")
    if "deepgram" in names and settings.deepgram_api_key is None:
        raise EngineConfigError("the deepgram engine needs DEEPGRAM_API_KEY")
    if "google" in names and settings.gcp_speech_insecure and not settings.gcp_speech_endpoint:
        raise EngineConfigError("GCP_SPEECH_INSECURE=true needs GCP_SPEECH_ENDPOINT")
    return names


def google_credentials_problem(settings: Settings) -> str | None:
    """Why the google engine's credentials file cannot serve (every stream would be refused
    `auth` while readiness said an engine could take one), or None: checked once at start, as
    the deepgram key is. Without GOOGLE_APPLICATION_CREDENTIALS the engine uses Application
    Default Credentials (gcloud's file, or the metadata server of GCE/GKE, which may answer only
    seconds after a pod starts): not looked up here. An emulator's plaintext endpoint needs
    none."""
    if "google" not in engine_names(settings) or settings.gcp_speech_insecure:
        return None
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")  # as google-auth reads it
    if not path:
        return None
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        google.auth.load_credentials_from_file(path)
    except DefaultCredentialsError as exc:  # its message names the file and what is wrong
        return f"GOOGLE_APPLICATION_CREDENTIALS: the google engine cannot use it: {exc}"
    except OSError as exc:  # a directory (a Secret's mount, not its file), unreadable
        reason = exc.strerror or type(exc).__name__
        return f"GOOGLE_APPLICATION_CREDENTIALS: the google engine cannot read {path!r}: {reason}"
    return None


log = get_logger("gateway.engines")

# An engine's failures are logged, not only counted: a revoked or mistyped vendor key sent
# every stream to the next engine, and only a metric said so. At most one line per engine and
# reason a minute (with how many since the last), however many streams fail.
LOG_EVERY_S = 60.0


class LoggingReporter:
    """The metrics' EngineReporter, with a warning for an engine's failures (not for a full
    engine's refusals, which are load): the reason word only, never a vendor's message."""

    def __init__(self, reporter: EngineReporter, clock: Callable[[], float] = time.monotonic):
        self._reporter = reporter
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._since: dict[tuple[str, str], int] = {}

    def engine_opened(self, engine: str) -> None:
        self._reporter.engine_opened(engine)

    def engine_failed(self, engine: str, reason: str) -> None:
        self._reporter.engine_failed(engine, reason)
        if reason == CAPACITY:
            return
        key, now = (engine, reason), self._clock()
        self._since[key] = self._since.get(key, 0) + 1
        last = self._last.get(key)
        if last is None or now - last >= LOG_EVERY_S:
            log.warning(
                "speech engine refused streams",
                engine=engine,
                reason=reason,
                failures=self._since.pop(key),
            )
            self._last[key] = now

    def engine_failover(self, from_engine: str, to_engine: str) -> None:
        self._reporter.engine_failover(from_engine, to_engine)

    def engine_rotated(self, engine: str) -> None:
        self._reporter.engine_rotated(engine)


class EngineChain(chain.EngineChain):
    @classmethod
    def from_settings(
        cls, settings: Settings, reporter: EngineReporter | None = None
    ) -> EngineChain:
        names = engine_names(settings)
        reporter = LoggingReporter(reporter or NoEngineReporter())
        engines = [ENGINE_FACTORIES[name](settings, reporter) for name in names]
        return cls(engines, policy_from_settings(settings), reporter)
