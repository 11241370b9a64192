"""What every file engine promises the job runner, run over every engine (`file_engine`)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ingest.engines.local.whisper import spoken_words
from ingest.files.base import SAMPLE_RATE, AudioChunk, FileOptions, FileSegment
from ingest.files.chunking import chunk_stream
from ingest.files.decode import decode
from tests.files.media import encode, speech, speech_text
from tests.ingest.helpers import wer

TIMEOUT_S = 600.0  # a loaded 2-core machine; a real engine decodes 30 s of speech
ENGLISH = FileOptions(language="en", diarize=False)


async def _segments(engine, chunk: AudioChunk, options=ENGLISH) -> list[FileSegment]:
    return await asyncio.wait_for(engine.transcribe_chunk(chunk, options), TIMEOUT_S)


def _words(segments: list[FileSegment]) -> str:
    return " ".join(w for s in segments for w in spoken_words(s.text))


def _reference() -> str:
    return " ".join(spoken_words(speech_text().replace("mister", "mr")))


async def test_speech_gives_text_with_offsets_inside_the_chunk(file_engine):
    audio = speech()[: 12 * SAMPLE_RATE]  # the first two sentences
    chunk = AudioChunk(index=7, start_ms=90_000, samples=audio)
    segments = await _segments(file_engine, chunk)
    assert segments and all(s.text.strip() for s in segments)
    for s in segments:
        assert chunk.start_ms <= s.start_ms <= s.end_ms <= chunk.end_ms, s
    assert [s.start_ms for s in segments] == sorted(s.start_ms for s in segments)
    assert "dashwood" in _words(segments)
    assert 90_000 <= segments[0].start_ms <= 91_500  # speech starts 0.5 s in


async def test_offsets_follow_the_chunk_start(file_engine):
    audio = speech()[: 12 * SAMPLE_RATE]
    at_zero = await _segments(file_engine, AudioChunk(index=0, start_ms=0, samples=audio))
    later = await _segments(file_engine, AudioChunk(index=0, start_ms=3_600_000, samples=audio))
    assert [s.text for s in at_zero] == [s.text for s in later]
    assert [s.start_ms + 3_600_000 for s in at_zero] == [s.start_ms for s in later]


@pytest.mark.parametrize(
    "noise",
    [
        np.zeros(20 * SAMPLE_RATE, np.float32),
        np.random.default_rng(7).normal(0, 0.003, 20 * SAMPLE_RATE).astype(np.float32),
    ],
    ids=["digital-silence", "room-hiss"],
)
async def test_silence_and_hiss_give_nothing(file_engine, noise):
    assert await _segments(file_engine, AudioChunk(index=0, start_ms=0, samples=noise)) == []


async def test_a_chunk_marked_silent_gives_nothing(file_engine):
    chunk = AudioChunk(index=0, start_ms=0, samples=speech()[: SAMPLE_RATE * 5], speech_ms=0)
    assert await _segments(file_engine, chunk) == []


async def test_the_real_speech_fixture_through_the_pipeline_matches_its_transcript(
    file_engine, tmp_path
):
    path = encode(speech(), tmp_path / "austen.mp3", "mp3")
    if file_engine.whole_file:
        segments = await asyncio.wait_for(file_engine.transcribe_file(path, ENGLISH), TIMEOUT_S)
    else:
        chunks = list(chunk_stream(decode(path), chunk_seconds=file_engine.chunk_seconds))
        results = await asyncio.gather(*(_segments(file_engine, c) for c in chunks))
        segments = [s for r in results for s in r]
    assert wer(_reference(), _words(segments)) <= 0.15, _words(segments)
    assert all(0 <= s.start_ms <= s.end_ms <= 29_730 for s in segments)


def test_engine_declares_its_shape(file_engine):
    assert file_engine.name and file_engine.supports("en")
    assert 5 <= file_engine.chunk_seconds <= 600 and file_engine.max_concurrency >= 1
