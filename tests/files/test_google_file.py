"""GoogleFileEngine against the LongRunningRecognize + Operations fake, through the official
`google-cloud-speech` client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.auth.credentials import AnonymousCredentials

from ingest.engines.base import EngineError
from ingest.files.base import SAMPLE_RATE, AudioChunk, FileOptions
from ingest.files.encoding import decode_s16, flac_bytes, to_s16
from ingest.files.gcs import CloudStorage
from ingest.files.google import GoogleFileEngine, quietest_cut
from ingest.files.pipeline import recording_chunks, transcribe_chunks
from ingest.files.progress import CHUNK_PROGRESS
from ingest.files.retrying import RetryPolicy
from tests.engines.batch_script import TimedScript
from tests.engines.fake_google_batch import FakeCloudStorage, FakeGoogleBatch
from tests.files.vendor_fakes import google_engine, mp3_of, tone_samples
from tests.ingest.helpers import load_fixture
from tests.util import eventually

# Speaker 0 says "w11 w12", speaker 1 "w13"; after a pause speaker 0 says "w21 w22".
TWO_SPEAKERS = ([11, 12, 113], [21, 22])


@pytest.fixture
async def fake() -> AsyncIterator[FakeGoogleBatch]:
    fake = await FakeGoogleBatch().start()
    yield fake
    await fake.stop()


def chunk(samples: np.ndarray, start_ms: int = 0, index: int = 0) -> AudioChunk:
    return AudioChunk(index=index, start_ms=start_ms, samples=samples)


async def test_diarized_speakers_with_a_model_that_diarizes(fake: FakeGoogleBatch) -> None:
    engine = google_engine(fake, model="video")
    assert engine.can_diarize
    segments = await engine.transcribe_chunk(chunk(tone_samples(*TWO_SPEAKERS)), FileOptions("en"))
    await engine.aclose()
    assert [(s.text, s.speaker) for s in segments] == [
        ("w11 w12", "S0"), ("w13", "S1"), ("w21 w22", "S0"),
    ]  # fmt: skip
    assert [(s.start_ms, s.end_ms) for s in segments] == [(0, 450), (500, 700), (1750, 2200)]
    (operation,) = fake.operations
    config = operation.request.config
    assert config.diarization_config.enable_speaker_diarization
    assert config.model == "video"
    # Inline FLAC, 16 kHz mono, lossless: the fake decodes exactly the chunk's samples.
    audio = operation.request.audio.content
    assert audio[:4] == b"fLaC" and config.encoding == config.AudioEncoding.FLAC
    assert config.sample_rate_hertz == SAMPLE_RATE and config.audio_channel_count == 1
    decoded, rate = decode_s16(audio)
    assert rate == SAMPLE_RATE
    assert np.array_equal(decoded, to_s16(tone_samples(*TWO_SPEAKERS)))


async def test_latest_models_get_no_diarization_config(fake: FakeGoogleBatch) -> None:
    """Google's `latest_*` models refuse diarization (the fake answers INVALID_ARGUMENT)."""
    engine = google_engine(fake, model="latest_long")
    assert not engine.can_diarize
    segments = await engine.transcribe_chunk(chunk(tone_samples(*TWO_SPEAKERS)), FileOptions("en"))
    await engine.aclose()
    assert "diarization_config" not in fake.operations[0].request.config
    assert [(s.text, s.speaker) for s in segments] == [("w11 w12 w13", None), ("w21 w22", None)]


async def test_diarize_false_asks_for_no_speakers(fake: FakeGoogleBatch) -> None:
    engine = google_engine(fake, model="phone_call")
    segments = await engine.transcribe_chunk(
        chunk(tone_samples(*TWO_SPEAKERS)), FileOptions("en", diarize=False)
    )
    await engine.aclose()
    assert "diarization_config" not in fake.operations[0].request.config
    assert [s.speaker for s in segments] == [None, None]


async def test_progress_is_reported_from_the_operation_metadata(fake: FakeGoogleBatch) -> None:
    fake.progress_step = 20
    engine = google_engine(fake, model="video")
    seen: list[float] = []
    await engine.transcribe_chunk(
        chunk(tone_samples([11])), FileOptions("en"), progress=seen.append
    )
    await engine.aclose()
    assert seen == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert fake.operations[0].polls == 5


