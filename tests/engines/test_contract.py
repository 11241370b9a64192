"""The engine contract, run against every engine: local, Deepgram (fake), Google (fake), and the
chain's failover stream across the primary's death (Deepgram dying, Google taking over)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from ingest.engines.base import EngineError, EngineEvent, EngineStream
from tests.engines.conftest import EngineCase, chunks
from tests.ingest.helpers import Collector, feed


async def heard_to_the_end(
    case: EngineCase, stream: EngineStream, collector: Collector
) -> tuple[list[EngineEvent], list[EngineEvent]]:
    """Close the stream; its events and its finals, one per utterance, each heard right."""
    await stream.close()
    events = await collector.finish()
    assert collector.error is None
    finals = [e for e in events if e.is_final and e.text]
    assert len(finals) == len(case.utterances), [f.text for f in finals]
    for index, final in enumerate(finals):
        assert case.heard(final.text, index), final.text
    return events, finals


async def test_speech_becomes_partials_then_ordered_finals(engine_case: EngineCase) -> None:
    stream = await engine_case.engine.open(engine_case.config)
    collector = Collector(stream).start()
    for utterance in engine_case.utterances:
        await feed(stream, chunks(utterance))
    await collector.wait_for(lambda c: len(c.finals) >= 1)  # a pause ends an utterance
    events, finals = await heard_to_the_end(engine_case, stream, collector)
    for final in finals:
        assert final.words, final
        assert final.start_ms <= final.words[0].start_ms <= final.words[-1].end_ms <= final.end_ms
    for earlier, later in itertools.pairwise(finals):
        assert earlier.end_ms <= later.start_ms
    assert any(not e.is_final and e.text for e in events), "no partials"
    first_final = events.index(finals[0])
    assert any(not e.is_final for e in events[:first_final])
    if engine_case.name == "deepgram-dying-to-google":
        assert stream.switches == [("deepgram", "google", "closed")]  # type: ignore[attr-defined]


async def test_offered_and_sent_audio_keep_their_order(engine_case: EngineCase) -> None:
    # The per-frame path offers a frame first and sends it only if the offer is refused: both
    # kinds of frame, mixed, must reach the recognizer in order.
    stream = await engine_case.engine.open(engine_case.config)
    collector = Collector(stream).start()
    offered = 0
    for utterance in engine_case.utterances:
        for index, chunk in enumerate(chunks(utterance)):
            if index % 3 and stream.offer(chunk):
                offered += 1
            else:
                await stream.send(chunk)
    await heard_to_the_end(engine_case, stream, collector)
    if engine_case.name in ("local", "deepgram", "google"):  # the chain's stream offers nothing
        assert offered, "no frame was taken by an offer"
    assert not stream.offer(b"\0" * 640)  # a closed stream takes nothing, and does not raise


async def test_finalize_ends_an_utterance_without_a_pause(engine_case: EngineCase) -> None:
    stream = await engine_case.engine.open(engine_case.config)
    collector = Collector(stream).start()
    await feed(stream, chunks(engine_case.unpaused))
    await stream.finalize()
    await collector.wait_for(lambda c: any(f.text for f in c.finals))
    assert not collector.ended  # the final came from finalize, not from the end of the stream
    await stream.close()
    await collector.finish()
    assert collector.error is None


async def test_close_without_audio_ends_the_events(engine_case: EngineCase) -> None:
    stream = await engine_case.engine.open(engine_case.config)
    collector = Collector(stream).start()
    await stream.close()
    assert await collector.finish() == []
    assert collector.error is None


async def test_abort_returns_promptly_mid_utterance(engine_case: EngineCase) -> None:
    stream = await engine_case.engine.open(engine_case.config)
    await feed(stream, chunks(engine_case.utterances[0][: len(engine_case.utterances[0]) // 2]))
    async with asyncio.timeout(10):
        await stream.abort()


async def test_an_unserved_language_is_refused(engine_case: EngineCase) -> None:
    assert not engine_case.engine.supports("xx")
    assert engine_case.engine.supports("en")
    if engine_case.name == "local":
        with pytest.raises(EngineError) as caught:
            await engine_case.engine.open(engine_case.config.__class__(16000, 1, "xx"))
        assert not caught.value.retryable
