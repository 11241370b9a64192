"""A meeting's streams as `GET /api/v1/meetings/{id}` shows them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.http.meetings import stream_body
from store.base import StreamInfo

START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _stream(updated_after_s: float, ended: bool = False) -> StreamInfo:
    updated = START + timedelta(seconds=updated_after_s)
    return StreamInfo(
        stream_id="s1",
        source="mic",
        engine="local",
        sample_rate=16000,
        channels=1,
        started_at=START,
        audio_ms=60_000,
        frames=3000,
        ended_at=updated if ended else None,
        updated_at=updated,
    )


def test_a_stream_whose_replica_died_shows_its_last_refresh_as_its_end() -> None:
    """Its row is never closed (nobody is left to close it); shown as running, it read as a
    stream still going long after the meeting."""
    now = START + timedelta(minutes=10)
    assert stream_body(_stream(60), now)["ended_at"] == "2026-12-06T12:01:00+00:00"
    running = stream_body(_stream(598), now)  # refreshed 2 s ago: it runs
    assert running["ended_at"] is None
    closed = stream_body(_stream(30, ended=True), now)
    assert closed["ended_at"] == "2026-12-06T12:00:30+00:00"