async def test_offsets_are_stitched_across_chunks(fake: FakeGoogleBatch) -> None:
    engine = google_engine(fake, model="video")
    first = await engine.transcribe_chunk(
        chunk(tone_samples([11, 12]), start_ms=0), FileOptions("en")
    )
    second = await engine.transcribe_chunk(
        chunk(tone_samples([21, 122]), start_ms=240_000, index=1), FileOptions("en")
    )
    await engine.aclose()
    assert [(s.text, s.start_ms, s.end_ms, s.speaker) for s in first + second] == [
        ("w11 w12", 0, 450, "S0"),
        ("w21", 240_000, 240_200, "S0"),
        ("w22", 240_250, 240_450, "S1"),
    ]


async def test_a_chunk_over_the_inline_limit_is_split_at_a_pause(fake: FakeGoogleBatch) -> None:
    """Each piece is its own operation; times come back in the file's time, in order, and the
    progress callback covers the whole chunk once."""
    samples = tone_samples([11, 12], [13, 14], [15, 16], [17, 18])
    limit = len(flac_bytes(samples)) * 2 // 3
    engine = google_engine(fake, model="latest_long", max_inline_bytes=limit)
    seen: list[float] = []
    segments = await engine.transcribe_chunk(
        chunk(samples, start_ms=30_000), FileOptions("en"), progress=seen.append
    )
    await engine.aclose()
    assert len(fake.operations) >= 2
    assert all(len(o.request.audio.content) <= limit for o in fake.operations)
    assert [s.text for s in segments] == ["w11 w12", "w13 w14", "w15 w16", "w17 w18"]
    utterance_ms = 2 * 250 + 1000
    assert [s.start_ms for s in segments] == [30_000 + i * utterance_ms for i in range(4)]
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_quietest_cut_is_in_a_pause() -> None:
    samples = tone_samples([11, 12], [13, 14])
    cut = quietest_cut(samples)
    assert samples[cut] == 0 and len(samples) // 3 <= cut <= 2 * len(samples) // 3


@pytest.mark.parametrize(
    "codes",
    [[grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE],
     [grpc.StatusCode.INTERNAL]],
)  # fmt: skip
async def test_rate_limits_and_server_errors_are_retried(
    fake: FakeGoogleBatch, codes: list[grpc.StatusCode]
) -> None:
    fake.fail_codes = list(codes)
    retries: list[str] = []
    engine = google_engine(fake, model="video")
    engine._on_retry = lambda error, wait: retries.append(error.reason)
    segments = await engine.transcribe_chunk(chunk(tone_samples([11])), FileOptions("en"))
    await engine.aclose()
    assert [s.text for s in segments] == ["w11"]
    assert fake.fail_codes == [] and len(fake.operations) == 1
    names = {grpc.StatusCode.RESOURCE_EXHAUSTED: "rate_limited"}
    assert retries == [names.get(c, "server_error") for c in codes]


async def test_an_operation_that_fails_is_retried(fake: FakeGoogleBatch) -> None:
    fake.operation_errors = [grpc.StatusCode.INTERNAL]
    engine = google_engine(fake, model="video")
    segments = await engine.transcribe_chunk(chunk(tone_samples([11])), FileOptions("en"))
    await engine.aclose()
    assert [s.text for s in segments] == ["w11"]
    assert len(fake.operations) == 2


async def test_a_failed_poll_polls_again_without_resubmitting(fake: FakeGoogleBatch) -> None:
    fake.poll_fail_codes = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    engine = google_engine(fake, model="video")
    segments = await engine.transcribe_chunk(chunk(tone_samples([11])), FileOptions("en"))
    await engine.aclose()
    assert [s.text for s in segments] == ["w11"]
    assert fake.poll_fail_codes == [] and len(fake.operations) == 1


async def test_server_errors_give_up_after_the_attempts(fake: FakeGoogleBatch) -> None:
    fake.fail_codes = [grpc.StatusCode.UNAVAILABLE] * 10
    engine = google_engine(fake, retry=RetryPolicy(attempts=3, backoff_s=0.01))
    with pytest.raises(EngineError) as caught:
        await engine.transcribe_chunk(chunk(tone_samples([11])), FileOptions("en"))
    await engine.aclose()
    assert caught.value.retryable and caught.value.reason == "server_error"
    assert len(fake.fail_codes) == 7


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED]
)
async def test_auth_failure_is_not_retried(fake: FakeGoogleBatch, code: grpc.StatusCode) -> None:
    fake.reject_code = code
    engine = google_engine(fake)
    with pytest.raises(EngineError) as caught:
        await engine.transcribe_chunk(chunk(tone_samples([11])), FileOptions("en"))
    await engine.aclose()
    assert not caught.value.retryable and caught.value.reason == "auth"
    assert fake.rejected == 1


