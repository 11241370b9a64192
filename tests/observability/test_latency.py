"""Engine latency with plain values: which arrival time each event is measured from."""

from __future__ import annotations

from gateway.observability.latency import AudioClock, EngineLatency
from ingest.engines.base import EngineEvent


def clock_of_frames(frames: int, frame_ms: int = 100, start: float = 10.0) -> AudioClock:
    """A frame of `frame_ms` arriving every `frame_ms` from `start`."""
    clock = AudioClock()
    for n in range(1, frames + 1):
        clock.received(n * frame_ms, start + n * frame_ms / 1000)
    return clock


def test_received_at_is_the_arrival_of_the_frame_holding_the_position() -> None:
    clock = clock_of_frames(10)  # 100 ms frames arriving at 10.1, 10.2, ... 11.0
    assert clock.received_at(0) == 10.1
    assert clock.received_at(100) == 10.1
    assert clock.received_at(101) == 10.2
    assert clock.received_at(1000) == 11.0
    assert clock.received_at(1001) is None  # not received yet
    assert AudioClock().received_at(0) is None


def test_old_positions_fall_out_of_a_bounded_window() -> None:
    clock = AudioClock(max_points=5)
    for n in range(1, 51):
        clock.received(n * 100, float(n))
    assert clock.received_at(5000) == 50.0
    assert clock.received_at(4600) == 46.0  # the oldest kept frame's end
    assert clock.received_at(4599) is None  # might be in a frame no longer kept
    assert clock.received_at(100) is None


def test_first_partial_per_utterance_and_every_final_are_measured() -> None:
    firsts: list[float] = []
    finals: list[float] = []
    latency = EngineLatency(clock_of_frames(30), firsts.append, finals.append)

    def event(final: bool, start: int, end: int) -> EngineEvent:
        return EngineEvent(is_final=final, text="x", start_ms=start, end_ms=end)

    latency.observe(event(False, 200, 500), now=10.9)  # onset arrived at 10.2
    latency.observe(event(False, 200, 800), now=11.2)  # not the first: ignored
    latency.observe(event(True, 200, 1200), now=12.0)  # its end arrived at 11.2
    latency.observe(event(False, 1500, 1700), now=12.1)  # the next utterance
    assert [round(s, 3) for s in firsts] == [0.7, 0.6]
    assert [round(s, 3) for s in finals] == [0.8]
