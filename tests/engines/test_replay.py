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


def test_pending_audio_is_cut_where_finalizes_were_asked() -> None:
    buffer = ReplayBuffer(sample_rate=1000, channels=1, max_ms=400)
    buffer.append(pcm(0, 100))
    early = buffer.position  # at 100 ms: dropped by the bound below
    buffer.append(pcm(100, 200))
    first = buffer.position  # at 300 ms
    buffer.append(pcm(300, 150))
    second = buffer.position  # at 450 ms
    buffer.append(pcm(450, 50))
    assert buffer.pending_cut([]) == (100, [pcm(100, 400)])
    assert buffer.pending_cut([first, second]) == (
        100,
        [pcm(100, 200), pcm(300, 150), pcm(450, 50)],
    )
    # A mark before what the buffer holds cuts nothing; one at the end leaves nothing after.
    assert buffer.pending_cut([early, buffer.position]) == (100, [pcm(100, 400), b""])
    assert buffer.position_at(300) == first
