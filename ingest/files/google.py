"""Google Cloud Speech v1 `LongRunningRecognize` for recordings, through `google-cloud-speech`.

Each chunk is one long-running operation: the chunk goes inline as FLAC (Google takes at most
10 MB of inline audio per request; `chunk_seconds` of 240 keeps even noise-like audio, which
FLAC cannot shrink, near 7.7 MB), the operation is polled (`GetOperation`) until done, and each
poll's `LongRunningRecognizeMetadata.progress_percent` goes to the caller's `progress` callback
as a fraction of the chunk. A chunk that still encodes over the limit is cut in two at its
quietest point near the middle. Word and result times are relative to the audio sent, so they
are shifted by the chunk's offset (and the half's) to the file's time.

Diarization: Google's `latest_*` models do not support it, so the config asks for speakers
only with a model that does (`default`, `phone_call`, `video`, ...). With diarization, v1
returns the speaker-tagged words of the whole request in one extra last result; its words are
dealt back to the results they fall in, and a result spanning a speaker change becomes one
segment per turn. Speakers are `S0`, `S1`, ... (`speaker_tag` 1 is `S0`), as in the live engine.

With a Cloud Storage bucket (`GCP_RECORDINGS_BUCKET`, `ingest.files.gcs`), each chunk is
uploaded as a FLAC object and recognized from its `gs://` URI instead (no inline limit, so
chunks may be longer: `bucket_chunk_seconds`), and the object is deleted once its operation ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.api_core import exceptions as google_errors
from google.cloud.speech_v1 import SpeechAsyncClient
from google.cloud.speech_v1.types import cloud_speech

from ingest.engines.base import EngineError
from ingest.engines.google import REGIONS, google_language, grpc_error, speech_client
from ingest.files.base import SAMPLE_RATE, AudioChunk, FileEngine, FileOptions, FileSegment
from ingest.files.encoding import flac_bytes
from ingest.files.gcs import CloudStorage
from ingest.files.progress import CHUNK_PROGRESS
from ingest.files.retrying import RetryPolicy, with_retries

MAX_INLINE_BYTES = 10_000_000  # Google's inline audio limit is 10 MB (10,485,760 bytes)
CHUNK_SECONDS = 240.0  # raw 16-bit PCM of 240 s is 7.68 MB: FLAC stays under the limit
# Models documented as not supporting speaker diarization.
NO_DIARIZATION_PREFIXES = ("latest_", "chirp", "telephony")
QUIET_WINDOW = SAMPLE_RATE // 50  # 20 ms

ProgressCallback = Callable[[float], None]  # fraction of the chunk done, 0..1


@dataclass(frozen=True)
class GoogleFileOptions:
    model: str = "latest_long"
    endpoint: str | None = None  # host:port; None: Google's default
    insecure: bool = False  # plaintext channel (emulators, tests)
    max_speakers: int = 6
    chunk_seconds: float = CHUNK_SECONDS  # audio inline
    bucket_chunk_seconds: float = 600.0  # audio through Cloud Storage (Google allows 480 min)
    max_concurrency: int = 4  # operations of one job at once
    rpc_timeout_s: float = 60.0  # each LongRunningRecognize / GetOperation call
    operation_timeout_s: float = 1800.0  # one chunk's operation, from submit to done
    poll_initial_s: float = 1.0  # first wait between polls; grows by half up to poll_max_s
    poll_max_s: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_inline_bytes: int = MAX_INLINE_BYTES


def diarization_supported(model: str) -> bool:
    return not model.startswith(NO_DIARIZATION_PREFIXES)


class GoogleFileEngine(FileEngine):
    name = "google"
    # `transcribe_chunk` takes `progress=` (a `ProgressCallback`), or reports to the job's
    # `ingest.files.progress.CHUNK_PROGRESS` sink.
    reports_progress = True

    def __init__(
        self,
        options: GoogleFileOptions | None = None,
        on_retry: Callable[[EngineError, float], None] | None = None,
        storage: CloudStorage | None = None,
    ) -> None:
        self.options = options or GoogleFileOptions()
        self._storage = storage  # None: audio goes inline
        self.chunk_seconds = (
            self.options.chunk_seconds if storage is None else self.options.bucket_chunk_seconds
        )
        self.max_concurrency = self.options.max_concurrency
        self.can_diarize = diarization_supported(self.options.model)
        self._on_retry = on_retry
        self._client: SpeechAsyncClient | None = None
        self._channel: grpc.aio.Channel | None = None

    def supported_languages(self) -> frozenset[str]:
        return frozenset(REGIONS)

    def supports(self, language: str) -> bool:
        return language.split("-")[0] in REGIONS

    def _client_now(self) -> SpeechAsyncClient:
        """Built on first use: grpc.aio channels belong to the running event loop."""
        if self._client is None:
            options = self.options
            self._client, self._channel = speech_client(options.endpoint, options.insecure)
        return self._client

    def recognition_config(self, options: FileOptions) -> cloud_speech.RecognitionConfig:
        config = cloud_speech.RecognitionConfig(
            encoding=cloud_speech.RecognitionConfig.AudioEncoding.FLAC,
            sample_rate_hertz=SAMPLE_RATE,
            audio_channel_count=1,
            language_code=google_language(options.language),
            enable_automatic_punctuation=True,
            enable_word_time_offsets=True,
            enable_word_confidence=True,
            model=self.options.model,
        )
        if options.diarize and self.can_diarize:
            config.diarization_config = cloud_speech.SpeakerDiarizationConfig(
                enable_speaker_diarization=True,
                min_speaker_count=1,
                max_speaker_count=self.options.max_speakers,
            )
        return config

    async def transcribe_chunk(
        self,
        chunk: AudioChunk,
        options: FileOptions,
        progress: ProgressCallback | None = None,
    ) -> list[FileSegment]:
        if progress is None and (sink := CHUNK_PROGRESS.get()) is not None:
            progress = functools.partial(sink, chunk)  # the job's sink (ingest.files.progress)
        if chunk.silent or not len(chunk.samples):
            if progress is not None:
                progress(1.0)
            return []  # no speech: not worth a (billed) operation
        pieces = self._inline_pieces(chunk.samples)
        total = max(1, len(chunk.samples))
        segments: list[FileSegment] = []
        done = 0
        for start, samples, flac in pieces:
            share, before = len(samples) / total, done / total

            def report(fraction: float, share: float = share, before: float = before) -> None:
                if progress is not None:
                    progress(min(1.0, before + share * fraction))

            segments += await self._recognize(
                flac, chunk.start_ms + start * 1000 // SAMPLE_RATE, options, report
            )
            done += len(samples)
            report(1.0)
        return segments

    def _inline_pieces(
        self, samples: np.ndarray, start: int = 0
    ) -> list[tuple[int, np.ndarray, bytes]]:
        """The samples as (first sample, samples, FLAC) pieces whose FLAC fits inline."""
        flac = flac_bytes(samples)
        if (
            self._storage is not None
            or len(flac) <= self.options.max_inline_bytes
            or len(samples) < SAMPLE_RATE
        ):
            return [(start, samples, flac)]
        cut = quietest_cut(samples)
        return self._inline_pieces(samples[:cut], start) + self._inline_pieces(
            samples[cut:], start + cut
        )

    async def _recognize(
        self,
        flac: bytes,
        offset_ms: int,
        options: FileOptions,
        report: ProgressCallback,
    ) -> list[FileSegment]:
        config = self.recognition_config(options)
        diarized = "diarization_config" in config
        storage, name = self._storage, f"{uuid.uuid4().hex}.flac"
        if storage is None:
            audio = cloud_speech.RecognitionAudio(content=flac)
        else:
            uri = await with_retries(
                lambda: storage.upload(name, flac), self.options.retry, self._on_retry
            )
            audio = cloud_speech.RecognitionAudio(uri=uri)

        async def attempt() -> list[FileSegment]:
            response = await self._run_operation(config, audio, report)
            return response_segments(response, diarized, offset_ms)

        try:
            return await with_retries(attempt, self.options.retry, self._on_retry)
        finally:
            if storage is not None:
                await asyncio.shield(storage.delete(name))

    async def _run_operation(
        self,
        config: cloud_speech.RecognitionConfig,
        audio: cloud_speech.RecognitionAudio,
        report: ProgressCallback,
    ) -> cloud_speech.LongRunningRecognizeResponse:
        o = self.options
        client = self._client_now()
        operation = None
        try:
            async with asyncio.timeout(o.operation_timeout_s):
                operation = await client.long_running_recognize(
                    config=config, audio=audio, retry=None, timeout=o.rpc_timeout_s
                )
                wait, poll_failures = o.poll_initial_s, 0
                while not operation.operation.done:
                    await asyncio.sleep(wait)
                    wait = min(o.poll_max_s, wait * 1.5)
                    try:
                        await operation.done(retry=None)
                    except google_errors.GoogleAPICallError as exc:
                        # A failed poll is not a failed operation: poll again rather than
                        # submit (and pay for) the audio twice.
                        poll_failures += 1
                        error = grpc_error(exc)
                        if not error.retryable or poll_failures >= o.retry.attempts:
                            raise error from None
                        continue
                    poll_failures = 0
                    metadata = operation.metadata
                    if metadata is not None and not operation.operation.done:
                        report(max(0, min(100, metadata.progress_percent)) / 100)
                if operation.operation.HasField("error"):
                    raise operation_error(operation.operation.error.code)
                return await operation.result()  # type: ignore[no-any-return]
        except TimeoutError:
            await _cancel(operation)
            raise EngineError("google operation timed out", reason="timeout") from None
        except asyncio.CancelledError:
            await _cancel(operation)  # the job was cancelled: stop paying for it
            raise
        except google_errors.GoogleAPICallError as exc:
            raise grpc_error(exc) from None

    async def aclose(self) -> None:
        if self._storage is not None:
            self._storage.close()
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()
        elif self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.transport.close()
        self._client = self._channel = None


async def _cancel(operation: object | None) -> None:
    if operation is None:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            await operation.cancel()  # type: ignore[attr-defined]


def operation_error(code: int) -> EngineError:
    """An `EngineError` for an operation that ended with a `google.rpc.Status` code."""
    try:
        status = next(s for s in grpc.StatusCode if s.value[0] == code)
    except StopIteration:
        status = grpc.StatusCode.UNKNOWN
    return grpc_error(google_errors.from_grpc_status(status, "operation failed"))


def quietest_cut(samples: np.ndarray) -> int:
    """The sample index of the quietest 20 ms in the middle third (where to split a chunk)."""
    third = len(samples) // 3
    middle = samples[third : 2 * third]
    windows = len(middle) // QUIET_WINDOW
    if windows < 1:
        return len(samples) // 2
    energy = (middle[: windows * QUIET_WINDOW].reshape(windows, QUIET_WINDOW) ** 2).sum(axis=1)
    return third + int(np.argmin(energy)) * QUIET_WINDOW + QUIET_WINDOW // 2


def _ms(value: datetime.timedelta | None) -> int:
    return 0 if value is None else max(0, round(value.total_seconds() * 1000))


def _speaker(tag: int) -> str | None:
    return f"S{tag - 1}" if tag else None


def _is_speaker_summary(results: Sequence[cloud_speech.SpeechRecognitionResult]) -> bool:
    """Whether the last result is diarization's summary: all words so far, speaker-tagged."""
    if len(results) < 2 or not results[-1].alternatives:
        return False
    words = results[-1].alternatives[0].words
    if not words or not all(w.speaker_tag for w in words):
        return False
    return _ms(words[0].start_time) < _ms(results[-2].result_end_time)


