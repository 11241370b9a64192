"""The replay buffer, with plain bytes: 1 kHz mono, so one frame is 2 bytes and 1 ms."""

from __future__ import annotations

from ingest.engines.replay import ReplayBuffer


def pcm(first_ms: int, count_ms: int) -> bytes:
    """Each 1 ms frame holds its own position, so tests can see exactly which audio is kept."""
    return b"".join((first_ms + i).to_bytes(2, "little") for i in range(count_ms))


def test_pending_is_everything_not_yet_covered_by_a_final() -> None:
    buffer = ReplayBuffer(sample_rate=1000, channels=1)
    buffer.append(pcm(0, 300))
    buffer.append(pcm(300, 200))
    buffer.release_until(250)
    assert buffer.pending() == (250, pcm(250, 250))
    buffer.release_until(100)  # an earlier final releases nothing more
    assert buffer.pending() == (250, pcm(250, 250))
    buffer.release_until(900)  # past the end: everything, but the position stays true
    assert buffer.pending() == (500, b"")
    buffer.append(pcm(500, 10))
    assert buffer.pending() == (500, pcm(500, 10))


def test_the_bound_drops_the_oldest_audio_and_counts_it() -> None:
    buffer = ReplayBuffer(sample_rate=1000, channels=1, max_ms=100)
    for start in range(0, 250, 50):
        buffer.append(pcm(start, 50))
    assert buffer.pending() == (150, pcm(150, 100))
    assert buffer.dropped_bytes == 300


def test_stereo_frames_are_never_split() -> None:
    buffer = ReplayBuffer(sample_rate=1000, channels=2)
    buffer.append(bytes(range(40)))  # 10 frames of 4 bytes
    buffer.release_until(3)
    start, audio = buffer.pending()
    assert start == 3 and audio == bytes(range(12, 40))
    assert len(audio) % 4 == 0
