"""Engine counters: one object, and a listener told of each count (the Prometheus bridge)."""

from __future__ import annotations

from ingest.engines.base import StreamConfig
from ingest.engines.chain import ChainPolicy, EngineChain
from ingest.engines.counters import EngineCounters
from tests.engines.conftest import chunks, deepgram_engine, google_engine
from tests.engines.fake_deepgram import FakeDeepgram
from tests.engines.fake_google import FakeGoogle
from tests.engines.toy_asr import tone_words
from tests.ingest.helpers import Collector, feed


class Recorder:
    """A listener with the method names of the gateway's Prometheus `Metrics`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def engine_opened(self, engine: str) -> None:
        self.calls.append(("opened", engine))

    def engine_failed(self, engine: str) -> None:
        self.calls.append(("failed", engine))

    def engine_failover(self, from_engine: str) -> None:
        self.calls.append(("failover", from_engine))

    def engine_rotated(self, engine: str) -> None:
        self.calls.append(("rotated", engine))


async def test_a_failover_is_counted_once_each_and_told_to_the_listener(
    fake_deepgram: FakeDeepgram, fake_google: FakeGoogle
) -> None:
    recorder = Recorder()
    counters = EngineCounters(listener=recorder)
    fake_deepgram.drop_after_bytes = 16000 * 2
    chain = EngineChain(
        [deepgram_engine(fake_deepgram), google_engine(fake_google)],
        ChainPolicy(retry_base_s=0.01),
        counters,
    )
    stream = await chain.open(StreamConfig(16000, 1, "en"))
    collector = Collector(stream).start()
    await feed(stream, chunks(tone_words([1, 2, 3], pause_ms=400) + tone_words([4, 5, 6])))
    await stream.close()
    await collector.finish()

    assert counters.stream_opens == {"deepgram": 1, "google": 1}
    assert counters.failures == {("deepgram", "closed"): 1}
    assert counters.failovers == {("deepgram", "google"): 1}
    assert counters.first_partial_count == {"deepgram": 1}
    assert recorder.calls == [
        ("opened", "deepgram"),
        ("failed", "deepgram"),
        ("opened", "google"),
        ("failover", "deepgram"),
    ]
    assert counters.snapshot()["failovers"] == {"deepgram->google": 1}