def response_segments(
    response: cloud_speech.LongRunningRecognizeResponse, diarized: bool, offset_ms: int = 0
) -> list[FileSegment]:
    """One segment per result (one per speaker turn with diarization), shifted by `offset_ms`."""
    results = list(response.results)
    tagged: list[cloud_speech.WordInfo] | None = None
    if diarized and _is_speaker_summary(results):
        tagged = list(results[-1].alternatives[0].words)
        results = results[:-1]
    segments: list[FileSegment] = []
    previous_end = 0
    for result in results:
        end = _ms(result.result_end_time)
        begin, previous_end = previous_end, max(previous_end, end)
        if not result.alternatives:
            continue
        best = result.alternatives[0]
        text = best.transcript.strip()
        if not text:
            continue
        if tagged is not None:
            words = [w for w in tagged if begin <= _ms(w.start_time) < max(end, begin + 1)]
        else:
            words = list(best.words)
        confidence = best.confidence or None
        turns: list[list[cloud_speech.WordInfo]] = []
        for word in words:
            if diarized and turns and turns[-1][-1].speaker_tag == word.speaker_tag:
                turns[-1].append(word)
            elif diarized or not turns:
                turns.append([word])
            else:
                turns[-1].append(word)
        if len(turns) > 1:
            for turn in turns:
                segments.append(
                    FileSegment(
                        text=" ".join(w.word for w in turn),
                        start_ms=offset_ms + _ms(turn[0].start_time),
                        end_ms=offset_ms + _ms(turn[-1].end_time),
                        speaker=_speaker(turn[0].speaker_tag),
                        confidence=confidence,
                    )
                )
            continue
        # The words' span when there are words (a result's end includes the pause after it).
        start = _ms(words[0].start_time) if words else begin
        stop = _ms(words[-1].end_time) if words else end
        segments.append(
            FileSegment(
                text=text,
                start_ms=offset_ms + start,
                end_ms=offset_ms + max(stop, start),
                speaker=_speaker(words[0].speaker_tag) if diarized and words else None,
                confidence=confidence,
            )
        )
    return segments
