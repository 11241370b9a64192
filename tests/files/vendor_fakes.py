"""Shared by the vendor file-engine tests: audio with known words, and the engines pointed at
the batch fakes (`tests/engines/fake_*_batch.py`), driven through the vendors' SDKs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from ingest.files.base import FileEngine
from ingest.files.deepgram import DeepgramFileEngine, DeepgramFileOptions
from ingest.files.encoding import wav_bytes
from ingest.files.google import GoogleFileEngine, GoogleFileOptions
from ingest.files.retrying import RetryPolicy
from tests.engines.batch_script import TimedScript
from tests.engines.fake_deepgram_batch import FakeDeepgramBatch
from tests.engines.fake_google_batch import FakeGoogleBatch
from tests.engines.toy_asr import tone_words

API_KEY = "dg-batch-secret-0123456789abcdef"
SPEECH = "librivox_austen_16k_mono.wav"  # the contract suite's real speech
FAST_RETRY = RetryPolicy(attempts=4, backoff_s=0.05, max_wait_s=5.0)


def tone_samples(*utterances: list[int], pause_ms: int = 1000) -> np.ndarray:
    """float32 samples of tone words (toy_asr): the utterances with `pause_ms` between.
    A word value of 100 + v is word v said by the second speaker."""
    pcm = b"".join(tone_words(values, pause_ms=pause_ms) for values in utterances)
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768


def write_wav(path: Path, samples: np.ndarray) -> Path:
    path.write_bytes(wav_bytes(samples))
    return path


def deepgram_engine(
    fake: FakeDeepgramBatch, key: str = API_KEY, **options: object
) -> DeepgramFileEngine:
    options.setdefault("retry", FAST_RETRY)
    return DeepgramFileEngine(key, DeepgramFileOptions(url=fake.url, **options))  # type: ignore[arg-type]


def google_engine(fake: FakeGoogleBatch, **options: object) -> GoogleFileEngine:
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("poll_initial_s", 0.02)
    options.setdefault("poll_max_s", 0.1)
    return GoogleFileEngine(
        GoogleFileOptions(endpoint=fake.endpoint, insecure=True, **options)  # type: ignore[arg-type]
    )


def mp3_of(samples: np.ndarray, rate: int = 16_000, out_rate: int = 44_100) -> bytes:
    """An MP3 (PyAV's LAME) of int16 samples, resampled to `out_rate`, as a phone would make."""
    import io

    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=out_rate, layout="mono")
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=out_rate)
        frames = []
        for offset in range(0, len(samples), rate):
            piece = samples[offset : offset + rate].astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(piece, format="s16", layout="mono")
            frame.sample_rate = rate
            frames += resampler.resample(frame)
        frames += resampler.resample(None)
        for frame in [*frames, None]:
            for packet in stream.encode(frame):
                container.mux(packet)
    return out.getvalue()


@contextlib.asynccontextmanager
async def contract_deepgram(request: object) -> AsyncIterator[FileEngine]:
    """The contract suite's `deepgram` entry: the engine against its batch fake, which hears
    the real-speech fixture's transcript wherever it is sent (`TimedScript`)."""
    fake = await FakeDeepgramBatch(api_key=API_KEY, script=TimedScript.from_fixture(SPEECH)).start()
    engine = deepgram_engine(fake)
    try:
        yield engine
    finally:
        await engine.aclose()
        await fake.stop()


@contextlib.asynccontextmanager
async def contract_google(request: object) -> AsyncIterator[FileEngine]:
    """The contract suite's `google` entry (a model that diarizes, so speakers are exercised)."""
    fake = await FakeGoogleBatch(script=TimedScript.from_fixture(SPEECH)).start()
    engine = google_engine(fake, model="video")
    try:
        yield engine
    finally:
        await engine.aclose()
        await fake.stop()
