"""The ingest stream's per-message rules (`ingest/session.py`), with plain values."""

from __future__ import annotations

import json

import pytest

from fanout.token_bucket import TokenBucket
from ingest.session import Control, Feed, IngestRules, Violation

FRAME = b"\x00\x01" * 320  # 20 ms of 16 kHz mono


def rules(*, frames_per_s: float = 50, channels: int = 1, max_bytes: int = 64_000) -> IngestRules:
    bucket = TokenBucket(rate=frames_per_s, burst=2 * frames_per_s, now=0.0)
    return IngestRules(
        sample_rate=16_000, channels=channels, max_bytes=max_bytes, bucket=bucket, started_at=0.0
    )


def test_a_frame_is_fed_and_tallied() -> None:
    r = rules()
    assert r.receive(data=FRAME, text=None, now=0.0) == Feed(FRAME)
    assert (r.frames, r.bytes_in, r.audio_ms) == (1, len(FRAME), 20)


@pytest.mark.parametrize(
    ("data", "kind", "words"),
    [
        (b"", "protocol", "empty PCM frame"),
        (b"\x00" * 3, "protocol", "16-bit samples"),
        (b"\x00" * 64_002, "too_big", "exceeds the limit of 64000 bytes"),
    ],
)
def test_bad_frames_are_violations_and_not_tallied(data: bytes, kind: str, words: str) -> None:
    r = rules()
    verdict = r.receive(data=data, text=None, now=0.0)
    assert isinstance(verdict, Violation)
    assert verdict.kind == kind and words in verdict.reason
    assert (r.frames, r.bytes_in) == (0, 0)


def test_a_stereo_frame_must_hold_whole_sample_frames() -> None:
    verdict = rules(channels=2).receive(data=b"\x00" * 6, text=None, now=0.0)
    assert isinstance(verdict, Violation) and "2-channel" in verdict.reason


def test_control_messages_keep_their_text() -> None:
    r = rules()
    text = '{"type": "refresh", "token": "t"}'
    assert r.receive(data=None, text=text, now=0.0) == Control("refresh", text)
    assert r.receive(data=None, text='{"type": "finalize"}', now=0.0).type == "finalize"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('{"type": "dance"}', "protocol"),
        ("not json", "protocol"),
        ("x" * 64_001, "too_big"),
        ("é" * 32_001, "too_big"),
    ],
)
def test_bad_text_is_a_violation(text: str, kind: str) -> None:
    verdict = rules().receive(data=None, text=text, now=0.0)
    assert isinstance(verdict, Violation) and verdict.kind == kind


def test_the_rate_limit_allows_a_burst_then_refuses_and_says_what_was_kept() -> None:
    r = rules(frames_per_s=10)  # burst 20
    verdicts = [r.receive(data=FRAME, text=None, now=0.0) for _ in range(21)]
    assert all(isinstance(v, Feed) for v in verdicts[:20])
    last = verdicts[20]
    assert isinstance(last, Violation) and last.kind == "rate_limited"
    assert "10 messages/s" in last.reason and "before this one were accepted" in last.reason
    assert "send 100 ms of audio or more per frame" in last.reason  # what keeps under it
    assert r.frames == 20


def test_close_is_never_refused_for_the_rate() -> None:
    # Ending the stream is what a client over its rate should do; it then gets `closed`.
    r = rules(frames_per_s=1)  # burst 2
    for _ in range(2):
        assert isinstance(r.receive(data=FRAME, text=None, now=0.0), Feed)
    assert isinstance(r.receive(data=None, text='{"type": "ping"}', now=0.0), Violation)
    verdict = r.receive(data=None, text='{"type": "close"}', now=0.0)
    assert isinstance(verdict, Control) and verdict.type == "close"


def test_text_messages_count_against_the_rate_too() -> None:
    r = rules(frames_per_s=1)  # burst 2
    for _ in range(2):
        assert isinstance(r.receive(data=None, text='{"type": "finalize"}', now=0.0), Control)
    assert isinstance(r.receive(data=None, text='{"type": "finalize"}', now=0.0), Violation)


def test_a_paced_client_is_never_refused() -> None:
    r = rules(frames_per_s=50)
    assert all(
        isinstance(r.receive(data=FRAME, text=None, now=i * 0.02), Feed) for i in range(5_000)
    )


def test_after_engine_backpressure_the_queued_burst_is_not_charged() -> None:
    r = rules(frames_per_s=10)
    for _ in range(20):  # the bucket is empty now
        r.receive(data=FRAME, text=None, now=0.0)
    r.engine_waited(started=0.0, ended=2.0)  # the engine held a send for 2 s
    # Frames that queued in the socket meanwhile arrive at once: exempt for as long again.
    assert all(isinstance(r.receive(data=FRAME, text=None, now=2.0), Feed) for _ in range(100))
    assert isinstance(r.receive(data=FRAME, text=None, now=3.9), Feed)
    # After the exemption the bucket applies again (refilled by then, burst 20).
    results = [r.receive(data=FRAME, text=None, now=4.0) for _ in range(21)]
    assert isinstance(results[-1], Violation)