@pytest.mark.parametrize(
    ("language", "code"), [("en", "en-US"), ("tr", "tr-TR"), ("en-gb", "en-GB"), ("de", "de-DE")]
)
async def test_language_is_passed_through(fake: FakeGoogleBatch, language: str, code: str) -> None:
    engine = google_engine(fake)
    await engine.transcribe_chunk(chunk(tone_samples([11])), FileOptions(language))
    await engine.aclose()
    assert fake.operations[0].request.config.language_code == code
    assert engine.supports(language) and not engine.supports("auto")


async def test_cancelling_the_job_cancels_the_operation(fake: FakeGoogleBatch) -> None:
    fake.progress_step = 0  # never finishes
    engine = google_engine(fake)
    task = asyncio.create_task(
        engine.transcribe_chunk(chunk(tone_samples([11])), FileOptions("en"))
    )
    await eventually(lambda: bool(fake.operations) and fake.operations[0].polls >= 2, within=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await engine.aclose()
    assert fake.operations[0].cancelled


async def test_an_operation_past_its_deadline_times_out(fake: FakeGoogleBatch) -> None:
    fake.progress_step = 0
    engine = google_engine(fake, operation_timeout_s=0.5, retry=RetryPolicy(attempts=1))
    with pytest.raises(EngineError) as caught:
        await engine.transcribe_chunk(chunk(tone_samples([11])), FileOptions("en"))
    await engine.aclose()
    assert caught.value.retryable and caught.value.reason == "timeout"
    assert fake.operations[0].cancelled


async def test_real_speech_in_two_chunks_is_stitched_in_file_time() -> None:
    """Real human speech cut at a pause into two chunks: each chunk goes as lossless FLAC, the
    fake aligns the fixture's transcript to it, and the segments come back in file time."""
    name = "librivox_austen_16k_mono.wav"
    fixture = load_fixture(name)
    fake = await FakeGoogleBatch(script=TimedScript.from_fixture(name)).start()
    pcm = np.frombuffer(fixture.pcm, "<i2")
    cut_ms = (fixture.spans_ms[1][1] + fixture.spans_ms[2][0]) // 2  # the pause after sentence 2
    cut = cut_ms * SAMPLE_RATE // 1000
    samples = pcm.astype(np.float32) / 32768
    try:
        engine = google_engine(fake, model="video")
        segments = await engine.transcribe_chunk(chunk(samples[:cut]), FileOptions("en"))
        segments += await engine.transcribe_chunk(
            chunk(samples[cut:], start_ms=cut_ms, index=1), FileOptions("en")
        )
        await engine.aclose()
    finally:
        await fake.stop()
    assert len(fake.operations) == 2
    decoded, _ = decode_s16(fake.operations[1].request.audio.content)
    assert np.array_equal(decoded, pcm[cut:])  # real speech, lossless
    assert [s.text for s in segments] == fixture.sentences
    assert [s.speaker for s in segments] == ["S0", "S1", "S0", "S1", "S0"]
    for segment, (start_ms, end_ms) in zip(segments, fixture.spans_ms, strict=True):
        assert abs(segment.start_ms - start_ms) <= 100 and segment.end_ms <= end_ms + 100


async def test_with_a_bucket_chunks_go_through_cloud_storage(fake: FakeGoogleBatch) -> None:
    """Uploaded as a FLAC object, recognized from its gs:// URI (never split for the inline
    limit), and the object deleted once the operation is done."""
    storage = await FakeCloudStorage().start()
    fake.storage = storage
    uploader = CloudStorage("meetings-audio", storage_url=storage.url,
                            credentials=AnonymousCredentials())  # fmt: skip
    engine = google_engine(fake, model="video", max_inline_bytes=1000)
    engine = GoogleFileEngine(engine.options, storage=uploader)
    assert engine.chunk_seconds == engine.options.bucket_chunk_seconds
    try:
        segments = await engine.transcribe_chunk(
            chunk(tone_samples(*TWO_SPEAKERS), start_ms=600_000), FileOptions("en")
        )
        await engine.aclose()
    finally:
        await storage.stop()
    assert [(s.text, s.start_ms, s.speaker) for s in segments] == [
        ("w11 w12", 600_000, "S0"), ("w13", 600_500, "S1"), ("w21 w22", 601_750, "S0"),
    ]  # fmt: skip
    ((bucket, name, content_type),) = storage.uploads
    assert bucket == "meetings-audio" and content_type == "audio/flac"
    (operation,) = fake.operations
    assert operation.request.audio.uri == f"gs://{bucket}/{name}"
    assert "content" not in operation.request.audio
    assert storage.deleted == [(bucket, name)] and storage.objects == {}


async def test_an_unreachable_bucket_fails_retryably_before_any_operation(
    fake: FakeGoogleBatch,
) -> None:
    uploader = CloudStorage(
        "b", storage_url="http://127.0.0.1:9", credentials=AnonymousCredentials()
    )
    engine = GoogleFileEngine(google_engine(fake).options, storage=uploader)
    with pytest.raises(EngineError) as caught:
        await engine.transcribe_chunk(chunk(tone_samples([11])), FileOptions("en"))
    await engine.aclose()
    assert caught.value.retryable and caught.value.reason == "connect"
    assert fake.operations == []


async def test_a_silent_chunk_costs_no_operation(fake: FakeGoogleBatch) -> None:
    engine = google_engine(fake)
    seen: list[float] = []
    quiet = AudioChunk(0, 0, np.zeros(SAMPLE_RATE * 5, np.float32), speech_ms=0)
    assert await engine.transcribe_chunk(quiet, FileOptions("en"), progress=seen.append) == []
    await engine.aclose()
    assert fake.operations == [] and seen == [1.0]


async def test_the_pipeline_reports_each_chunks_progress_through_the_job_sink(
    tmp_path: Path,
) -> None:
    """The runner sets CHUNK_PROGRESS around a job; the pipeline's own calls (no `progress=`)
    then report every chunk's operation progress to it, and the segments land in file time.
    Real speech as MP3, decoded and cut at pauses by the pipeline."""
    name = "librivox_austen_16k_mono.wav"
    fixture = load_fixture(name)
    fake = await FakeGoogleBatch(script=TimedScript.from_fixture(name), progress_step=50).start()
    engine = google_engine(fake, model="video", chunk_seconds=10.0)
    path = tmp_path / "austen.mp3"
    path.write_bytes(mp3_of(np.frombuffer(fixture.pcm, "<i2")))
    reports: list[tuple[int, float]] = []
    token = CHUNK_PROGRESS.set(lambda chunk, fraction: reports.append((chunk.index, fraction)))
    try:
        results = [
            (chunk, segments)
            async for chunk, segments in transcribe_chunks(
                recording_chunks(path, engine), engine, FileOptions("en")
            )
        ]
    finally:
        CHUNK_PROGRESS.reset(token)
        await engine.aclose()
        await fake.stop()
    chunks = [chunk for chunk, _ in results]
    assert len(chunks) >= 3 and len(fake.operations) == len([c for c in chunks if not c.silent])
    for chunk in chunks:
        assert [f for i, f in reports if i == chunk.index] == (
            [1.0] if chunk.silent else [0.5, 1.0]
        )
    segments = [s for _, found in results for s in found]
    assert " ".join(s.text for s in segments) == " ".join(fixture.sentences)
    assert [s.start_ms for s in segments] == sorted(s.start_ms for s in segments)
    assert abs(segments[0].start_ms - fixture.spans_ms[0][0]) <= 150
    assert segments[-1].end_ms <= fixture.spans_ms[-1][1] + 150


@pytest.mark.parametrize(("status", "retried"), [(403, False), (401, False), (503, True)])
async def test_a_refused_upload_is_final_unless_the_storage_is_failing(
    fake: FakeGoogleBatch, status: int, retried: bool
) -> None:
    storage = await FakeCloudStorage(reject_status=status).start()
    uploader = CloudStorage("b", storage_url=storage.url, credentials=AnonymousCredentials())
    engine = GoogleFileEngine(google_engine(fake).options, storage=uploader)
    try:
        with pytest.raises(EngineError) as caught:
            await engine.transcribe_chunk(chunk(tone_samples([11])), FileOptions("en"))
        await engine.aclose()
    finally:
        await storage.stop()
    assert caught.value.retryable is retried
    assert caught.value.reason == ("server_error" if retried else "auth")
    assert len(storage.uploads) == (engine.options.retry.attempts if retried else 1)
    assert fake.operations == []
