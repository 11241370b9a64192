"""Google Speech v1 streaming through google-cloud-speech against the grpc.aio fake."""

from __future__ import annotations

import array
import itertools

import grpc
import pytest

from gateway.observability.metrics import Metrics
from ingest.engines.base import EngineError, EngineEvent, StreamConfig
from ingest.engines.google import google_language
from tests.engines.conftest import chunks, google_engine
from tests.engines.fake_google import FakeGoogle
from tests.engines.toy_asr import tone_words
from tests.ingest.helpers import Collector, feed
from tests.util import eventually, metric_value

MONO = StreamConfig(16000, 1, "en")


def final_words(events: list[EngineEvent]) -> list[str]:
    return [w.text for e in events if e.is_final for w in e.words]


@pytest.mark.parametrize(
    ("language", "code"),
    [("en", "en-US"), ("tr", "tr-TR"), ("de", "de-DE"), ("en-gb", "en-GB"), ("zh", "cmn-Hans-CN")],
)
def test_languages_get_a_region(language: str, code: str) -> None:
    assert google_language(language) == code


async def test_the_first_request_configures_the_stream(fake_google: FakeGoogle) -> None:
    stream = await google_engine(fake_google).open(StreamConfig(48000, 2, "tr"))
    collector = Collector(stream).start()
    # One second of 48 kHz stereo in one piece: split into requests under 25 KB.
    await stream.send(tone_words([1], sample_rate=48000, channels=2, word_ms=1000))
    await stream.close()
    await collector.finish()
    assert collector.error is None
    call = fake_google.calls[0]
    config = call.config.config
    assert (config.sample_rate_hertz, config.audio_channel_count) == (48000, 2)
    assert config.language_code == "tr-TR" and config.model == "latest_long"
    assert config.encoding == config.AudioEncoding.LINEAR16
    assert config.enable_word_time_offsets and config.enable_automatic_punctuation
    # Stereo: each channel recognized on its own (and labelled by channel, not diarized).
    assert config.enable_separate_recognition_per_channel
    assert not config.diarization_config.enable_speaker_diarization
    assert call.config.interim_results and not call.config.single_utterance
    assert call.audio_bytes == 48000 * 2 * 2 + 48000 * 2 * 2 * 50 // 1000
    assert 0 < call.max_request_bytes <= 25_600


async def test_results_map_to_partials_and_finals_with_speakers(fake_google: FakeGoogle) -> None:
    stream = await google_engine(fake_google).open(MONO)
    collector = Collector(stream).start()
    await feed(stream, chunks(tone_words([1, 2, 103], pause_ms=500)))
    await stream.close()
    events = await collector.finish()
    assert [e.text for e in events if not e.is_final] == ["w1", "w1 w2", "w1 w2 w3"]
    finals = [e for e in events if e.is_final]
    assert [(f.text, f.speaker) for f in finals] == [("w1 w2", "S0"), ("w3", "S1")]
    assert finals[0].words[1].end_ms == 450 and finals[1].words[0].start_ms == 500


def interleave(left: bytes, right: bytes) -> bytes:
    """Two mono PCM buffers as one stereo buffer (the shorter padded with silence)."""
    a, b = array.array("h", left), array.array("h", right)
    size = max(len(a), len(b))
    a.extend([0] * (size - len(a)))
    b.extend([0] * (size - len(b)))
    out = array.array("h", [0]) * (2 * size)
    out[0::2], out[1::2] = a, b
    return out.tobytes()


async def test_stereo_is_recognized_per_channel_and_labelled(fake_google: FakeGoogle) -> None:
    """Both sides of a stereo stream are transcribed (Google recognizes channel 1 only unless
    asked), each final labelled with its channel as the speaker."""
    stream = await google_engine(fake_google).open(StreamConfig(16000, 2, "en"))
    collector = Collector(stream).start()
    left = tone_words([1, 2], pause_ms=800)
    right = bytes(len(left)) + tone_words([3, 4], pause_ms=800)  # answers after the left
    await feed(stream, chunks(interleave(left, right), 3200 * 2))
    await stream.close()
    events = await collector.finish()
    assert collector.error is None
    finals = [e for e in events if e.is_final]
    assert [(f.text, f.speaker) for f in finals] == [("w1 w2", "ch1"), ("w3 w4", "ch2")]
    assert all(w.speaker == f.speaker for f in finals for w in f.words)
    second_starts = len(left) // 2 * 1000 // 16000
    assert finals[1].words[0].start_ms >= second_starts > finals[0].end_ms