def test_text_messages_are_charged_during_the_exemption() -> None:
    r = rules(frames_per_s=10)
    for _ in range(20):  # the bucket is empty now
        r.receive(data=FRAME, text=None, now=0.0)
    r.engine_waited(started=0.0, ended=30.0)
    finalize = json.dumps({"type": "finalize"})
    results = [r.receive(data=None, text=finalize, now=30.0) for _ in range(21)]  # burst 20
    assert all(isinstance(result, Control) for result in results[:20])
    assert isinstance(results[-1], Violation) and results[-1].kind == "rate_limited"
    assert isinstance(r.receive(data=FRAME, text=None, now=30.0), Feed)  # audio still exempt


def test_a_short_engine_wait_earns_no_exemption() -> None:
    r = rules(frames_per_s=1)  # burst 2
    for _ in range(2):
        r.receive(data=FRAME, text=None, now=0.0)
    r.engine_waited(started=0.0, ended=0.45)
    assert isinstance(r.receive(data=FRAME, text=None, now=0.45), Violation)


def test_frames_a_stall_held_up_catch_up_without_a_refusal() -> None:
    """A real-time client (20 ms frames, 50/s, the limit) whose frames a 3 s network stall held:
    150 arrive at once, more than the burst (100), and are accepted; so is real time after."""
    r = rules(frames_per_s=50)
    for i in range(250):  # 5 s in real time
        assert isinstance(r.receive(data=FRAME, text=None, now=i * 0.02), Feed)
    now = 5.0 + 3.0  # nothing arrived for 3 s: the 150 frames of it come together
    assert all(isinstance(r.receive(data=FRAME, text=None, now=now), Feed) for _ in range(150))
    for i in range(1, 500):
        assert isinstance(r.receive(data=FRAME, text=None, now=now + i * 0.02), Feed)


def test_audio_ahead_of_real_time_is_still_refused() -> None:
    r = rules(frames_per_s=50)
    # At once: the burst (100 frames, 2 s of audio), then nothing ahead of the 2 s slack.
    verdicts = [r.receive(data=FRAME, text=None, now=0.0) for _ in range(101)]
    assert all(isinstance(v, Feed) for v in verdicts[:100])
    assert isinstance(verdicts[100], Violation) and verdicts[100].kind == "rate_limited"


@pytest.mark.parametrize(("fast_by", "accepted"), [(0.0005, True), (0.05, False)])
def test_a_client_clock_running_fast_is_refused_only_past_the_drift_allowed(
    fast_by: float, accepted: bool
) -> None:
    """20 ms frames at the 50/s limit from a sound card whose clock runs fast: its frames come
    a little over the rate for hours. 500 ppm fast (more than a real card's drift) is accepted
    for 3 hours; it was refused 4429 once 2 s ahead (about an hour in at that rate). 5% fast is
    no clock: refused."""
    r = rules(frames_per_s=50)
    interval = 0.02 / (1 + fast_by)
    frames = int(3 * 3600 / interval)
    refused = next(
        (
            i
            for i in range(frames)
            if isinstance(r.receive(data=FRAME, text=None, now=i * interval), Violation)
        ),
        None,
    )
    assert (refused is None) is accepted, refused


def test_a_resumed_streams_re_sent_audio_is_late_and_its_stalls_still_catch_up() -> None:
    """Its audio began 40 s before it connected (the client away that long): those 40 s sent at
    once are late audio, and a stall later is caught up as any stream's (a first version counted
    the 40 s against the stall's 30 s allowance, and refused it)."""
    r = rules(frames_per_s=50)
    r.resumed(40.0)
    assert all(isinstance(r.receive(data=FRAME, text=None, now=0.0), Feed) for _ in range(2000))
    for i in range(500):  # then live: 10 s
        assert isinstance(r.receive(data=FRAME, text=None, now=i * 0.02), Feed)
    now = 10.0 + 5.0  # a 5 s stall, its frames at once
    assert all(isinstance(r.receive(data=FRAME, text=None, now=now), Feed) for _ in range(250))
    assert r.behind_ms <= 20  # nothing missing (a frame's time at most): no "send silence" line


def test_a_resumed_backlog_is_bounded() -> None:
    r = rules(frames_per_s=50)
    r.resumed(3600.0)  # `from_ms` 0 of a stream an hour old: not an hour of frames at once
    verdicts = [r.receive(data=FRAME, text=None, now=0.0) for _ in range(7000)]
    first_refused = next(i for i, v in enumerate(verdicts) if isinstance(v, Violation))
    assert first_refused == (120 + 2) * 50  # RESUMED_BACKLOG_MAX_S and the slack


