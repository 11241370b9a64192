"""Deepgram Live through deepgram-sdk against the protocol-faithful fake."""

from __future__ import annotations

import pytest

from ingest.engines.base import EngineError, StreamConfig
from tests.engines.conftest import API_KEY, chunks, deepgram_engine
from tests.engines.fake_deepgram import FakeDeepgram
from tests.engines.toy_asr import silence, tone_words
from tests.ingest.helpers import Collector, feed
from tests.util import eventually

MONO = StreamConfig(16000, 1, "en")


async def test_the_query_says_what_the_stream_is(fake_deepgram: FakeDeepgram) -> None:
    engine = deepgram_engine(fake_deepgram, keyterms=("Acme", "standup"))
    stream = await engine.open(StreamConfig(48000, 2, "tr"))
    await stream.close()
    await (await engine.open(StreamConfig(16000, 1, "en-gb"))).close()
    await (await engine.open(StreamConfig(16000, 1, "auto"))).close()
    assert [s.query["language"] for s in fake_deepgram.sessions[1:]] == [["en-GB"], ["multi"]]
    query = fake_deepgram.sessions[0].query
    for key, value in {
        "model": "nova-3", "language": "tr", "encoding": "linear16", "sample_rate": "48000",
        "channels": "2", "interim_results": "true", "punctuate": "true", "smart_format": "true",
        "diarize": "true", "endpointing": "300", "utterance_end_ms": "1000", "vad_events": "true",
    }.items():  # fmt: skip
        assert query[key] == [value], key
    assert query["keyterm"] == ["Acme", "standup"]


async def test_results_become_partials_and_finals_split_by_speaker(
    fake_deepgram: FakeDeepgram,
) -> None:
    stream = await deepgram_engine(fake_deepgram).open(MONO)
    collector = Collector(stream).start()
    # w1 w2 by speaker 0, then w3 w4 by speaker 1, in one utterance; then w5 by speaker 0.
    await feed(stream, chunks(tone_words([1, 2, 103, 104], pause_ms=500)))
    await feed(stream, chunks(tone_words([5], pause_ms=500)))
    await stream.close()
    events = await collector.finish()

    partials = [e for e in events if not e.is_final]
    finals = [e for e in events if e.is_final]
    assert [p.text for p in partials[:4]] == ["W1", "W1 w2", "W1 w2 w3", "W1 w2 w3 w4"]
    assert [(f.text, f.speaker) for f in finals] == [("W1 w2", "S0"), ("w3 w4", "S1"), ("W5", "S0")]
    first, second, third = finals
    assert [w.text for w in first.words] == ["W1", "w2"]  # punctuated_word
    assert first.start_ms == first.words[0].start_ms == 0
    assert first.end_ms == first.words[1].end_ms == 450  # the turn ends with its last word
    assert second.start_ms == second.words[0].start_ms == 500
    assert second.end_ms >= second.words[-1].end_ms == 950
    assert third.start_ms >= second.end_ms
    assert all(f.confidence == pytest.approx(0.9) for f in finals)


async def test_keepalive_holds_a_paused_stream_past_the_idle_timeout(
    fake_deepgram: FakeDeepgram,
) -> None:
    fake_deepgram.idle_timeout_s = 1.0
    stream = await deepgram_engine(fake_deepgram, keepalive_s=0.3).open(MONO)
    collector = Collector(stream).start()
    await feed(stream, chunks(tone_words([1], pause_ms=400)))
    session = fake_deepgram.sessions[0]
    # The client pauses for several idle timeouts; KeepAlive is all that flows.
    await eventually(
        lambda: [kind for _, kind in session.controls].count("KeepAlive") >= 10,
        within=20,
        what="KeepAlive while paused",
    )
    times = [t for t, kind in session.controls if kind == "KeepAlive"]
    assert times[-1] - times[0] > 2 * fake_deepgram.idle_timeout_s
    assert not session.ended
    await feed(stream, chunks(tone_words([2], pause_ms=400)))
    await collector.wait_for(lambda c: len(c.finals) == 2)
    await stream.close()
    await collector.finish()
    assert collector.error is None
    assert session.close_code == 1000


async def test_without_keepalive_the_idle_stream_is_closed_and_reported(
    fake_deepgram: FakeDeepgram,
) -> None:
    fake_deepgram.idle_timeout_s = 0.5
    stream = await deepgram_engine(fake_deepgram, keepalive_s=60).open(MONO)
    collector = Collector(stream).start()
    await stream.send(silence(100))
    await collector.finish(timeout=20)
    assert isinstance(collector.error, EngineError)
    assert collector.error.retryable and collector.error.reason == "closed"
    assert fake_deepgram.sessions[0].close_reason == "NET-0001"


