from __future__ import annotations

import asyncio
import itertools
import math
import time

import pytest

from gateway.client.pacing import MAX_FRAME_BYTES, FramePlan, iter_frames, plan_frames, send_paced

SPEEDS = [0.25, 1.0, 1.5, 2.0, 5.0, 10.0, 37.0, 100.0, 1000.0, math.inf]
FORMATS = list(itertools.product([8000, 11025, 16000, 22050, 44100, 48000], [1, 2]))


@pytest.mark.parametrize("speed", SPEEDS)
@pytest.mark.parametrize(("rate", "channels"), FORMATS)
@pytest.mark.parametrize("max_fps", [10.0, 40.0, 50.0])
def test_plan_never_exceeds_the_frame_budget_or_the_frame_cap(
    speed: float, rate: int, channels: int, max_fps: float
) -> None:
    plan = plan_frames(rate, channels, speed=speed, max_fps=max_fps)
    assert plan.fps <= max_fps * (1 + 1e-9)
    assert 0 < plan.frame_bytes <= MAX_FRAME_BYTES
    assert plan.frame_bytes % (2 * channels) == 0  # whole samples on every channel
    assert plan.speed <= speed * (1 + 1e-9)


@pytest.mark.parametrize(("rate", "channels"), FORMATS)
@pytest.mark.parametrize("speed", [0.5, 1.0, 4.0, 20.0])
def test_requested_speed_is_met_while_the_cap_allows(
    rate: int, channels: int, speed: float
) -> None:
    plan = plan_frames(rate, channels, speed=speed, max_fps=40)
    if plan.frame_bytes < MAX_FRAME_BYTES - 2 * channels:
        assert plan.speed == pytest.approx(speed, rel=1e-9)


def test_real_time_with_a_generous_budget_sends_20_ms_frames() -> None:
    plan = plan_frames(16000, 1, speed=1.0, max_fps=100)
    assert plan.frame_samples == 320
    assert plan.interval_s == pytest.approx(0.020)


def test_default_budget_makes_real_time_frames_25_ms() -> None:
    # 20 ms frames would be 50 frames/s: the server's whole default allowance.
    plan = plan_frames(16000, 1)
    assert plan.fps == pytest.approx(40)
    assert plan.frame_samples == 400
    assert plan.speed == pytest.approx(1.0)


def test_higher_speed_grows_frames_instead_of_frame_rate() -> None:
    slow = plan_frames(48000, 2, speed=2)
    fast = plan_frames(48000, 2, speed=6)
    assert slow.fps == pytest.approx(fast.fps) == pytest.approx(40)
    assert fast.frame_bytes == 3 * slow.frame_bytes


def test_speed_is_cut_when_the_32_kib_cap_binds() -> None:
    plan = plan_frames(48000, 2, speed=100)
    assert plan.frame_bytes == MAX_FRAME_BYTES
    assert plan.fps == pytest.approx(40)
    assert plan.speed == pytest.approx(8192 * 40 / 48000)


def test_odd_frame_caps_round_down_to_whole_sample_frames() -> None:
    plan = plan_frames(48000, 2, speed=math.inf, max_frame_bytes=1001)
    assert plan.frame_bytes == 1000


@pytest.mark.parametrize(
    "kwargs",
    [{"speed": 0}, {"speed": -1}, {"max_fps": 0}, {"frame_ms": 0}, {"max_frame_bytes": 3}],
)
def test_invalid_plans_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        plan_frames(16000, 2, **kwargs)  # type: ignore[arg-type]


def test_iter_frames_covers_the_pcm_exactly() -> None:
    pcm = bytes(range(256)) * 10
    frames = list(iter_frames(pcm, 100))
    assert b"".join(frames) == pcm
    assert all(len(f) == 100 for f in frames[:-1])
    assert len(frames[-1]) == 60


class RecordingWS:
    def __init__(self, stall_on: int | None = None, stall_s: float = 0.0) -> None:
        self.sent: list[tuple[float, int]] = []
        self._stall_on, self._stall_s = stall_on, stall_s

    async def send(self, frame: bytes) -> None:
        if len(self.sent) == self._stall_on:
            await asyncio.sleep(self._stall_s)
        self.sent.append((time.monotonic(), len(frame)))


def _max_in_any_second(times: list[float]) -> int:
    return max(sum(1 for u in times if t <= u < t + 1.0) for t in times)


async def test_send_paced_spaces_frames_by_the_plan_interval() -> None:
    plan = plan_frames(48000, 2, speed=math.inf, max_fps=40)
    pcm = bytes(48000 * 4 * 4)  # 4 s of stereo: 47 frames of 32 KiB, over a second's worth
    ws = RecordingWS()
    frames, sent = await send_paced(ws, pcm, plan)
    assert (frames, sent) == (len(ws.sent), len(pcm))
    times = [t for t, _ in ws.sent]
    for k, t in enumerate(times):
        assert t - times[0] >= k * plan.interval_s - 0.002
    assert _max_in_any_second(times) <= 40


async def test_send_paced_does_not_burst_to_catch_up_after_a_stall() -> None:
    plan = plan_frames(16000, 1, speed=1.0, max_fps=40)  # 25 ms frames
    ws = RecordingWS(stall_on=3, stall_s=0.3)
    await send_paced(ws, bytes(plan.frame_bytes * 20), plan)
    times = [t for t, _ in ws.sent]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Catching up would send ~12 frames back to back; one may follow a stall at once (on a
    # loaded machine every late wake-up is such a stall), never two in a row.
    short = [g < plan.interval_s / 2 for g in gaps]
    assert not any(a and b for a, b in itertools.pairwise(short)), gaps
    assert _max_in_any_second(times) <= 41


async def test_send_paced_stops_when_asked() -> None:
    plan = plan_frames(16000, 1, speed=math.inf)
    ws = RecordingWS()
    frames, _ = await send_paced(
        ws, bytes(plan.frame_bytes * 10), plan, should_stop=lambda: len(ws.sent) >= 3
    )
    assert frames == 3


def test_frame_plan_properties() -> None:
    plan = FramePlan(frame_bytes=1600, interval_s=0.05, sample_rate=16000, channels=2)
    assert plan.frame_samples == 400
    assert plan.fps == pytest.approx(20)
    assert plan.speed == pytest.approx(0.5)
