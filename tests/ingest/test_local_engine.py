"""The local engine on real speech: tests/fixtures, made by scripts/make_fixtures.py.

Worker processes, their parallelism and their failures: test_local_workers.py."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest

from ingest.engines.base import EngineError, EngineEvent, StreamConfig
from ingest.engines.local.engine import LocalEngine, Tuning, clean_word
from tests.ingest.helpers import Collector, feed, load_fixture, wer
from tests.ingest.local_decoders import exploding_decoder
from tests.ingest.local_streams import (
    MONO_16K,
    MONO_48K,
    STEREO_48K,
    finals_of,
    open_stream,
    transcribe,
)

MAX_WER = 0.25
SPAN_SLACK_MS = 300  # word boundaries vs. where the fixture's sentence audio lies


@pytest.fixture(scope="module")
def engine() -> Iterator[LocalEngine]:
    """Shared by the module's tests (each on its own event loop), so its worker processes and
    their pooled decoders are reused from test to test."""
    local = LocalEngine(idle_decoders=3)
    yield local
    asyncio.run(local.aclose())


def assert_well_formed_final(final: EngineEvent) -> None:
    assert final.text == " ".join(w.text for w in final.words)
    assert final.words[0].start_ms == final.start_ms
    assert final.words[-1].end_ms == final.end_ms
    for word, following in itertools.pairwise(final.words):
        assert word.start_ms < word.end_ms <= following.start_ms
    assert final.confidence is not None
    assert 0.0 <= final.confidence <= 1.0
    assert all(w.confidence is not None and 0.0 <= w.confidence <= 1.0 for w in final.words)
    assert final.speaker is None


async def test_streaming_a_fixture_gives_partials_then_one_final_per_sentence(
    engine: LocalEngine,
) -> None:
    fx = load_fixture(MONO_16K)
    stream = await open_stream(engine, fx)
    collector = Collector(stream).start()
    await feed(stream, fx.chunks(chunk_ms=20))
    # The pause between the sentences ends the first utterance: no flush needed.
    await collector.wait_for(lambda c: len(c.finals) >= 1)
    await stream.close()
    events = await collector.finish()

    finals = finals_of(events)
    assert len(finals) == 2, [f.text for f in finals]
    for final, sentence, (start, end) in zip(finals, fx.sentences, fx.spans_ms, strict=True):
        assert wer(sentence, final.text) <= MAX_WER, (sentence, final.text)
        assert start - SPAN_SLACK_MS <= final.start_ms < final.end_ms <= end + SPAN_SLACK_MS
        assert_well_formed_final(final)
    assert finals[0].end_ms < finals[1].start_ms

    # Each utterance: partials first, growing, each new, at most one per 250 ms of audio.
    utterances: list[list[EngineEvent]] = [[]]
    for event in events:
        utterances[-1].append(event)
        if event.is_final:
            utterances.append([])
    assert utterances.pop() == []
    for utterance in utterances:
        partials = utterance[:-1]
        assert len(partials) >= 2
        assert not any(p.is_final for p in partials)
        for before, after in itertools.pairwise(partials):
            assert after.text != before.text
            assert after.end_ms - before.end_ms >= 250
            assert after.start_ms >= utterance[0].start_ms - SPAN_SLACK_MS
        assert partials[-1].end_ms <= utterance[-1].end_ms + 1000


@pytest.mark.parametrize("name", [STEREO_48K, MONO_48K])
async def test_48k_input_gives_the_same_words_as_16k_mono(engine: LocalEngine, name: str) -> None:
    reference = finals_of(await transcribe(engine, load_fixture(MONO_16K)))
    fx = load_fixture(name)
    finals = finals_of(await transcribe(engine, fx))
    assert len(finals) == len(reference) == 2
    for final, ref, sentence in zip(finals, reference, fx.sentences, strict=True):
        assert wer(ref.text, final.text) <= 0.1, (ref.text, final.text)
        assert wer(sentence, final.text) <= MAX_WER
        assert abs(final.start_ms - ref.start_ms) <= 60
        assert abs(final.end_ms - ref.end_ms) <= 60


async def test_concurrent_streams_do_not_disturb_each_other(engine: LocalEngine) -> None:
    mono, stereo = load_fixture(MONO_16K), load_fixture(STEREO_48K)
    alone = finals_of(await transcribe(engine, mono))
    together = await asyncio.gather(
        transcribe(engine, mono, interleave=True), transcribe(engine, stereo, interleave=True)
    )
    assert finals_of(together[0]) == alone
    stereo_finals = finals_of(together[1])
    assert len(stereo_finals) == 2
    for final, sentence in zip(stereo_finals, stereo.sentences, strict=True):
        assert wer(sentence, final.text) <= MAX_WER


async def test_finalize_mid_sentence_emits_a_final_then_recognition_continues(
    engine: LocalEngine,
) -> None:
    fx = load_fixture(MONO_16K)
    (first_start, first_end), _ = fx.spans_ms
    cut_ms = (first_start + first_end) // 2
    cut = fx.offset(cut_ms)
    stream = await open_stream(engine, fx)
    collector = Collector(stream).start()

    await feed(stream, fx.chunks(0, cut))
    await stream.finalize()
    await collector.wait_for(lambda c: len(c.finals) == 1)  # with no audio after the cut
    head = collector.finals[0]
    first_sentence = fx.sentences[0].split()
    assert 2 <= len(head.text.split()) < len(first_sentence)
    assert head.text.split()[0] == first_sentence[0]
    assert head.end_ms <= cut_ms + 30

    await feed(stream, fx.chunks(cut))
    await stream.close()
    finals = finals_of(await collector.finish())
    assert len(finals) >= 3, [f.text for f in finals]
    for before, after in itertools.pairwise(finals):
        assert before.end_ms <= after.start_ms
    assert wer(fx.sentences[1], finals[-1].text) <= MAX_WER
    everything = " ".join(f.text for f in finals)
    # The cut may split a word in two, so allow for a couple more errors than usual.
    assert wer(" ".join(fx.sentences), everything) <= 0.3, everything


async def test_close_flushes_speech_that_has_no_trailing_pause(engine: LocalEngine) -> None:
    fx = load_fixture(MONO_16K)
    stream = await open_stream(engine, fx)
    _, first_end = fx.spans_ms[0]
    await feed(stream, fx.chunks(0, fx.offset(first_end)))
    await stream.close()  # all finals are queued once close() returns
    async with asyncio.timeout(30):
        events = [e async for e in stream.events()]
    finals = finals_of(events)
    assert len(finals) == 1
    assert wer(fx.sentences[0], finals[0].text) <= MAX_WER
    assert_well_formed_final(finals[0])
    async with asyncio.timeout(10):
        assert [e async for e in stream.events()] == []  # a second iteration ends at once


async def test_abort_stops_without_a_final(engine: LocalEngine) -> None:
    fx = load_fixture(MONO_16K)
    active = engine.active_streams
    stream = await open_stream(engine, fx)
    collector = Collector(stream).start()
    first_start, first_end = fx.spans_ms[0]
    await feed(stream, fx.chunks(0, fx.offset((first_start + first_end) // 2)))
    await collector.wait_for(lambda c: len(c.events) >= 1)  # mid-utterance: partials only
    await feed(stream, fx.chunks(fx.offset((first_start + first_end) // 2)))
    await stream.abort()
    events = await collector.finish(timeout=30)
    assert finals_of(events) == []
    assert collector.error is None
    assert engine.active_streams == active
    with pytest.raises(EngineError):
        await stream.send(b"\0\0")


async def test_a_decoder_failure_surfaces_as_engine_error() -> None:
    local = LocalEngine(decoder_factory=exploding_decoder)
    try:
        fx = load_fixture(MONO_16K)
        stream = await open_stream(local, fx)
        collector = Collector(stream).start()
        await feed(stream, fx.chunks(0, fx.offset(fx.spans_ms[0][1])))
        await collector.finish()
        assert isinstance(collector.error, EngineError)
        assert "decoder exploded" in str(collector.error)
        assert collector.error.retryable
        with pytest.raises(EngineError, match="decoder exploded"):
            await stream.send(fx.pcm[:640])
        async with asyncio.timeout(30):
            await stream.close()  # does not hang on a dead stream
        assert local.active_streams == 0
    finally:
        await local.aclose()


async def test_silence_gives_no_events_and_a_small_backlog_does_not_deadlock() -> None:
    local = LocalEngine(max_backlog_s=0.05)  # send() must wait for the worker every few chunks
    try:
        fx = load_fixture(MONO_16K)
        leading_silence = fx.chunks(0, fx.offset(fx.spans_ms[0][0] - 100))
        stream = await open_stream(local, fx)
        async with asyncio.timeout(30):
            await feed(stream, leading_silence * 10)
            await stream.close()
            assert [e async for e in stream.events()] == []
    finally:
        await local.aclose()


async def test_a_reused_decoder_gives_what_a_fresh_one_gives() -> None:
    local = LocalEngine(workers=1, idle_decoders=1)  # one worker: the stream lands on it again
    try:
        fx = load_fixture(MONO_16K)
        fresh = finals_of(await transcribe(local, fx))
        reused = finals_of(await transcribe(local, fx))  # the same decoder, back from the pool
        assert reused == fresh  # confidences too: no estimate carried over from the last stream
    finally:
        await local.aclose()


async def test_a_long_utterance_is_split_without_losing_words() -> None:
    local = LocalEngine(tuning=Tuning(max_utterance_ms=1500))
    try:
        fx = load_fixture(MONO_16K)
        finals = finals_of(await transcribe(local, fx))
    finally:
        await local.aclose()
    assert len(finals) >= 4  # each ~2.5 s sentence is cut at least once
    assert all(f.end_ms - f.start_ms <= 1500 for f in finals)
    for before, after in itertools.pairwise(finals):
        assert before.end_ms <= after.start_ms
    everything = " ".join(f.text for f in finals)
    assert wer(" ".join(fx.sentences), everything) <= 0.3, everything


async def test_languages_and_capacity() -> None:
    local = LocalEngine(max_streams=1)
    try:
        assert local.supported_languages() == frozenset({"en", "en-us", "auto"})
        assert local.supports("EN-US")
        assert not local.supports("tr")
        with pytest.raises(EngineError) as info:
            await local.open(StreamConfig(16000, 1, "tr"))
        assert not info.value.retryable

        stream = await local.open(StreamConfig(48000, 2, "auto"))
        with pytest.raises(EngineError) as info:
            await local.open(StreamConfig(16000, 1, "en"))
        assert info.value.retryable  # full: another engine may take it
        await stream.close()
        await (await local.open(StreamConfig(16000, 1, "en-us"))).close()

        with pytest.raises(EngineError):
            await stream.send(b"\0\0")  # closed
    finally:
        await local.aclose()
    with pytest.raises(EngineError):
        await local.open(StreamConfig(16000, 1, "en"))


@pytest.mark.parametrize(
    ("token", "word"),
    [
        ("hello", "hello"),
        ("for(2)", "for"),
        ("read(12)", "read"),
        ("<s>", None),
        ("</s>", None),
        ("<sil>", None),
        ("[NOISE]", None),
        ("[SPEECH]", None),
        ("++BREATH++", None),
    ],
)
def test_clean_word(token: str, word: str | None) -> None:
    assert clean_word(token) == word
