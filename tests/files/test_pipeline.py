"""pipeline: decode -> chunk -> the real local engine, in order, bounded, resumable, and
failing after the chunks before damage."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from ingest.engines.local.whisper import spoken_words
from ingest.files.base import FileOptions
from ingest.files.decode import DecodeError
from ingest.files.local import LocalFileEngine
from ingest.files.pipeline import recording_chunks, transcribe_chunks, transcribe_cuts
from tests.files.media import encode, overlapping_stereo, speech

TIMEOUT_S = 900.0
OPTIONS = FileOptions(language="en", diarize=False, job="pipeline-test")


class CountingEngine(LocalFileEngine):
    """The real local engine, counting the chunks it holds at once."""

    def __init__(self) -> None:
        super().__init__(max_concurrency=2)
        self.chunk_seconds = 10.0
        self.active = 0
        self.most = 0

    async def transcribe_chunk(self, chunk, options):
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            return await super().transcribe_chunk(chunk, options)
        finally:
            self.active -= 1


@pytest.fixture(scope="module")
def engine():
    return CountingEngine()


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline") / "two.ogg"
    return encode(np.tile(speech(), 2), path, "ogg-opus")


async def _collect(chunks, engine):
    got = []
    async for chunk, segments in transcribe_chunks(chunks, engine, OPTIONS):
        got.append((chunk, segments))
    return got


async def test_results_come_in_chunk_order_with_bounded_concurrency(engine, recording):
    got = await asyncio.wait_for(_collect(recording_chunks(recording, engine), engine), TIMEOUT_S)
    assert [c.index for c, _ in got] == list(range(len(got))) and len(got) >= 6
    assert all(a.end_ms == b.start_ms for (a, _), (b, _) in itertools.pairwise(got))
    assert engine.most == 2  # both cores busy, never more
    starts = [s.start_ms for _, segments in got for s in segments]
    assert starts == sorted(starts)
    words = [w for _, segments in got for s in segments for w in spoken_words(s.text)]
    assert words.count("dashwood") == 2


async def test_resuming_from_a_checkpoint_transcribes_only_the_rest(engine, recording):
    whole = [c for c in recording_chunks(recording, engine)]
    checkpoint = whole[2]
    chunks = recording_chunks(
        recording, engine, start_ms=checkpoint.end_ms, first_index=checkpoint.index + 1
    )
    got = await asyncio.wait_for(_collect(chunks, engine), TIMEOUT_S)
    assert got[0][0].index == 3 and got[0][0].start_ms == checkpoint.end_ms
    assert all(s.start_ms >= checkpoint.end_ms for _, segments in got for s in segments)


async def test_damage_fails_after_the_transcript_before_it(engine, tmp_path):
    data = bytearray(encode(np.tile(speech(), 2), tmp_path / "two.mp3", "mp3").read_bytes())
    at = len(data) * 3 // 4  # about 45 s in
    data[at : at + 4096] = bytes((i * 37 + 11) % 256 for i in range(4096))
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))
    got = []
    with pytest.raises(DecodeError) as raised:
        async for chunk, segments in transcribe_chunks(
            recording_chunks(damaged, engine), engine, OPTIONS
        ):
            got.append((chunk, segments))
    assert got and got[-1][0].end_ms == raised.value.decoded_ms
    words = [w for _, segments in got for s in segments for w in spoken_words(s.text)]
    assert "dashwood" in words and 40_000 <= raised.value.decoded_ms <= 50_000


async def test_a_stereo_recording_split_keeps_both_sides_talking_at_once(engine, tmp_path):
    path = overlapping_stereo(tmp_path / "stereo.flac")
    cuts = []
    chunks = recording_chunks(path, engine, separate_channels=True)
    async for cut, segments in transcribe_cuts(chunks, engine, OPTIONS):
        cuts.append((cut, segments))
    for cut, _ in cuts:
        assert [c.channel for c in cut] == [0, 1]
        assert len({(c.index, c.start_ms, c.end_ms) for c in cut}) == 1
    segments = [s for _, ss in cuts for s in ss]
    assert [s.start_ms for s in segments] == sorted(s.start_ms for s in segments)
    left = [w for s in segments if s.speaker == "ch1" for w in spoken_words(s.text)]
    right = [w for s in segments if s.speaker == "ch2" for w in spoken_words(s.text)]
    assert {s.speaker for s in segments} == {"ch1", "ch2"}
    assert {"dashwood", "leisure", "young", "man"} <= set(left), left
    assert {"budget", "thursday", "slides", "maria"} <= set(right), right
    assert not {"thursday", "maria"} & set(left)  # each side heard alone


async def test_a_stereo_recording_in_antiphase_is_heard_when_mixed(engine, tmp_path):
    """A recorder with one side's poles swapped: averaged as they came, the two sides
    cancelled and the recording gave no transcript (the fuzzer's antiphase stereo)."""
    left = speech()[: 14 * 16000]
    path = encode(np.stack([left, -left]), tmp_path / "antiphase.flac", "flac", channels=2)
    got = await asyncio.wait_for(_collect(recording_chunks(path, engine), engine), TIMEOUT_S)
    words = [w for _, segments in got for s in segments for w in spoken_words(s.text)]
    assert {"dashwood", "leisure", "young", "man"} <= set(words), words
