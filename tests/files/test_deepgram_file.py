"""DeepgramFileEngine against the pre-recorded API fake, through the official SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from ingest.engines.base import EngineError
from ingest.files.base import AudioChunk, FileOptions
from ingest.files.retrying import RetryPolicy
from tests.engines.batch_script import TimedScript
from tests.engines.fake_deepgram_batch import FakeDeepgramBatch
from tests.files.vendor_fakes import API_KEY, deepgram_engine, mp3_of, tone_samples, write_wav
from tests.ingest.helpers import load_fixture

# Speaker 0 says "w11 w12", speaker 1 "w13"; after a pause speaker 0 says "w21 w22".
TWO_SPEAKERS = ([11, 12, 113], [21, 22])


@pytest.fixture
async def fake() -> AsyncIterator[FakeDeepgramBatch]:
    fake = await FakeDeepgramBatch(api_key=API_KEY).start()
    yield fake
    await fake.stop()


async def test_whole_file_diarized_utterances_become_segments_per_speaker(
    fake: FakeDeepgramBatch, tmp_path: Path
) -> None:
    path = write_wav(tmp_path / "meeting.wav", tone_samples(*TWO_SPEAKERS))
    engine = deepgram_engine(fake)
    assert engine.whole_file and engine.can_diarize
    segments = await engine.transcribe_file(path, FileOptions("en"))
    await engine.aclose()
    assert [(s.text, s.speaker) for s in segments] == [
        ("W11 w12.", "S0"), ("W13.", "S1"), ("W21 w22.", "S0"),
    ]  # fmt: skip
    assert [(s.start_ms, s.end_ms) for s in segments] == [(0, 450), (500, 700), (1750, 2200)]
    (request,) = fake.requests
    for flag in ("diarize", "utterances", "smart_format", "punctuate"):
        assert request.query[flag] == ["true"], flag
    assert request.query["model"] == ["nova-3"] and request.query["language"] == ["en"]
    # The original file, streamed with its length (not chunked, not re-encoded).
    assert request.body_bytes == path.stat().st_size
    assert request.headers["content-length"] == str(path.stat().st_size)
    assert "transfer-encoding" not in request.headers


async def test_without_diarization_no_speakers(fake: FakeDeepgramBatch, tmp_path: Path) -> None:
    path = write_wav(tmp_path / "meeting.wav", tone_samples(*TWO_SPEAKERS))
    engine = deepgram_engine(fake)
    segments = await engine.transcribe_file(path, FileOptions("en", diarize=False))
    await engine.aclose()
    assert fake.requests[0].query["diarize"] == ["false"]
    assert [s.speaker for s in segments] == [None, None]
    assert [s.text for s in segments] == ["W11 w12 w13.", "W21 w22."]


async def test_real_speech_mp3_goes_whole_and_comes_back_timed(tmp_path: Path) -> None:
    """Real human speech as a 44.1 kHz MP3 is uploaded as it is (the original bytes); the fake
    decodes it, aligns the fixture's transcript to it, and each sentence lands where it is
    said."""
    name = "librivox_austen_16k_mono.wav"
    fixture = load_fixture(name)
    path = tmp_path / "phone.mp3"
    path.write_bytes(mp3_of(np.frombuffer(fixture.pcm, "<i2")))
    fake = await FakeDeepgramBatch(api_key=API_KEY, script=TimedScript.from_fixture(name)).start()
    try:
        engine = deepgram_engine(fake)
        segments = await engine.transcribe_file(path, FileOptions("en"))
        await engine.aclose()
    finally:
        await fake.stop()
    assert fake.requests[0].body_bytes == path.stat().st_size
    assert [s.text.lower().rstrip(".") for s in segments] == fixture.sentences
    assert [s.speaker for s in segments] == ["S0", "S1", "S0", "S1", "S0"]
    for segment, (start_ms, end_ms) in zip(segments, fixture.spans_ms, strict=True):
        assert abs(segment.start_ms - start_ms) <= 100 and segment.end_ms <= end_ms + 100


@pytest.mark.parametrize(
    ("language", "expected"),
    [("tr", {"language": ["tr"]}), ("en-gb", {"language": ["en-GB"]}),
     ("auto", {"detect_language": ["true"]})],
)  # fmt: skip
async def test_language_is_passed_through(
    fake: FakeDeepgramBatch, tmp_path: Path, language: str, expected: dict[str, list[str]]
) -> None:
    path = write_wav(tmp_path / "a.wav", tone_samples([11]))
    engine = deepgram_engine(fake)
    await engine.transcribe_file(path, FileOptions(language))
    await engine.aclose()
    query = fake.requests[0].query
    assert {k: query[k] for k in expected} == expected
    assert ("language" in query) != ("detect_language" in query)


async def test_deepgram_language_setting_overrides_the_job(
    fake: FakeDeepgramBatch, tmp_path: Path
) -> None:
    path = write_wav(tmp_path / "a.wav", tone_samples([11]))
    engine = deepgram_engine(fake, language="de", model="nova-2", keyterms=("Acme",))
    await engine.transcribe_file(path, FileOptions("en"))
    await engine.aclose()
    query = fake.requests[0].query
    assert query["language"] == ["de"] and query["model"] == ["nova-2"]
    assert query["keyterm"] == ["Acme"]


async def test_chunk_fallback_sends_wav_and_shifts_offsets(fake: FakeDeepgramBatch) -> None:
    engine = deepgram_engine(fake)
    chunk = AudioChunk(index=4, start_ms=60_000, samples=tone_samples(*TWO_SPEAKERS))
    segments = await engine.transcribe_chunk(chunk, FileOptions("en"))
    await engine.aclose()
    assert [(s.start_ms, s.end_ms, s.speaker) for s in segments] == [
        (60_000, 60_450, "S0"), (60_500, 60_700, "S1"), (61_750, 62_200, "S0"),
    ]  # fmt: skip
    # 16-bit mono WAV of the chunk: 44-byte header plus two bytes a sample.
    assert fake.requests[0].body_bytes == 44 + 2 * len(chunk.samples)


@pytest.mark.parametrize("statuses", [[429, 429], [500, 503], [429, 502]])
async def test_rate_limits_and_server_errors_are_retried(
    fake: FakeDeepgramBatch, tmp_path: Path, statuses: list[int]
) -> None:
    path = write_wav(tmp_path / "a.wav", tone_samples(*TWO_SPEAKERS))
    fake.fail_with = list(statuses)
    retries: list[str] = []
    engine = deepgram_engine(fake)
    engine._on_retry = lambda error, wait: retries.append(error.reason)
    segments = await engine.transcribe_file(path, FileOptions("en"))
    await engine.aclose()
    assert len(segments) == 3
    assert [r.status for r in fake.requests] == [*statuses, 200]
    # Every attempt sent the whole file again.
    assert {r.body_bytes for r in fake.requests} == {path.stat().st_size}
    reasons = {429: "rate_limited"}
    assert retries == [reasons.get(s, "server_error") for s in statuses]


async def test_retry_after_is_honoured(fake: FakeDeepgramBatch, tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", tone_samples([11]))
    fake.fail_with, fake.retry_after = [429], "1"
    waits: list[float] = []
    engine = deepgram_engine(fake)
    engine._on_retry = lambda error, wait: waits.append(wait)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await engine.transcribe_file(path, FileOptions("en"))
    elapsed = loop.time() - started
    await engine.aclose()
    assert waits == [1.0]  # the header's value, not the policy's 50 ms backoff
    assert elapsed >= 0.95


async def test_a_retry_after_beyond_the_longest_wait_fails_the_call_retryably(
    fake: FakeDeepgramBatch, tmp_path: Path
) -> None:
    path = write_wav(tmp_path / "a.wav", tone_samples([11]))
    fake.fail_with, fake.retry_after = [429], "3600"
    engine = deepgram_engine(fake)
    with pytest.raises(EngineError) as caught:
        await engine.transcribe_file(path, FileOptions("en"))
    await engine.aclose()
    assert caught.value.retryable and caught.value.reason == "rate_limited"
    assert len(fake.requests) == 1


async def test_server_errors_give_up_after_the_attempts(
    fake: FakeDeepgramBatch, tmp_path: Path
) -> None:
    path = write_wav(tmp_path / "a.wav", tone_samples([11]))
    fake.fail_with = [500] * 10
    engine = deepgram_engine(fake, retry=RetryPolicy(attempts=3, backoff_s=0.01))
    with pytest.raises(EngineError) as caught:
        await engine.transcribe_file(path, FileOptions("en"))
    await engine.aclose()
    assert caught.value.retryable and caught.value.reason == "server_error"
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    "body",
    [{}, {"metadata": {}, "results": None}, {"results": {"channels": [{"alternatives": 3}]}}],
    ids=["empty", "null-results", "wrong-shape"],
)
async def test_a_200_without_a_transcript_is_a_retryable_bad_response(
    fake: FakeDeepgramBatch, tmp_path: Path, body: dict
) -> None:
    """The SDK reads any JSON into a response of Nones: no AttributeError may escape."""
    path = write_wav(tmp_path / "a.wav", tone_samples([11]))
    fake.answer_json = [body, body]
    engine = deepgram_engine(fake, retry=RetryPolicy(attempts=3, backoff_s=0.01))
    segments = await engine.transcribe_file(path, FileOptions("en"))  # the third answers
    assert [s.text for s in segments] == ["W11."]
    fake.answer_json = [body] * 3
    with pytest.raises(EngineError) as caught:
        await engine.transcribe_file(path, FileOptions("en"))
    await engine.aclose()
    assert caught.value.retryable and caught.value.reason == "bad_response"


async def test_words_without_times_never_end_a_segment_before_it_starts(
    fake: FakeDeepgramBatch, tmp_path: Path
) -> None:
    path = write_wav(tmp_path / "a.wav", tone_samples([11]))
    words = [
        {"word": "hello", "start": 0.1, "end": 0.4, "confidence": 0.9},
        {"word": "there", "start": None, "end": None, "confidence": 0.9},
    ]
    channel = {"alternatives": [{"transcript": "hello there", "confidence": 0.9, "words": words}]}
    fake.answer_json = [{"metadata": {}, "results": {"channels": [channel]}}]
    engine = deepgram_engine(fake)
    (segment,) = await engine.transcribe_file(path, FileOptions("en"))
    await engine.aclose()
    assert (segment.start_ms, segment.end_ms) == (100, 100)


async def test_bad_credentials_are_not_retried_and_the_key_stays_secret(
    fake: FakeDeepgramBatch, tmp_path: Path
) -> None:
    path = write_wav(tmp_path / "a.wav", tone_samples([11]))
    wrong = "dg-wrong-key-9876543210"
    engine = deepgram_engine(fake, key=wrong)
    with pytest.raises(EngineError) as caught:
        await engine.transcribe_file(path, FileOptions("en"))
    await engine.aclose()
    assert not caught.value.retryable and caught.value.reason == "auth"
    assert [r.status for r in fake.requests] == [401]
    error = caught.value
    assert error.__cause__ is None and error.__suppress_context__  # the SDK's error holds the key
    for text in (str(error), repr(error), repr(engine)):
        assert wrong not in text


async def test_undecodable_audio_is_a_final_bad_request(
    fake: FakeDeepgramBatch, tmp_path: Path
) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not audio at all\n" * 100)
    engine = deepgram_engine(fake)
    with pytest.raises(EngineError) as caught:
        await engine.transcribe_file(path, FileOptions("en"))
    await engine.aclose()
    assert not caught.value.retryable and caught.value.reason == "bad_request"
    assert len(fake.requests) == 1


async def test_a_slow_answer_times_out(fake: FakeDeepgramBatch, tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", tone_samples([11]))
    fake.delay_s = 5.0
    engine = deepgram_engine(fake, timeout_s=0.3, retry=RetryPolicy(attempts=2, backoff_s=0.01))
    with pytest.raises(EngineError) as caught:
        await engine.transcribe_file(path, FileOptions("en"))
    await engine.aclose()
    assert caught.value.retryable and caught.value.reason == "timeout"
    assert len(fake.requests) == 2  # retried once, then given up


async def test_a_file_over_the_vendor_limit_is_refused_before_upload(
    fake: FakeDeepgramBatch, tmp_path: Path
) -> None:
    path = write_wav(tmp_path / "a.wav", tone_samples([11]))
    engine = deepgram_engine(fake, max_file_bytes=1000)
    assert engine.accepts_file_bytes(1000) and not engine.accepts_file_bytes(path.stat().st_size)
    with pytest.raises(EngineError) as caught:
        await engine.transcribe_file(path, FileOptions("en"))
    await engine.aclose()
    assert not caught.value.retryable and caught.value.reason == "too_large"
    assert fake.requests == []


async def test_a_silent_chunk_costs_no_request(fake: FakeDeepgramBatch) -> None:
    engine = deepgram_engine(fake)
    quiet = AudioChunk(0, 0, np.zeros(16000 * 5, np.float32), speech_ms=100)
    assert await engine.transcribe_chunk(quiet, FileOptions("en")) == []
    await engine.aclose()
    assert fake.requests == []