async def test_rotation_before_the_limit_loses_no_words(fake_google: FakeGoogle) -> None:
    """Scaled down: rotate every 1 s of audio; the fake cuts a stream off past 1.5 s."""
    fake_google.limit_s = 1.5
    metrics = Metrics()
    engine = google_engine(fake_google, metrics, rotate_s=1.0)
    stream = await engine.open(MONO)
    collector = Collector(stream).start()
    values = list(range(1, 41))
    # Utterances of 1 to 6 words, some ended by a pause and some running into the next.
    sizes = itertools.cycle([3, 1, 6, 2, 5, 4])
    index, pieces = 0, []
    while index < len(values):
        size = next(sizes)
        pieces.append(tone_words(values[index : index + size], pause_ms=400 if size % 2 else 0))
        index += size
    await feed(stream, chunks(b"".join(pieces)))
    await stream.close()
    events = await collector.finish()

    assert collector.error is None
    assert final_words(events) == [f"w{v}" for v in values]
    assert len(fake_google.calls) >= 4
    assert all(call.outcome == "half-closed" for call in fake_google.calls)  # never the limit
    rotations = metric_value(metrics, "engine_rotations_total", engine="google")
    assert rotations == len(fake_google.calls) - 1
    finals = [e for e in events if e.is_final]
    for earlier, later in itertools.pairwise(finals):
        assert earlier.end_ms <= later.start_ms
    words = [w for f in finals for w in f.words]
    for earlier, later in itertools.pairwise(words):
        assert earlier.end_ms <= later.start_ms  # stream time keeps increasing across calls


async def test_a_cut_off_stream_is_resumed_with_its_unfinalized_audio(
    fake_google: FakeGoogle,
) -> None:
    """OUT_OF_RANGE (here: the fake's limit below our rotation point) means "next stream"."""
    fake_google.limit_s = 1.0
    stream = await google_engine(fake_google, rotate_s=10.0).open(MONO)
    collector = Collector(stream).start()
    audio = b"".join(tone_words([v, v + 1], pause_ms=400) for v in range(1, 13, 2))
    await feed(stream, chunks(audio))
    await stream.close()
    events = await collector.finish()
    assert collector.error is None
    assert final_words(events) == [f"w{v}" for v in range(1, 13)]
    assert any(call.outcome == "limit" for call in fake_google.calls)


async def test_a_repeated_final_is_not_a_second_final(fake_google: FakeGoogle) -> None:
    """A final result sent twice (the same words, ending where the last final ended) brings
    nothing new: one final per utterance."""
    fake_google.repeat_finals = True
    stream = await google_engine(fake_google).open(MONO)
    collector = Collector(stream).start()
    await feed(stream, chunks(tone_words([1, 2], pause_ms=600) + tone_words([3, 4], pause_ms=600)))
    await stream.close()
    events = await collector.finish()
    assert collector.error is None
    assert [e.text for e in events if e.is_final] == ["w1 w2", "w3 w4"]


async def test_a_call_google_never_ends_is_an_error_not_a_hang(fake_google: FakeGoogle) -> None:
    """Half-closed (the client's finalize, or close), the call must end within `end_timeout_s`:
    past it the stream fails (the chain replays its audio elsewhere) instead of waiting."""
    fake_google.hang_at_end = True
    stream = await google_engine(fake_google, end_timeout_s=1.0).open(MONO)
    collector = Collector(stream).start()
    await feed(stream, chunks(tone_words([1, 2], pause_ms=0)))
    await stream.finalize()
    events = await collector.finish()
    assert isinstance(collector.error, EngineError) and collector.error.reason == "timeout"
    assert [e.text for e in events if e.is_final] == []
    await stream.abort()


