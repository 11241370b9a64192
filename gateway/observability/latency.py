"""Engine latency from a stream's own clock: when each stretch of audio arrived, and when the
engine answered for it. Pure: the caller passes the times (time.monotonic())."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable

from ingest.engines.base import EngineEvent

# Points kept per stream: a minute of 20 ms frames. An engine further behind than that is not
# measured (its events are older than the window), which only drops samples.
MAX_POINTS = 3000


class AudioClock:
    """When the stream's audio up to each position (ms from its start) had been received."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self._ends: deque[int] = deque(maxlen=max_points)
        self._times: deque[float] = deque(maxlen=max_points)

    def received(self, audio_ms: int, now: float) -> None:
        """Audio up to `audio_ms` has now been received."""
        self._ends.append(audio_ms)
        self._times.append(now)

    def received_at(self, position_ms: int) -> float | None:
        """When the audio at `position_ms` arrived; None if not received or no longer known."""
        if not self._ends or position_ms > self._ends[-1]:
            return None
        evicted = len(self._ends) == self._ends.maxlen
        if evicted and position_ms < self._ends[0]:  # its frame may be one no longer kept
            return None
        index = bisect.bisect_left(self._ends, position_ms)
        return self._times[index]


class EngineLatency:
    """Feeds `first_partial(seconds)` once per utterance (its first audio received to its first
    partial) and `final(seconds)` per final (the utterance's last audio received to the final)."""

    def __init__(
        self,
        clock: AudioClock,
        first_partial: Callable[[float], None],
        final: Callable[[float], None],
    ) -> None:
        self.clock = clock
        self._first_partial, self._final = first_partial, final
        self._partial_seen = False

    def observe(self, event: EngineEvent, now: float) -> None:
        if event.is_final:
            self._partial_seen = False
            if (received := self.clock.received_at(event.end_ms)) is not None:
                self._final(max(now - received, 0.0))
        elif not self._partial_seen:
            self._partial_seen = True
            if (received := self.clock.received_at(event.start_ms)) is not None:
                self._first_partial(max(now - received, 0.0))
