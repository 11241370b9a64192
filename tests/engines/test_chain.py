"""The engine chain and mid-stream failover, with real engines: the local one and the cloud
engines against their protocol-faithful fakes."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.observability.metrics import Metrics
from ingest.engines.base import (
    Engine,
    EngineError,
    EngineEvent,
    EngineStream,
    EngineUnavailable,
    StreamConfig,
)
from ingest.engines.breaker import BreakerState
from ingest.engines.chain import ChainPolicy, EngineChain, FailoverStream
from ingest.engines.deepgram import DeepgramEngine, DeepgramOptions
from ingest.engines.local.engine import LocalEngine
from tests.engines.conftest import MONO_16K, chunks, deepgram_engine, google_engine
from tests.engines.fake_deepgram import FakeDeepgram
from tests.engines.fake_google import FakeGoogle
from tests.engines.toy_asr import tone_words
from tests.ingest.helpers import Collector, feed, load_fixture, wer
from tests.util import eventually, metric_value

MONO = StreamConfig(16000, 1, "en")
# Short backoffs, and open budgets that are deadlines for a loaded machine (a local worker
# starting, a fake's handshake): no test here needs an open to time out under this policy.
FAST = ChainPolicy(
    retry_base_s=0.01, retry_max_s=0.05, failover_open_timeout_s=30.0, open_timeout_s=30.0
)


def final_words(events: list[EngineEvent]) -> list[str]:
    return [w.text.lower() for e in events if e.is_final for w in e.words]


def assert_monotonic(events: list[EngineEvent]) -> None:
    finals = [e for e in events if e.is_final and e.text]
    for earlier, later in itertools.pairwise(finals):
        assert earlier.start_ms <= later.start_ms, (earlier, later)
    for event in events:
        assert event.start_ms <= event.end_ms


async def test_a_bad_key_goes_to_the_next_engine_without_a_retry(
    fake_deepgram: FakeDeepgram, fake_google: FakeGoogle
) -> None:
    metrics = Metrics()
    chain = EngineChain(
        [deepgram_engine(fake_deepgram, key="wrong"), google_engine(fake_google)],
        FAST,
        reporter=metrics,
    )
    stream = await chain.open(MONO)
    assert stream.engine_name == "google"
    assert fake_deepgram.rejected == 1
    assert (
        metric_value(metrics, "engine_stream_failures_total", engine="deepgram", reason="auth") == 1
    )
    await stream.close()


async def test_a_bad_key_and_no_fallback_is_engine_unavailable_without_a_retry(
    fake_deepgram: FakeDeepgram,
) -> None:
    chain = EngineChain([deepgram_engine(fake_deepgram, key="wrong")], FAST)
    with pytest.raises(EngineUnavailable) as caught:
        await chain.open(MONO)
    assert caught.value.reason == "engine_unavailable"
    assert fake_deepgram.rejected == 1


async def test_retryable_handshake_errors_are_retried_then_given_up(
    fake_deepgram: FakeDeepgram,
) -> None:
    fake_deepgram.reject_status = 503
    metrics = Metrics()
    chain = EngineChain([deepgram_engine(fake_deepgram)], FAST, reporter=metrics)
    with pytest.raises(EngineUnavailable):
        await chain.open(MONO)
    assert fake_deepgram.rejected == FAST.retry_attempts
    assert (
        metric_value(
            metrics, "engine_stream_failures_total", engine="deepgram", reason="server_error"
        )
        == FAST.retry_attempts
    )


async def test_the_primary_dying_mid_stream_switches_to_local_and_replays_the_speech(
    fake_deepgram: FakeDeepgram, local_engine: LocalEngine
) -> None:
    fx = load_fixture(MONO_16K)
    # Deepgram (the fake hears no words in real speech) dies in the middle of sentence one.
    fake_deepgram.die_after_bytes = fx.offset(1500)
    switched_at: list[float] = []
    metrics = Metrics()
    chain = EngineChain([deepgram_engine(fake_deepgram), local_engine], FAST, reporter=metrics)
    stream = await chain.open(
        StreamConfig(fx.sample_rate, fx.channels, "en"),
        on_switch=lambda old, new, reason: switched_at.append(time.monotonic()),
    )
    assert stream.engine_name == "deepgram"
    collector = Collector(stream).start()
    await feed(stream, fx.chunks(chunk_ms=20))
    await eventually(lambda: fake_deepgram.sessions[0].ended, within=30, what="deepgram died")
    await stream.close()
    events = await collector.finish()

    assert collector.error is None
    assert stream.switches == [("deepgram", "local", "closed")]
    assert stream.engine_name == "local"
    assert (
        metric_value(metrics, "engine_failovers_total", from_engine="deepgram", to_engine="local")
        == 1
    )
    # Switched once; how fast (the 2 s target) is bench/failover.py's measure, not a test's.
    assert len(switched_at) == 1
    finals = [e for e in events if e.is_final and e.text]
    assert len(finals) == 2, [f.text for f in finals]
    for final, sentence in zip(finals, fx.sentences, strict=True):
        assert wer(sentence, final.text) <= 0.35, (sentence, final.text)
    # Sentence one was spoken before the death: the local engine heard it from the replay.
    assert finals[0].start_ms < 1500
    assert_monotonic(events)


async def tones_through(
    chain: EngineChain, audio: bytes
) -> tuple[FailoverStream, list[EngineEvent]]:
    """Tone words through a mono stream of `chain`, closed after them: the stream (its
    switches) and its events, which ended without an error."""
    stream = await chain.open(MONO)
    collector = Collector(stream).start()
    await feed(stream, chunks(audio))
    await stream.close()
    events = await collector.finish()
    assert collector.error is None
    return stream, events


async def test_failover_mid_utterance_loses_and_repeats_no_word(
    fake_deepgram: FakeDeepgram, fake_google: FakeGoogle
) -> None:
    values = list(range(1, 21))
    audio = b"".join(
        tone_words(values[i : i + 4], pause_ms=400 if i % 8 == 0 else 0) for i in range(0, 20, 4)
    )
    fake_deepgram.drop_after_bytes = 2 * 16000 * 2 + 3200  # 2.1 s: inside an utterance
    chain = EngineChain([deepgram_engine(fake_deepgram), google_engine(fake_google)], FAST)
    stream, events = await tones_through(chain, audio)
    assert stream.switches == [("deepgram", "google", "closed")]
    assert final_words(events) == [f"w{v}" for v in values]
    assert_monotonic(events)
    # Deepgram finalized the first utterance; Google only heard what came after it.
    first_final = next(e for e in events if e.is_final)
    assert fake_google.calls[0].audio_bytes == len(audio) - first_final.end_ms * 32


async def test_an_engine_that_never_answers_the_close_fails_over_with_the_speech(
    fake_deepgram: FakeDeepgram, fake_google: FakeGoogle
) -> None:
    """Deepgram takes every frame and answers nothing, not even the close: when its close
    deadline passes, the audio it held goes to the next engine (not a clean end with no
    finals)."""
    fake_deepgram.mute = True
    values = [11, 12, 13, 21, 22]
    audio = tone_words(values[:3], pause_ms=600) + tone_words(values[3:], pause_ms=0)
    primary = deepgram_engine(fake_deepgram, close_timeout_s=1.0)
    chain = EngineChain([primary, google_engine(fake_google)], FAST)
    stream, events = await tones_through(chain, audio)
    assert stream.switches == [("deepgram", "google", "timeout")]
    assert final_words(events) == [f"w{v}" for v in values]
    assert fake_google.calls[0].audio_bytes == len(audio)


async def test_an_engine_that_answers_nothing_mid_stream_is_replaced_before_the_close(
    fake_deepgram: FakeDeepgram, fake_google: FakeGoogle
) -> None:
    """Deepgram takes audio and never answers: once audio has gone unanswered for
    `unanswered_s` while the client keeps talking, the stream moves to Google with that audio
    (not at the close, and before the replay buffer lets any of it go)."""
    fake_deepgram.mute = True
    values = [11, 12, 13, 21, 22]
    audio = tone_words(values[:3], pause_ms=600) + tone_words(values[3:], pause_ms=600)
    primary = deepgram_engine(fake_deepgram, unanswered_s=1.0, close_timeout_s=600)
    chain = EngineChain([primary, google_engine(fake_google)], FAST)
    stream = await chain.open(MONO)
    collector = Collector(stream).start()
    await feed(stream, chunks(audio))
    async with asyncio.timeout(60):  # the client goes on sending (silence) in real time
        while not stream.switches:
            await stream.send(bytes(3200))
            await asyncio.sleep(0.1)
    assert stream.switches == [("deepgram", "google", "timeout")]
    await stream.close()
    events = await collector.finish()
    assert collector.error is None
    assert final_words(events) == [f"w{v}" for v in values]


async def test_a_burst_of_audio_is_not_mistaken_for_an_engine_that_answers_nothing(
    fake_deepgram: FakeDeepgram,
) -> None:
    """A replayed backlog goes out far faster than any answer can come: 8 s of audio at once
    to a Deepgram that answers (`unanswered_s` 3) is no failure."""
    values = list(range(1, 13))
    audio = b"".join(tone_words(values[i : i + 3], pause_ms=600) for i in range(0, 12, 3))
    primary = deepgram_engine(fake_deepgram, unanswered_s=3.0)
    stream, events = await tones_through(EngineChain([primary], FAST), audio)
    assert stream.switches == []
    assert final_words(events) == [f"w{v}" for v in values]


async def test_a_pause_in_the_audio_is_not_taken_for_an_engine_that_answers_nothing(
    fake_deepgram: FakeDeepgram,
) -> None:
    """Audio Deepgram had no reason to answer yet (silence), then the client pauses past
    `unanswered_s` (keepalives only) and resumes: the clock restarts with the audio."""
    primary = deepgram_engine(fake_deepgram, unanswered_s=1.0, keepalive_s=0.3)
    stream = await EngineChain([primary], FAST).open(MONO)
    collector = Collector(stream).start()
    await stream.send(bytes(3200))  # 100 ms of silence: unanswered, rightly
    await asyncio.sleep(1.5)  # the client pauses
    await feed(stream, chunks(tone_words([1, 2], pause_ms=600)))
    await stream.close()
    events = await collector.finish()
    assert collector.error is None and stream.switches == []
    assert final_words(events) == ["w1", "w2"]


async def test_a_google_call_that_never_ends_fails_over_with_the_speech(
    fake_google: FakeGoogle, local_engine: LocalEngine
) -> None:
    """Google takes the audio and never ends the call the close half-closed: past its end
    deadline the audio since the last final goes to the local engine, which transcribes it."""
    fake_google.hang_at_end = True
    fx = load_fixture(MONO_16K)
    chain = EngineChain([google_engine(fake_google, end_timeout_s=1.0), local_engine], FAST)
    stream = await chain.open(StreamConfig(fx.sample_rate, fx.channels, "en"))
    collector = Collector(stream).start()
    await feed(stream, fx.chunks(chunk_ms=20))
    await stream.close()
    events = await collector.finish()

    assert collector.error is None
    assert stream.switches == [("google", "local", "timeout")]
    finals = [e for e in events if e.is_final and e.text]  # the fake hears no real speech
    assert len(finals) == 2, [f.text for f in finals]
    for final, sentence in zip(finals, fx.sentences, strict=True):
        assert wer(sentence, final.text) <= 0.35, (sentence, final.text)


async def assert_six_words_survive_one_reconnect(chain: EngineChain) -> None:
    """Six tone words through a chain whose one engine drops once: every word comes out, once."""
    stream = await chain.open(MONO)
    collector = Collector(stream).start()
    audio = tone_words([1, 2, 3], pause_ms=400) + tone_words([4, 5, 6], pause_ms=400)
    await feed(stream, chunks(audio))
    await stream.close()
    events = await collector.finish()
    assert collector.error is None
    assert stream.switches == [("deepgram", "deepgram", "closed")]
    assert final_words(events) == ["w1", "w2", "w3", "w4", "w5", "w6"]


async def test_streams_of_one_killed_local_worker_all_fail_over_without_opening_the_breaker() -> (
    None
):
    """One crash is one failure, however many streams it takes: counted once each, three
    streams on the worker would open the breaker and refuse their own failover (4503)."""
    local = LocalEngine(workers=1)
    chain = EngineChain([local], FAST)
    fx = load_fixture(MONO_16K)
    middle = fx.offset(sum(fx.spans_ms[0]) // 2)
    try:
        streams = [
            await chain.open(StreamConfig(fx.sample_rate, fx.channels, "en")) for _ in range(3)
        ]
        (victim,) = local.worker_pids()
        collectors = [Collector(stream).start() for stream in streams]
        for stream in streams:
            await feed(stream, fx.chunks(0, middle))
        for collector in collectors:
            await collector.wait_for(lambda c: len(c.events) >= 1)  # mid-utterance, heard
        os.kill(victim, signal.SIGKILL)
        for stream in streams:
            await feed(stream, fx.chunks(middle))
            await stream.close()
        for stream, collector in zip(streams, collectors, strict=True):
            events = await collector.finish()
            assert collector.error is None, collector.error
            assert [old for old, _, _ in stream.switches] == ["local"]
            finals = [e for e in events if e.is_final and e.text]
            assert len(finals) == 2, [f.text for f in finals]
            for final, sentence in zip(finals, fx.sentences, strict=True):
                assert wer(sentence, final.text) <= 0.35, (sentence, final.text)
        assert chain.breakers["local"].state(time.monotonic()) is BreakerState.CLOSED
        assert victim not in local.worker_pids()
    finally:
        await local.aclose()


async def test_a_transient_drop_reconnects_to_the_same_engine(
    fake_deepgram: FakeDeepgram,
) -> None:
    fake_deepgram.drop_after_bytes, fake_deepgram.breaks_left = 32000, 1
    chain = EngineChain([deepgram_engine(fake_deepgram)], FAST)
    await assert_six_words_survive_one_reconnect(chain)
    assert len(fake_deepgram.sessions) == 2


async def test_a_replacement_slow_to_open_gets_the_later_rounds_without_tripping_the_breaker(
    fake_deepgram: FakeDeepgram,
) -> None:
    """Timeouts opening the replacement (a worker starting on a loaded machine) are not
    failures: the breaker, which the dead stream marked once, stays closed for the last round."""
    fake_deepgram.drop_after_bytes, fake_deepgram.breaks_left = 32000, 1
    # Each slow upgrade outlasts every budget below whatever the load, and a prompt one has
    # seconds to open: the outcome depends on the order of events, not on the machine's speed.
    fake_deepgram.slow_upgrades, fake_deepgram.upgrade_delay_s = 2, 6.0
    policy = ChainPolicy(
        retry_base_s=0.01, retry_max_s=0.05, failover_open_timeout_s=0.5, open_timeout_s=5.0
    )
    metrics = Metrics()
    chain = EngineChain([deepgram_engine(fake_deepgram)], policy, reporter=metrics)
    await assert_six_words_survive_one_reconnect(chain)
    assert (
        metric_value(metrics, "engine_stream_failures_total", engine="deepgram", reason="timeout")
        == 2
    )
    assert chain.breakers["deepgram"].state(time.monotonic()) is BreakerState.CLOSED


async def test_an_engine_that_keeps_dying_before_any_final_trips_its_breaker(
    fake_deepgram: FakeDeepgram,
) -> None:
    fake_deepgram.die_after_bytes = 8000  # every connection dies before its first final
    chain = EngineChain([deepgram_engine(fake_deepgram)], FAST)
    stream = await chain.open(MONO)
    collector = Collector(stream).start()
    with contextlib.suppress(EngineUnavailable):
        await feed(stream, chunks(tone_words([1, 2, 3, 4], pause_ms=400)))
    await collector.finish()
    assert isinstance(collector.error, EngineUnavailable)
    # Reconnected with the replay until the breaker opened: no endless reconnect loop.
    assert len(fake_deepgram.sessions) == FAST.breaker_failures
    assert chain.breakers["deepgram"].state(time.monotonic()) is BreakerState.OPEN


async def test_with_no_engine_left_the_stream_fails_with_engine_unavailable(
    fake_deepgram: FakeDeepgram,
) -> None:
    fake_deepgram.die_after_bytes = 16000
    chain = EngineChain([deepgram_engine(fake_deepgram)], FAST)
    stream = await chain.open(MONO)
    collector = Collector(stream).start()
    fake_deepgram.reject_status = 401
    await feed(stream, chunks(tone_words([1, 2, 3, 4, 5])))
    await collector.finish()
    assert isinstance(collector.error, EngineUnavailable)
    with pytest.raises(EngineUnavailable):
        await stream.send(b"\0\0")
    assert fake_deepgram.rejected == 1  # 401: never retried


async def test_the_breaker_opens_and_later_lets_the_primary_back(
    fake_deepgram: FakeDeepgram, fake_google: FakeGoogle
) -> None:
    now = [0.0]
    policy = ChainPolicy(
        breaker_failures=2, breaker_cooldown_s=30, retry_attempts=1, retry_base_s=0.01
    )
    chain = EngineChain(
        [deepgram_engine(fake_deepgram), google_engine(fake_google)], policy, clock=lambda: now[0]
    )
    fake_deepgram.reject_status = 503

    async def engine_of_a_stream() -> str:
        stream = await chain.open(MONO)
        collector = Collector(stream).start()
        await feed(stream, chunks(tone_words([1], pause_ms=400)))
        await stream.close()
        await collector.finish()
        assert [e.text.lower() for e in collector.finals] == ["w1"]
        return stream.engine_name

    assert [await engine_of_a_stream() for _ in range(2)] == ["google", "google"]
    assert fake_deepgram.rejected == 2
    assert chain.breakers["deepgram"].state(now[0]) is BreakerState.OPEN
    fake_deepgram.reject_status = None  # Deepgram recovers, but the breaker is still open
    now[0] += 29
    assert await engine_of_a_stream() == "google"
    assert len(fake_deepgram.sessions) == 0  # not even tried
    now[0] += 2  # cool-down over: a probe goes to Deepgram, and its success closes the breaker
    assert await engine_of_a_stream() == "deepgram"
    assert chain.breakers["deepgram"].state(now[0]) is BreakerState.CLOSED
    assert await engine_of_a_stream() == "deepgram"


async def test_a_finalize_the_dead_engine_never_answered_is_asked_of_the_next(
    fake_deepgram: FakeDeepgram, fake_google: FakeGoogle
) -> None:
    chain = EngineChain([deepgram_engine(fake_deepgram), google_engine(fake_google)], FAST)
    stream = await chain.open(MONO)
    collector = Collector(stream).start()
    await feed(stream, chunks(tone_words([1, 2], gap_ms=0)))  # no pause: only finalize ends it
    await eventually(lambda: fake_deepgram.sessions[0].audio_bytes > 0, what="audio arrived")
    fake_deepgram.die_on_finalize = True  # Deepgram dies instead of answering the finalize
    await stream.finalize()
    await collector.wait_for(lambda c: len(c.finals) >= 1)
    assert not collector.ended  # the final came from the finalize, not from closing
    assert stream.switches and stream.switches[0][:2] == ("deepgram", "google")
    await stream.close()
    events = await collector.finish()
    assert final_words(events) == ["w1", "w2"]
    assert [kind for _, kind in fake_deepgram.sessions[0].controls] == ["Finalize"]


async def test_a_hanging_engine_gets_its_open_budget_then_the_next_engine_serves(
    fake_google: FakeGoogle,
) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept the TCP connection, never answer the upgrade
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hanging = DeepgramEngine("key", DeepgramOptions(url=f"ws://127.0.0.1:{port}"))
    # The hanging engine never answers, so it always uses up its budget; Google, next, must
    # open within the same budget on a loaded machine.
    policy = ChainPolicy(open_timeout_s=3.0, retry_base_s=0.01, retry_max_s=0.05)
    metrics = Metrics()
    chain = EngineChain([hanging, google_engine(fake_google)], policy, reporter=metrics)
    async with server:
        stream = await chain.open(MONO)
        assert stream.engine_name == "google"
        assert (
            metric_value(
                metrics, "engine_stream_failures_total", engine="deepgram", reason="timeout"
            )
            >= 1
        )
        await stream.close()


async def test_a_full_local_engine_passes_streams_on_without_tripping_its_breaker(
    fake_google: FakeGoogle,
) -> None:
    """A refusal for capacity is "full", not "broken": once a slot frees, local serves again."""
    local = LocalEngine(workers=1, max_streams=1)
    # Only a refusal for capacity may send a stream to Google: a worker slow to start may not.
    policy = ChainPolicy(breaker_failures=2, open_timeout_s=60.0)
    chain = EngineChain([local, google_engine(fake_google)], policy)
    try:
        await local.warm_up()
        held = await chain.open(MONO)
        assert held.engine_name == "local"
        for _ in range(3):  # more refusals than the breaker's threshold
            overflow = await chain.open(MONO)
            assert overflow.engine_name == "google"
            await overflow.close()
        assert chain.breakers["local"].state(chain.clock()) is BreakerState.CLOSED
        await held.close()
        again = await chain.open(MONO)
        assert again.engine_name == "local"
        await again.close()
    finally:
        await local.aclose()


async def test_an_aborted_probe_does_not_keep_the_breaker_half_open_forever(
    fake_deepgram: FakeDeepgram, fake_google: FakeGoogle
) -> None:
    now = [0.0]
    policy = ChainPolicy(breaker_failures=1, breaker_cooldown_s=10, retry_attempts=1)
    chain = EngineChain(
        [deepgram_engine(fake_deepgram), google_engine(fake_google)], policy, clock=lambda: now[0]
    )
    fake_deepgram.reject_status = 503
    first = await chain.open(MONO)
    assert first.engine_name == "google"
    await first.close()
    assert chain.breakers["deepgram"].state(now[0]) is BreakerState.OPEN
    fake_deepgram.reject_status = None
    now[0] += 11  # half-open: the next stream is Deepgram's probe...
    probe = await chain.open(MONO)
    assert probe.engine_name == "deepgram"
    await probe.abort()  # ...which ends before proving anything (its client vanished)
    after = await chain.open(MONO)
    assert after.engine_name == "deepgram"  # the probe was given back, not lost
    await after.close()


class _StallingStream(EngineStream):
    """An engine stream whose connection stops taking audio (a send never returns) and whose
    results then end with an error, as a vendor's socket does when it hangs and is reset."""

    def __init__(self) -> None:
        self.sends = 0
        self.stalled = asyncio.Event()
        self.die = asyncio.Event()

    async def send(self, pcm: bytes) -> None:
        self.sends += 1
        if self.sends == 3:
            self.stalled.set()
            await asyncio.Event().wait()  # never returns

    async def finalize(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def events(self) -> AsyncIterator[EngineEvent]:
        await self.die.wait()
        raise EngineError("stalling: connection reset", reason="closed")
        yield  # pragma: no cover


class _StallingEngine(Engine):
    name = "stalling"

    def __init__(self) -> None:
        self.stream = _StallingStream()

    def supported_languages(self) -> frozenset[str]:
        return frozenset({"en"})

    async def open(self, config: StreamConfig) -> EngineStream:
        return self.stream


async def test_a_send_blocked_on_a_stream_that_dies_returns_and_the_audio_is_replayed(
    fake_google: FakeGoogle,
) -> None:
    """The send runs in the caller's task (no task per frame): the leg's death must still
    interrupt it, and the caller's task must come out of it uncancelled."""
    stalling = _StallingEngine()
    chain = EngineChain([stalling, google_engine(fake_google)], FAST)
    stream = await chain.open(StreamConfig(16000, 1, "en"))
    collector = Collector(stream).start()
    audio = tone_words([1, 2, 3, 4], pause_ms=400)
    frames = chunks(audio)
    await stream.send(frames[0])
    await stream.send(frames[1])
    blocked = asyncio.create_task(stream.send(frames[2]))
    await asyncio.wait_for(stalling.stream.stalled.wait(), 30)
    assert not blocked.done()
    stalling.stream.die.set()
    await asyncio.wait_for(blocked, 30)  # returned, not cancelled
    assert not blocked.cancelled() and blocked.exception() is None
    assert blocked.cancelling() == 0  # the interruption was taken back
    await feed(stream, frames[3:])
    await stream.close()
    events = await collector.finish()
    assert collector.error is None
    assert stream.switches == [("stalling", "google", "closed")]
    # Google heard everything, the stalled frame included (it was in the replay buffer).
    assert final_words(events) == ["w1", "w2", "w3", "w4"]


async def test_a_frame_sent_after_a_waiting_finalize_follows_it(
    fake_deepgram: FakeDeepgram,
) -> None:
    # Between the lock's release and the waiting finalize's turn, the lock reads unlocked: a
    # frame sent then must still wait its turn, not slip into the batch the finalize flushes.
    chain = EngineChain([deepgram_engine(fake_deepgram)], FAST)
    stream = await chain.open(MONO)
    first, second = b"\x01\x00" * 320, b"\x02\x00" * 320
    await stream.send(first)  # into the Deepgram batch
    order = stream._lock  # type: ignore[attr-defined]  # held as a slow send would hold it
    await order.__aenter__()
    finalize = asyncio.create_task(stream.finalize())
    await asyncio.sleep(0)  # the finalize now waits for the lock
    await order.__aexit__(None, None, None)
    await stream.send(second)
    await finalize
    await stream.close()
    session = fake_deepgram.sessions[-1]
    assert session.finalized_at == [len(first)]
    assert session.audio_bytes == len(first) + len(second)
    await chain.aclose()


async def finalized_through_a_death(
    fake: FakeDeepgram, utterances: list[bytes], after: bytes
) -> tuple[list[tuple[str, str, str]], list[list[str]]]:
    """Each utterance then a finalize, then `after`, all with no await yielding to the network
    (so all reach the replay buffer before the engine's death is noticed), on a chain that
    fails over to a new Deepgram session; (the stream's switches, each final's words)."""
    chain = EngineChain([deepgram_engine(fake)], FAST)
    stream = await chain.open(MONO)
    collector = Collector(stream).start()
    for utterance in utterances:
        await feed(stream, chunks(utterance))
        await stream.finalize()
    await feed(stream, chunks(after))
    await eventually(lambda: len(fake.sessions) == 2, what="the replacement session")
    await stream.close()
    events = await collector.finish()
    await chain.aclose()
    finals = [[w.text.lower() for w in e.words] for e in events if e.is_final and e.words]
    return stream.switches, finals


async def test_a_finalize_replayed_after_a_failover_lands_where_the_client_asked(
    fake_deepgram: FakeDeepgram,
) -> None:
    # Frames the client sent after its finalize, before the engine's death was noticed, are in
    # the replay buffer too: the next engine must be asked to finalize before them, not after.
    utterance, after = tone_words([1, 2], gap_ms=0), tone_words([3, 4], gap_ms=0)
    fake_deepgram.die_on_finalize, fake_deepgram.breaks_left = True, 1
    switches, finals = await finalized_through_a_death(fake_deepgram, [utterance], after)
    assert switches and switches[0][:2] == ("deepgram", "deepgram")
    assert fake_deepgram.sessions[1].finalized_at == [len(utterance)]
    assert finals == [["w1", "w2"], ["w3", "w4"]]


async def test_a_final_answers_the_finalizes_before_its_end_not_a_later_one(
    fake_deepgram: FakeDeepgram,
) -> None:
    # Two finalizes outstanding; the engine answers the first, then dies on the second: the
    # next engine must still be asked to finalize at the second one's point.
    first, second, after = (tone_words(words, gap_ms=0) for words in ([1, 2], [3, 4], [5, 6]))
    fake_deepgram.die_on_finalize, fake_deepgram.breaks_left = True, 1
    fake_deepgram.finalizes_answered = 1  # the first final arrives after the second finalize
    _, finals = await finalized_through_a_death(fake_deepgram, [first, second], after)
    assert fake_deepgram.sessions[0].finalized_at == [len(first), len(first) + len(second)]
    assert fake_deepgram.sessions[1].finalized_at == [len(second)]
    assert finals == [["w1", "w2"], ["w3", "w4"], ["w5", "w6"]]


def _finals_only(rewrite: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> Any:
    """A Deepgram rewrite that changes final results only, leaving interim ones as sent."""
    return lambda payload, _n: rewrite(payload) if payload["is_final"] else [payload]


def _alternative(payload: dict[str, Any]) -> dict[str, Any]:
    return payload["channel"]["alternatives"][0]


async def test_a_final_the_vendor_sends_twice_is_one_final(
    fake_deepgram: FakeDeepgram,
) -> None:
    fake_deepgram.rewrite = _finals_only(lambda payload: [payload, payload])
    values = [11, 12, 21, 22, 31]
    audio = tone_words(values[:2], pause_ms=600) + tone_words(values[2:4], pause_ms=600)
    audio += tone_words(values[4:], pause_ms=0)
    _, events = await tones_through(EngineChain([deepgram_engine(fake_deepgram)], FAST), audio)
    assert fake_deepgram.results_sent >= 3  # every final was sent twice
    assert final_words(events) == [f"w{v}" for v in values]


async def test_a_final_the_vendor_sends_again_after_a_later_one_is_one_final(
    fake_deepgram: FakeDeepgram,
) -> None:
    sent: list[dict[str, Any]] = []

    def first_again_after_the_second(payload: dict[str, Any]) -> list[dict[str, Any]]:
        sent.append(copy.deepcopy(payload))
        return [payload, sent[0]] if len(sent) == 2 else [payload]

    fake_deepgram.rewrite = _finals_only(first_again_after_the_second)
    values = [11, 12, 21, 22, 31]
    audio = tone_words(values[:2], pause_ms=600) + tone_words(values[2:4], pause_ms=600)
    audio += tone_words(values[4:], pause_ms=0)
    _, events = await tones_through(EngineChain([deepgram_engine(fake_deepgram)], FAST), audio)
    assert len(sent) >= 3
    assert final_words(events) == [f"w{v}" for v in values]


async def test_finals_placed_after_the_previous_one_are_logged_once_not_each_time(
    fake_deepgram: FakeDeepgram,
) -> None:
    from structlog.testing import capture_logs

    def far_future(payload: dict[str, Any]) -> list[dict[str, Any]]:
        payload["start"] = 3_000_000.0
        for word in _alternative(payload)["words"]:
            word["start"] = word["end"] = 3_000_000.0
        return [payload]

    fake_deepgram.rewrite = _finals_only(far_future)
    values = [11, 12, 21, 22, 31]
    audio = tone_words(values[:2], pause_ms=600) + tone_words(values[2:4], pause_ms=600)
    audio += tone_words(values[4:], pause_ms=0)
    with capture_logs() as logs:
        _, events = await tones_through(EngineChain([deepgram_engine(fake_deepgram)], FAST), audio)
    assert final_words(events) == [f"w{v}" for v in values]
    placed = [e for e in logs if e["event"] == "engine final placed after the previous one"]
    assert [e["count"] for e in placed] == [1]


async def test_one_absurd_time_stays_within_the_audio_and_moves_no_later_final(
    fake_deepgram: FakeDeepgram,
) -> None:
    finals_sent = itertools.count()

    def far_future(payload: dict[str, Any]) -> list[dict[str, Any]]:
        if next(finals_sent) == 0:  # the first final starts 35 days in
            payload["start"] = 3_000_000.0
            for word in _alternative(payload)["words"]:
                word["start"] = word["end"] = 3_000_000.0
        return [payload]

    fake_deepgram.rewrite = _finals_only(far_future)
    audio = tone_words([11, 12], pause_ms=600) + tone_words([21, 22], pause_ms=600)
    audio += tone_words([31], pause_ms=0)
    heard_ms = len(audio) // 32
    honest_fake = FakeDeepgram(api_key=fake_deepgram.api_key)
    await honest_fake.start()
    try:
        chain = EngineChain([deepgram_engine(honest_fake)], FAST)
        _, expected = await tones_through(chain, audio)
    finally:
        await honest_fake.stop()
    _, events = await tones_through(EngineChain([deepgram_engine(fake_deepgram)], FAST), audio)
    finals = [e for e in events if e.is_final and e.text]
    wanted = [e for e in expected if e.is_final and e.text]
    assert [e.text for e in finals] == [e.text for e in wanted]
    assert all(0 <= e.start_ms <= e.end_ms <= heard_ms for e in events)
    for event in events:
        assert all(w.end_ms <= heard_ms for w in event.words)
    # The later finals are where the vendor put them (the absurd one moved them nowhere).
    assert [(e.start_ms, e.end_ms) for e in finals[1:]] == [
        (e.start_ms, e.end_ms) for e in wanted[1:]
    ]


async def test_text_no_store_or_viewer_can_hold_is_cleaned(fake_deepgram: FakeDeepgram) -> None:
    def unwritable(payload: dict[str, Any]) -> list[dict[str, Any]]:
        alternative = _alternative(payload)
        alternative["transcript"] = "a\x00b\x07c \ud83d end"
        alternative["words"][0]["punctuated_word"] = "w\x00x"
        for word in alternative["words"]:
            word["speaker"] = "not a number"
        alternative["confidence"] = "high"
        return [payload]

    fake_deepgram.rewrite = _finals_only(unwritable)
    _, events = await tones_through(
        EngineChain([deepgram_engine(fake_deepgram)], FAST), tone_words([11, 12], pause_ms=0)
    )
    [final] = [e for e in events if e.is_final and e.words]
    assert final.text == "abc \ufffd end"
    assert final.confidence is None and final.speaker is None
    assert final.words[0].text == "wx" and final.words[0].speaker is None
    final.text.encode("utf-8")  # writable anywhere


async def test_a_result_without_text_fails_over_with_the_speech(
    fake_deepgram: FakeDeepgram, fake_google: FakeGoogle
) -> None:
    def no_text(payload: dict[str, Any]) -> list[dict[str, Any]]:
        _alternative(payload)["transcript"] = None
        return [payload]

    fake_deepgram.rewrite = _finals_only(no_text)
    values = [11, 12, 21]
    audio = tone_words(values[:2], pause_ms=600) + tone_words(values[2:], pause_ms=0)
    chain = EngineChain([deepgram_engine(fake_deepgram), google_engine(fake_google)], FAST)
    stream, events = await tones_through(chain, audio)
    assert stream.switches == [("deepgram", "google", "malformed")]
    assert final_words(events) == [f"w{v}" for v in values]


async def test_a_failover_says_when_audio_past_the_replays_bound_is_not_replayed(
    fake_deepgram: FakeDeepgram, fake_google: FakeGoogle
) -> None:
    """Twelve words without a pause (3 s, no final) and a replay bound of 1 s: the engine that
    takes over hears the last second only, and the log says how much it did not hear."""
    from dataclasses import replace as with_policy

    from structlog.testing import capture_logs

    values = list(range(11, 23))
    audio = tone_words(values, pause_ms=0)
    fake_deepgram.die_after_bytes = len(audio) - 640
    policy = with_policy(FAST, replay_max_s=1.0)
    chain = EngineChain([deepgram_engine(fake_deepgram), google_engine(fake_google)], policy)
    with capture_logs() as logs:
        stream, events = await tones_through(chain, audio)
    assert stream.switches == [("deepgram", "google", "closed")]
    [warning] = [e for e in logs if e["event"].startswith("failover: audio past")]
    assert warning["engine"] == "google" and 1.5 <= warning["seconds"] <= 2.0, warning
    assert final_words(events) == [f"w{v}" for v in values[-4:]]  # the last second's words


class _ScriptedStream(EngineStream):
    """An engine stream that takes audio and answers the events a test puts in `results`."""

    def __init__(self) -> None:
        self.results: asyncio.Queue[EngineEvent | None] = asyncio.Queue()

    async def send(self, pcm: bytes) -> None:
        pass

    async def finalize(self) -> None:
        pass

    async def close(self) -> None:
        await self.results.put(None)

    async def events(self) -> AsyncIterator[EngineEvent]:
        while (event := await self.results.get()) is not None:
            yield event


class _ScriptedEngine(Engine):
    name = "scripted"

    def __init__(self) -> None:
        self.stream = _ScriptedStream()

    def supported_languages(self) -> frozenset[str]:
        return frozenset({"en"})

    async def open(self, config: StreamConfig) -> EngineStream:
        return self.stream


async def test_the_same_words_of_two_channels_are_two_finals_and_a_resent_one_is_not() -> None:
    """Two people answer "Yes." at once, one per channel (recognised apart, finals interleaved,
    the second ending first): both are kept; the first sent again is dropped."""
    engine = _ScriptedEngine()
    stream = await EngineChain([engine], FAST).open(StreamConfig(16000, 2, "en"))
    await stream.send(b"\x00" * (16000 * 4 * 3))  # 3 s of stereo
    results = [
        EngineEvent(True, "Yes.", 1000, 1500, (), "ch1", 0.9),
        EngineEvent(True, "Yes.", 1100, 1400, (), "ch2", 0.9),
        EngineEvent(True, "Yes.", 1100, 1400, (), "ch2", 0.9),  # sent again
    ]
    for result in results:
        await engine.stream.results.put(result)
    collector = Collector(stream).start()
    await stream.close()
    finals = [(e.text, e.speaker, e.start_ms, e.end_ms) for e in await collector.finish()]
    assert finals == [("Yes.", "ch1", 1000, 1500), ("Yes.", "ch2", 1100, 1400)]
