"""Engines under test: the local engine, and the cloud engines against protocol-faithful fakes
on localhost, driven through the vendors' SDKs exactly as in production."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import pytest

from ingest.engines.base import Engine, StreamConfig
from ingest.engines.chain import EngineChain
from ingest.engines.deepgram import DeepgramEngine, DeepgramOptions
from ingest.engines.google import GoogleEngine, GoogleOptions
from ingest.engines.local.engine import LocalEngine
from ingest.engines.reporter import EngineReporter
from tests.engines.fake_deepgram import FakeDeepgram
from tests.engines.fake_google import FakeGoogle
from tests.engines.toy_asr import tone_words
from tests.ingest.helpers import load_fixture, wer

API_KEY = "dg-secret-0123456789abcdef"
MONO_16K = "two_sentences_16k_mono.wav"


@pytest.fixture(scope="session")
def local_engine() -> Iterator[LocalEngine]:
    """One pool of worker processes for the whole run (each test has its own event loop)."""
    engine = LocalEngine(workers=1, idle_decoders=2)
    yield engine
    asyncio.run(engine.aclose())


@pytest.fixture
async def fake_deepgram() -> AsyncIterator[FakeDeepgram]:
    fake = await FakeDeepgram(api_key=API_KEY).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def fake_google() -> AsyncIterator[FakeGoogle]:
    fake = await FakeGoogle().start()
    yield fake
    await fake.stop()


def deepgram_engine(fake: FakeDeepgram, key: str = API_KEY, **options: object) -> DeepgramEngine:
    return DeepgramEngine(key, DeepgramOptions(url=fake.url, **options))  # type: ignore[arg-type]


def google_engine(
    fake: FakeGoogle, reporter: EngineReporter | None = None, **options: object
) -> GoogleEngine:
    options_ = GoogleOptions(endpoint=fake.endpoint, insecure=True, **options)  # type: ignore[arg-type]
    return GoogleEngine(options_, reporter)


@dataclass
class EngineCase:
    """An engine and speech it can recognize: `utterances` are PCM pieces, each ending in a
    pause long enough to end the utterance; `heard(text, i)` says whether utterance i was
    recognized."""

    name: str
    engine: Engine | EngineChain
    config: StreamConfig
    utterances: list[bytes]
    heard: Callable[[str, int], bool]
    unpaused: bytes  # one utterance with no pause after it (only `finalize` can end it)


def _toy_case(name: str, engine: Engine | EngineChain) -> EngineCase:
    words = [[11, 12, 13], [21, 22, 23, 24]]
    utterances = [tone_words(ws, pause_ms=500) for ws in words]
    expected = [" ".join(f"w{v % 100}" for v in ws) for ws in words]
    return EngineCase(
        name,
        engine,
        StreamConfig(16000, 1, "en"),
        utterances,
        lambda text, i: text.lower() == expected[i],
        tone_words([31, 32], gap_ms=0),
    )


def _local_case(engine: LocalEngine) -> EngineCase:
    fx = load_fixture(MONO_16K)
    middle = (fx.spans_ms[0][1] + fx.spans_ms[1][0]) // 2
    first, second = fx.pcm[: fx.offset(middle)], fx.pcm[fx.offset(middle) :]
    return EngineCase(
        "local",
        engine,
        StreamConfig(fx.sample_rate, fx.channels, "en"),
        [first, second],
        lambda text, i: wer(fx.sentences[i], text.lower()) <= 0.35,
        fx.pcm[: fx.offset(fx.spans_ms[0][1])],
    )


@pytest.fixture(params=["local", "deepgram", "google", "deepgram-dying-to-google"])
async def engine_case(
    request: pytest.FixtureRequest,
    local_engine: LocalEngine,
    fake_deepgram: FakeDeepgram,
    fake_google: FakeGoogle,
) -> AsyncIterator[EngineCase]:
    if request.param == "local":
        yield _local_case(local_engine)
        return
    engine: Engine | EngineChain
    if request.param == "deepgram":
        engine = deepgram_engine(fake_deepgram)
    elif request.param == "google":
        engine = google_engine(fake_google)
    else:
        # The chain's failover stream keeps the contract across the primary's death.
        fake_deepgram.drop_after_bytes, fake_deepgram.breaks_left = 16000 + 6400, 1
        engine = EngineChain([deepgram_engine(fake_deepgram), google_engine(fake_google)])
    yield _toy_case(request.param, engine)
    await engine.aclose()


def chunks(pcm: bytes, size: int = 640) -> list[bytes]:
    """20 ms frames at 16 kHz mono, as a client sends them."""
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]
