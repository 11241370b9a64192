"""AudioCoverage: which part of a reconnecting client's audio finals cover, across streams."""

from __future__ import annotations

from gateway.client.reconnect import (
    INGEST_RECONNECT_CODES,
    AudioCoverage,
    ReconnectSummary,
    StreamRun,
)
from gateway.client.resume import Backoff

RATE, CH = 16000, 1
BYTES_PER_MS = RATE * 2 * CH // 1000


def status(event: str, stream_id: str, source: str = "mic") -> dict:
    return {"type": "status", "event": event, "stream_id": stream_id, "source": source}


def final(end_ms: int, source: str = "mic") -> dict:
    return {"type": "transcript.final", "end_ms": end_ms, "source": source, "segment_no": 1}


def test_a_final_covers_audio_up_to_its_end_in_its_streams_time() -> None:
    coverage = AudioCoverage("mic", RATE, CH)
    coverage.began("s1", 0)
    coverage.observe(status("stream.started", "s1"))
    coverage.observe(final(1500))
    assert coverage.covered == 1500 * BYTES_PER_MS
    assert coverage.covered_ms == 1500


def test_a_new_stream_restarts_audio_time_so_its_offset_is_added() -> None:
    coverage = AudioCoverage("mic", RATE, CH)
    coverage.began("s1", 0)
    coverage.observe(status("stream.started", "s1"))
    coverage.observe(final(2000))
    coverage.observe(status("stream.ended", "s1"))
    coverage.began("s2", coverage.covered)
    coverage.observe(status("stream.started", "s2"))
    assert coverage.covered_ms == 2000  # nothing new yet: still where s1 left off
    coverage.observe(final(700))
    assert coverage.covered_ms == 2700
    assert coverage.ended == {"s1"}


def test_the_announcement_may_arrive_before_ready() -> None:
    coverage = AudioCoverage("mic", RATE, CH)
    coverage.observe(status("stream.started", "s1"))
    coverage.observe(final(800))
    assert coverage.covered == 0  # where s1 began is not known yet
    coverage.began("s1", 1000 * BYTES_PER_MS)
    assert coverage.covered_ms == 1800


def test_other_sources_and_unannounced_finals_cover_nothing() -> None:
    coverage = AudioCoverage("mic", RATE, CH)
    coverage.began("s1", 0)
    coverage.observe(final(900))  # an earlier session's final, before our stream was announced
    coverage.observe(status("stream.started", "x", source="system"))
    coverage.observe(final(5000, source="system"))
    assert coverage.covered == 0


def test_stereo_coverage_is_whole_sample_frames() -> None:
    coverage = AudioCoverage("mic", 44100, 2)
    coverage.began("s1", 0)
    coverage.observe(status("stream.started", "s1"))
    coverage.observe(final(10))
    assert coverage.covered == 441 * 4


def test_backoff_grows_with_jitter_and_can_give_up() -> None:
    backoff = Backoff(base_s=1.0, cap_s=8.0, max_attempts=3)
    for attempt, step in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 8.0)]:
        delays = {backoff.delay(attempt) for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays)
        assert len(delays) > 1  # jittered
    assert not backoff.exhausted(2) and backoff.exhausted(3)
    assert not Backoff().exhausted(10_000)


def test_a_stream_covers_no_more_than_it_was_sent() -> None:
    coverage = AudioCoverage("mic", RATE, CH)
    coverage.began("s1", 0)
    coverage.observe(status("stream.started", "s1"))
    coverage.observe(final(3000))
    coverage.sent["s1"] = 1000 * BYTES_PER_MS
    assert coverage.covered_ms == 1000


def test_a_summary_counts_streams_taken_not_attempts() -> None:
    runs = [
        StreamRun("s1", 0, 3200, 1012, "server restarting"),
        StreamRun(None, 3200, 0, 1006, "connection refused"),  # the gateway was still down
        StreamRun("s2", 3200, 6400, 1000, "stream closed"),
    ]
    summary = ReconnectSummary(runs, [], AudioCoverage("mic", RATE, CH), 1.0)
    assert (summary.streams, summary.reconnects, summary.close_code) == (2, 1, 1000)


def test_a_final_naming_its_stream_is_credited_to_it_without_its_announcement() -> None:
    """Across a restart the viewer resubscribed with since=: it got the new stream's finals
    from the store but not its `stream.started`. Credited to the old stream (capped at what it
    was sent), they covered nothing new, and their audio was sent and stored again."""
    coverage = AudioCoverage("mic", RATE, CH)
    coverage.began("s1", 0)
    coverage.observe(status("stream.started", "s1"))
    coverage.observe({**final(2000), "stream_id": "s1"})
    coverage.sent["s1"] = 2000 * BYTES_PER_MS
    coverage.observe(status("stream.ended", "s1"))
    coverage.began("s2", coverage.covered)  # its stream.started never reaches this viewer
    coverage.observe({**final(1500), "stream_id": "s2"})
    assert coverage.covered_ms == 3500


def test_an_idle_close_with_audio_left_is_reconnected() -> None:
    """4408 after INGEST_IDLE_S without audio (capture paused, socket up): docs/protocol.md
    says ingest clients reconnect when they have audio to send."""
    assert 4408 in INGEST_RECONNECT_CODES


def test_a_resume_points_into_the_last_stream_begun_before_the_audio_it_sends() -> None:
    coverage = AudioCoverage("mic", RATE, CH)
    assert coverage.resume_point(0) is None  # the first stream resumes nothing
    coverage.began("s1", 0)
    assert coverage.resume_point(2000 * BYTES_PER_MS) == {"stream_id": "s1", "from_ms": 2000}
    coverage.began("s2", 2000 * BYTES_PER_MS)  # it got no final: a third resumes from s2
    coverage.began("s3", 2000 * BYTES_PER_MS)
    assert coverage.resume_point(2000 * BYTES_PER_MS) == {"stream_id": "s3", "from_ms": 0}
    assert coverage.resume_point(2700 * BYTES_PER_MS) == {"stream_id": "s3", "from_ms": 700}
    # Audio from before the latest stream's start (a final of s1 arrived late): into s1.
    assert coverage.resume_point(1500 * BYTES_PER_MS) == {"stream_id": "s1", "from_ms": 1500}