async def test_finalize_and_close_send_finalize_and_closestream_at_the_right_moments(
    fake_deepgram: FakeDeepgram,
) -> None:
    stream = await deepgram_engine(fake_deepgram).open(MONO)
    collector = Collector(stream).start()
    await feed(stream, chunks(tone_words([7, 8], gap_ms=0)))
    assert fake_deepgram.sessions[0].controls == []
    await stream.finalize()
    await collector.wait_for(lambda c: len(c.finals) == 1)
    assert [k for _, k in fake_deepgram.sessions[0].controls] == ["Finalize"]
    await feed(stream, chunks(tone_words([9], gap_ms=0)))
    await stream.close()  # CloseStream, then the last Results before the end
    events = await collector.finish()
    assert [k for _, k in fake_deepgram.sessions[0].controls] == ["Finalize", "CloseStream"]
    assert [e.text for e in events if e.is_final] == ["W7 w8", "W9"]
    assert fake_deepgram.sessions[0].close_code == 1000


async def test_a_bad_key_is_final_and_never_shown(fake_deepgram: FakeDeepgram) -> None:
    wrong = "dg-wrong-key-fedcba9876543210"
    engine = deepgram_engine(fake_deepgram, key=wrong)
    with pytest.raises(EngineError) as caught:
        await engine.open(MONO)
    error = caught.value
    assert not error.retryable and error.reason == "auth" and "401" in str(error)
    assert error.__cause__ is None  # the SDK's ApiError carries the request headers
    for text in (str(error), repr(error), repr(engine), repr(error.__cause__)):
        assert wrong not in text and API_KEY not in text
    assert fake_deepgram.rejected == 1


async def test_server_errors_at_the_handshake_are_retryable(fake_deepgram: FakeDeepgram) -> None:
    fake_deepgram.reject_status = 503
    with pytest.raises(EngineError) as caught:
        await deepgram_engine(fake_deepgram).open(MONO)
    assert caught.value.retryable and caught.value.reason == "server_error"
    fake_deepgram.reject_status = 429
    with pytest.raises(EngineError) as caught:
        await deepgram_engine(fake_deepgram).open(MONO)
    assert caught.value.retryable and caught.value.reason == "rate_limited"


async def test_a_connection_dropped_mid_stream_is_a_retryable_failure(
    fake_deepgram: FakeDeepgram,
) -> None:
    fake_deepgram.drop_after_bytes = 16000
    stream = await deepgram_engine(fake_deepgram).open(MONO)
    collector = Collector(stream).start()
    with pytest.raises(EngineError):
        for chunk in chunks(tone_words([1, 2, 3, 4, 5], pause_ms=500)):
            await stream.send(chunk)
        await collector.finish()
        raise collector.error or AssertionError("the drop went unnoticed")
    await collector.finish()
    assert isinstance(collector.error, EngineError) and collector.error.retryable
    await stream.abort()


async def test_client_frames_go_out_in_batches_and_a_partial_batch_does_not_wait(
    fake_deepgram: FakeDeepgram,
) -> None:
    """20 ms frames leave as 100 ms messages (one vendor send in five); what is left of a batch
    goes out after 100 ms without more audio, and before Finalize; nothing is lost or added."""
    engine = deepgram_engine(fake_deepgram)
    stream = await engine.open(StreamConfig(16000, 1, "en"))
    collector = Collector(stream).start()
    frames = chunks(tone_words([1, 2, 3], pause_ms=600))  # 640-byte frames
    for frame in frames[:50]:  # 1 s
        await stream.send(frame)
    session = fake_deepgram.sessions[0]
    await eventually(lambda: session.audio_bytes == 50 * 640, within=30, what="1 s delivered")
    assert session.audio_messages == 10
    await stream.send(frames[50])  # a lone frame, then the client pauses
    await eventually(lambda: session.audio_bytes == 51 * 640, within=30, what="lone frame sent")
    assert session.audio_messages == 11
    for frame in frames[51:]:
        await stream.send(frame)
    await stream.finalize()
    await eventually(lambda: any(k == "Finalize" for _, k in session.controls), within=30)
    assert session.audio_bytes == sum(map(len, frames))  # the rest went before Finalize
    await stream.close()
    events = await collector.finish()
    assert [e.text for e in events if e.is_final and e.text] == ["W1 w2 w3"]


async def test_batching_off_sends_every_frame(fake_deepgram: FakeDeepgram) -> None:
    engine = deepgram_engine(fake_deepgram, send_batch_ms=0)
    stream = await engine.open(StreamConfig(16000, 1, "en"))
    for frame in chunks(tone_words([1]))[:7]:
        await stream.send(frame)
    session = fake_deepgram.sessions[0]
    await eventually(lambda: session.audio_messages == 7, within=30, what="7 messages")
    await stream.close()
