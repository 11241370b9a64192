"""The vendors' file engines built from plain configuration values (the gateway copies them from
its Settings: `ingest` never imports `gateway`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ingest.engines.base import EngineError, engine_name
from ingest.files.base import FileEngine
from ingest.files.retrying import RetryPolicy

VENDOR_FILE_ENGINES = ("deepgram", "google")


class FileEngineConfigError(ValueError):
    """The configuration cannot build the engine (missing key, inconsistent settings)."""


@dataclass(frozen=True)
class VendorFileConfig:
    """What the batch engines need, as plain values (see the README's Configuration table)."""

    deepgram_api_key: str | None = None  # DEEPGRAM_API_KEY
    deepgram_model: str = "nova-3"  # DEEPGRAM_MODEL
    deepgram_language: str | None = None  # DEEPGRAM_LANGUAGE
    deepgram_url: str | None = None  # DEEPGRAM_URL (ws:// or http://, the same base URL)
    deepgram_keyterms: tuple[str, ...] = ()  # DEEPGRAM_KEYTERMS, split on commas
    deepgram_file_timeout_s: float = 600.0  # DEEPGRAM_FILE_TIMEOUT_S
    gcp_model: str = "latest_long"  # GCP_RECORDINGS_MODEL, else GCP_SPEECH_MODEL
    gcp_endpoint: str | None = None  # GCP_SPEECH_ENDPOINT
    gcp_insecure: bool = False  # GCP_SPEECH_INSECURE
    gcp_operation_timeout_s: float = 1800.0  # GCP_OPERATION_TIMEOUT_S
    gcp_bucket: str | None = None  # GCP_RECORDINGS_BUCKET: audio through gs:// objects
    attempts: int = 4  # RECORDING_VENDOR_ATTEMPTS: tries per request, 429/5xx/timeouts
    max_retry_wait_s: float = 60.0  # a longer Retry-After fails the request (retryable)


def build_file_engine(
    name: str,
    config: VendorFileConfig,
    on_retry: Callable[[EngineError, float], None] | None = None,
) -> FileEngine:
    """The `deepgram` or `google` (alias `gcp`) file engine; `on_retry(error, wait_s)` is told of
    every retry (for a metrics counter)."""
    name = engine_name(name)
    retry = RetryPolicy(attempts=config.attempts, max_wait_s=config.max_retry_wait_s)
    if name == "deepgram":
        from ingest.files.deepgram import DeepgramFileEngine, DeepgramFileOptions

        if not config.deepgram_api_key:
            raise FileEngineConfigError("the deepgram file engine needs DEEPGRAM_API_KEY")
        options = DeepgramFileOptions(
            model=config.deepgram_model,
            language=config.deepgram_language,
            url=config.deepgram_url,
            keyterms=config.deepgram_keyterms,
            timeout_s=config.deepgram_file_timeout_s,
            retry=retry,
        )
        return DeepgramFileEngine(config.deepgram_api_key, options, on_retry)
    if name == "google":
        from ingest.files.google import GoogleFileEngine, GoogleFileOptions

        if config.gcp_insecure and not config.gcp_endpoint:
            raise FileEngineConfigError("GCP_SPEECH_INSECURE=true needs GCP_SPEECH_ENDPOINT")
        storage = None
        if config.gcp_bucket:
            from ingest.files.gcs import CloudStorage

            bucket = config.gcp_bucket.removeprefix("gs://").strip("/")
            if not bucket or "/" in bucket:
                raise FileEngineConfigError("GCP_RECORDINGS_BUCKET must be a bucket name")
            storage = CloudStorage(bucket)
        google = GoogleFileOptions(
            model=config.gcp_model,
            endpoint=config.gcp_endpoint,
            insecure=config.gcp_insecure,
            operation_timeout_s=config.gcp_operation_timeout_s,
            retry=retry,
        )
        return GoogleFileEngine(google, on_retry, storage)
    raise FileEngineConfigError(
        f"no vendor file engine {name!r}; vendors: {', '.join(VENDOR_FILE_ENGINES)}"
    )
