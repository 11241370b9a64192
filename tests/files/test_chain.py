"""The recordings' engine chain with scripted file engines: retries on one engine, failover to
the next, breakers, a non-retryable error, and a wait through an outage of every engine."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.engines.base import EngineError
from ingest.engines.breaker import CircuitBreaker
from ingest.files.base import AudioChunk, FileEngine, FileOptions, FileSegment
from ingest.files.chain import FileEngineChain

OPTIONS = FileOptions("en", diarize=False)


class Scripted(FileEngine):
    """Fails its first `failures` calls with `error`, then answers with its name."""

    def __init__(self, name: str, failures: int = 0, error: EngineError | None = None) -> None:
        self.name = name
        self.failures = failures
        self.error = error or EngineError(f"{name} is down", retryable=True)
        self.calls = 0

    def supported_languages(self) -> frozenset[str]:
        return frozenset({"en"})

    async def transcribe_chunk(self, chunk: AudioChunk, options: FileOptions) -> list[FileSegment]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return [FileSegment(self.name, chunk.start_ms, chunk.end_ms)]


def chunk(index: int = 0) -> AudioChunk:
    return AudioChunk(index, index * 1000, np.zeros(16000, np.float32))


def chain(
    *engines: Scripted, attempts: int = 2, outage_s: float = 0.0, cooldown_s: float = 0.0
) -> FileEngineChain:
    breakers = {e.name: CircuitBreaker(failure_threshold=3, cooldown_s=cooldown_s) for e in engines}
    return FileEngineChain(
        list(engines),
        breakers,
        attempts=attempts,
        outage_s=outage_s,
        clock=lambda: 0.0,  # time stands still: an open breaker stays open
        rand=lambda: 0.0,
    )


@pytest.fixture(autouse=True)
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    import ingest.files.chain as module

    monkeypatch.setattr(module, "RETRY_BASE_S", 0.0)
    monkeypatch.setattr(module, "OUTAGE_POLL_MIN_S", 0.0)


async def test_a_retry_on_the_same_engine_serves_the_chunk() -> None:
    first = Scripted("a", failures=1)
    engines = chain(first, Scripted("b"))
    assert [s.text for s in await engines.transcribe_chunk(chunk(), OPTIONS)] == ["a"]
    assert first.calls == 2 and engines.served == {(0, None): "a"}


async def test_an_engine_that_keeps_failing_hands_the_chunk_to_the_next() -> None:
    first, second = Scripted("a", failures=99), Scripted("b")
    engines = chain(first, second, cooldown_s=10.0)
    assert [s.text for s in await engines.transcribe_chunk(chunk(), OPTIONS)] == ["b"]
    assert first.calls == 2 and engines.served == {(0, None): "b"}
    # Its breaker opened on the third failure: the next chunk goes to b without trying a.
    assert [s.text for s in await engines.transcribe_chunk(chunk(1), OPTIONS)] == ["b"]
    assert first.calls == 3
    assert [s.text for s in await engines.transcribe_chunk(chunk(2), OPTIONS)] == ["b"]
    assert first.calls == 3


async def test_a_non_retryable_error_is_not_retried_and_fails_over() -> None:
    bad = EngineError("cannot decode", retryable=False)
    first, second = Scripted("a", failures=1, error=bad), Scripted("b")
    assert [s.text for s in await chain(first, second).transcribe_chunk(chunk(), OPTIONS)] == ["b"]
    assert first.calls == 1


async def test_every_engine_down_is_waited_out_then_the_chunk_is_served() -> None:
    first, second = Scripted("a", failures=5), Scripted("b", failures=5)
    engines = chain(first, second, attempts=1, outage_s=60.0)
    assert [s.text for s in await engines.transcribe_chunk(chunk(), OPTIONS)] == ["a"]
    assert first.calls == 6


async def test_without_outage_time_every_engine_down_fails_the_chunk_retryably() -> None:
    engines = chain(Scripted("a", failures=9), Scripted("b", failures=9), attempts=1)
    with pytest.raises(EngineError) as failed:
        await engines.transcribe_chunk(chunk(), OPTIONS)
    assert failed.value.retryable


class Answering(Scripted):
    """Answers with the segments it is given (an engine's values, unchecked)."""

    def __init__(self, name: str, segments: list[FileSegment]) -> None:
        super().__init__(name)
        self.segments = segments

    async def transcribe_chunk(self, chunk: AudioChunk, options: FileOptions) -> list[FileSegment]:
        self.calls += 1
        return self.segments


async def test_a_chunks_segments_are_cleaned_and_kept_within_the_chunk() -> None:
    odd = Answering("a", [FileSegment("a\x00b \ud83d", -50, 3_000_000_000, "S0", 4.0)])
    [segment] = await chain(odd).transcribe_chunk(chunk(2), OPTIONS)
    assert segment == FileSegment("ab \ufffd", 2000, 3000, "S0", None)


async def test_a_segment_without_text_fails_the_engine_and_the_next_serves_the_chunk() -> None:
    broken = Answering("a", [FileSegment(None, 0, 100)])  # type: ignore[arg-type]
    engines = chain(broken, Scripted("b"), attempts=1)
    assert [s.text for s in await engines.transcribe_chunk(chunk(), OPTIONS)] == ["b"]
    assert broken.calls == 1 and engines.served == {(0, None): "b"}