def test_frames_smaller_than_the_rate_allows_do_not_catch_up() -> None:
    """10 ms frames at a 50/s limit would average 100/s: held up or not, past the bucket they
    are refused (the limit bounds messages, not audio)."""
    r = rules(frames_per_s=50)
    small = FRAME[: len(FRAME) // 2]
    verdicts = [r.receive(data=small, text=None, now=10.0) for _ in range(101)]
    assert all(isinstance(v, Feed) for v in verdicts[:100])
    assert isinstance(verdicts[100], Violation)


def test_time_saved_up_by_sending_little_is_not_a_flood_allowance() -> None:
    """A stream that kept itself alive with a tiny frame a second for an hour is far behind real
    time: that is no stall's backlog, and past the bucket its frames are refused."""
    r = rules(frames_per_s=50)
    tiny = b"\x00\x00"
    for second in range(3600):
        assert isinstance(r.receive(data=tiny, text=None, now=float(second)), Feed)
    now = 3600.0
    verdicts = [r.receive(data=FRAME, text=None, now=now) for _ in range(101)]
    assert all(isinstance(v, Feed) for v in verdicts[:100])  # the bucket's burst
    assert isinstance(verdicts[100], Violation)


@pytest.mark.parametrize(("samples", "accepted"), [(534, True), (533, False)])
def test_a_frame_of_one_rate_interval_catches_up_whatever_the_rate(
    samples: int, accepted: bool
) -> None:
    """At 30/s a frame must hold 1/30 s of audio (533.3 samples at 16 kHz): 534 do, 533 not."""
    r = rules(frames_per_s=30)
    frame = b"\x00\x00" * samples
    for _ in range(60):  # the bucket's burst
        assert isinstance(r.receive(data=frame, text=None, now=10.0), Feed)
    verdict = r.receive(data=frame, text=None, now=10.0)  # 2 s of audio in 10 s: late
    assert isinstance(verdict, Feed) is accepted


def test_audio_behind_its_time_is_measured_at_the_last_frame() -> None:
    """A client that stops sending while muted (not sending silence) leaves its later audio
    early on the meeting's clock: the stream says by how much. A stall's backlog caught up
    leaves nothing behind."""
    paused = rules()
    for i in range(50):  # 1 s in real time
        paused.receive(data=FRAME, text=None, now=i * 0.02)
    for i in range(50):  # nothing for 30 s, then 1 s more
        paused.receive(data=FRAME, text=None, now=31.0 + i * 0.02)
    assert 29_900 <= paused.behind_ms <= 30_100
    stalled = rules()
    for i in range(250):
        stalled.receive(data=FRAME, text=None, now=i * 0.02)
    for _ in range(150):  # 3 s held up by the network, arriving at once
        stalled.receive(data=FRAME, text=None, now=8.0)
    assert stalled.behind_ms <= 20  # a frame's time at most
    assert rules().behind_ms == 0


def test_a_resumed_stream_behind_all_along_catches_up_its_stalls_but_not_a_pause() -> None:
    """Re-sending in real time what it missed (the shipped client paces its audio), a resumed
    stream stays as far behind as it began: a stall later is caught up. One that re-sent its
    backlog at once, then paused sending for 140 s, is not let flood 140 s of frames (a first
    version let it: the backlog's allowance stayed for the rest of the stream)."""
    paced = rules(frames_per_s=50)
    paced.resumed(65.0)  # a crash: the client resumed 65 s after what it re-sends
    for i in range(1000):  # 20 s in real time, still 65 s behind
        assert isinstance(paced.receive(data=FRAME, text=None, now=i * 0.02), Feed)
    now = 20.0 + 5.0  # a 5 s stall, its frames at once
    assert all(isinstance(paced.receive(data=FRAME, text=None, now=now), Feed) for _ in range(250))
    assert paced.behind_ms <= 20  # behind all along is not a pause: placed right

    flood = rules(frames_per_s=50)
    flood.resumed(120.0)
    assert all(isinstance(flood.receive(data=FRAME, text=None, now=0.0), Feed) for _ in range(6000))
    for i in range(1, 3001):  # live for 60 s
        assert isinstance(flood.receive(data=FRAME, text=None, now=i * 0.02), Feed)
    now = 60.0 + 140.0  # nothing for 140 s, then 140 s of frames at once
    verdicts = [flood.receive(data=FRAME, text=None, now=now) for _ in range(7000)]
    first_refused = next(i for i, v in enumerate(verdicts) if isinstance(v, Violation))
    assert first_refused < 2000, first_refused  # the burst and 30 s, not 140 s


def test_a_refusal_says_which_rule_the_frame_broke() -> None:
    """A resumed client's 100 ms frames past its allowance were told to send 20 ms of audio or
    more per frame, which they did."""
    small = rules(frames_per_s=50)
    verdicts = [small.receive(data=FRAME[:320], text=None, now=0.0) for _ in range(101)]
    assert isinstance(verdicts[-1], Violation) and "20 ms of audio or more" in verdicts[-1].reason
    ahead = rules(frames_per_s=50)
    verdicts = [ahead.receive(data=FRAME, text=None, now=0.0) for _ in range(101)]
    assert isinstance(verdicts[-1], Violation) and "audio ahead of its time" in verdicts[-1].reason
    saved = rules(frames_per_s=50)
    saved.receive(data=FRAME, text=None, now=0.0)
    verdicts = [saved.receive(data=FRAME, text=None, now=60.0) for _ in range(101)]
    assert isinstance(verdicts[-1], Violation) and "audio saved up" in verdicts[-1].reason