async def test_a_call_still_answering_its_backlog_is_given_the_time(
    fake_google: FakeGoogle,
) -> None:
    """The end deadline counts from the last answer: a backlog answered slowly after the
    half-close (each answer within `end_timeout_s`, all of them well past it) is no failure."""
    fake_google.paced_answers_s = 0.5
    stream = await google_engine(fake_google, end_timeout_s=2.0).open(MONO)
    collector = Collector(stream).start()
    await feed(stream, chunks(tone_words([1, 2], pause_ms=600) + tone_words([3, 4], pause_ms=0)))
    await stream.close()
    events = await collector.finish()
    assert collector.error is None
    assert [e.text for e in events if e.is_final] == ["w1 w2", "w3 w4"]
    assert len(events) >= 6  # answered for longer than end_timeout_s in all


async def test_bad_credentials_are_final(fake_google: FakeGoogle) -> None:
    fake_google.reject_code = grpc.StatusCode.UNAUTHENTICATED
    stream = await google_engine(fake_google).open(MONO)
    collector = Collector(stream).start()
    await feed(stream, chunks(tone_words([1])))
    await collector.finish()
    assert isinstance(collector.error, EngineError)
    assert not collector.error.retryable and collector.error.reason == "auth"


async def test_an_unreachable_endpoint_fails_the_open(fake_google: FakeGoogle) -> None:
    await fake_google.stop()
    engine = google_engine(fake_google, connect_timeout_s=0.5)
    with pytest.raises(EngineError) as caught:
        await engine.open(MONO)
    assert caught.value.retryable and caught.value.reason == "connect"
    await engine.aclose()


async def test_a_paused_client_holds_no_stream_and_loses_nothing(fake_google: FakeGoogle) -> None:
    """Google ends a stream after a while without audio ("Audio Timeout"): the next stream
    starts when audio comes back, with the words the ended one had not finalized."""
    fake_google.audio_timeout_s = 0.5
    stream = await google_engine(fake_google).open(MONO)
    collector = Collector(stream).start()
    await feed(stream, chunks(tone_words([1, 2], pause_ms=400) + tone_words([3], gap_ms=0)))
    # The client pauses (sends nothing) for several of the fake's audio timeouts.
    await collector.wait_for(lambda c: len(c.finals) == 1)
    await eventually(lambda: fake_google.calls[-1].outcome == "audio-timeout", within=10)
    assert len(fake_google.calls) == 1  # no stream is held open while nothing is said
    await feed(stream, chunks(tone_words([4], pause_ms=400)))
    await feed(stream, chunks(tone_words([5], gap_ms=0)))
    await eventually(lambda: fake_google.calls[-1].outcome == "audio-timeout", within=10)
    await stream.close()  # w5 was never finalized: the close finalizes it
    events = await collector.finish()
    assert collector.error is None
    assert final_words(events) == ["w1", "w2", "w3", "w4", "w5"]


def test_cuts_fall_in_pauses() -> None:
    from ingest.engines.google import is_quiet, quiet_cut, quiet_point

    word, pause = tone_words([1], word_ms=100, gap_ms=0), bytes(1600)  # 100 ms, 50 ms
    audio = word + pause + word  # a pause from 3200 to 4800 bytes
    assert is_quiet(pause) and not is_quiet(word)
    point = quiet_point(audio, 2, 640)
    assert point is not None and 3200 < point < 4800 and point % 2 == 0
    assert quiet_point(word + word, 2, 640) is None
    cut = quiet_cut(audio, 5000, 2, 640)  # the pause lies in the quarter before the limit
    assert 3750 <= cut < 4800 and is_quiet(audio[cut - 320 : cut + 320])
    assert quiet_cut(audio, len(audio), 2, 640) == len(audio)  # the pause is too far back
    assert quiet_cut(word * 4, 6000, 2, 640) == 6000  # no pause near the limit: the limit
