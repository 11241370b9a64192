"""Cutting PCM into frames and pacing them under the server's frame-rate limit."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from websockets.exceptions import ConnectionClosed

MAX_FRAME_BYTES = 32 * 1024
DEFAULT_MAX_FPS = 40.0
DEFAULT_FRAME_MS = 20


@dataclass(frozen=True)
class FramePlan:
    """How to cut and pace PCM: `frame_bytes` per binary frame, one frame per `interval_s`."""

    frame_bytes: int
    interval_s: float
    sample_rate: int
    channels: int

    @property
    def frame_samples(self) -> int:
        """Samples per channel in a full frame."""
        return self.frame_bytes // (2 * self.channels)

    @property
    def fps(self) -> float:
        return 1.0 / self.interval_s

    @property
    def speed(self) -> float:
        """Achieved seconds of audio per second of wall time (may be below the requested speed
        when the 32 KiB cap and the frame budget both bind)."""
        return self.frame_samples / self.sample_rate / self.interval_s


def plan_frames(
    sample_rate: int,
    channels: int,
    *,
    speed: float = 1.0,
    max_fps: float = DEFAULT_MAX_FPS,
    frame_ms: int = DEFAULT_FRAME_MS,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> FramePlan:
    """Frames of `frame_ms` audio at `speed`x real time, grown (up to `max_frame_bytes`) so that
    no more than `max_fps` frames go out per second. `speed=math.inf` means as fast as allowed."""
    if not speed > 0 or not max_fps > 0 or frame_ms <= 0 or sample_rate <= 0 or channels <= 0:
        raise ValueError("speed, max_fps, frame_ms, sample_rate and channels must be positive")
    block = 2 * channels  # one s16 sample for every channel
    cap = max_frame_bytes // block
    if cap < 1:
        raise ValueError(f"max_frame_bytes={max_frame_bytes} cannot hold one sample frame")
    if math.isinf(speed):
        samples = cap
    else:
        nominal = max(1, round(sample_rate * frame_ms / 1000))
        within_budget = math.ceil(sample_rate * speed / max_fps)
        samples = min(max(nominal, within_budget), cap)
    # When the cap binds, slow down rather than exceed the frame budget.
    interval = max(samples / (sample_rate * speed), 1.0 / max_fps)
    return FramePlan(samples * block, interval, sample_rate, channels)


def iter_frames(pcm: bytes, frame_bytes: int) -> Iterator[bytes]:
    for start in range(0, len(pcm), frame_bytes):
        yield pcm[start : start + frame_bytes]


class FrameSink(Protocol):
    async def send(self, message: bytes, /) -> None: ...


async def send_paced(
    ws: FrameSink,
    pcm: bytes,
    plan: FramePlan,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[int, int]:
    """Send `pcm` as binary frames on `plan`'s schedule; (frames, bytes) sent.

    Stops early when `should_stop()` turns true or the connection closes. After a stall it does
    not burst to catch up (the server's limiter would answer 4429): the schedule restarts.
    """
    frames = sent = 0
    next_at = time.monotonic()
    for frame in iter_frames(pcm, plan.frame_bytes):
        if should_stop is not None and should_stop():
            break
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await ws.send(frame)
        except ConnectionClosed:
            break
        frames, sent = frames + 1, sent + len(frame)
        next_at = max(next_at + plan.interval_s, time.monotonic())
    return frames, sent
