"""When a meeting's live tips are asked for, and which answer becomes a tip. Pure: the caller
passes the clock and does the I/O (gateway/pipeline/live_tips.py).

- **Rate**: at most one backend call per `min_interval_s`, so at most one tip per interval. A
  final that arrives inside the interval is not lost: a run is due when the interval has passed
  (the trailing run after the meeting's last finals).
- **Single flight**: one call at a time per meeting; a call that timed out is superseded, and a
  late answer to it is dropped.
- **Cursor**: finals up to `cursor` are covered. A call covers the finals it was given; when the
  backend found several items, the tip is the first and the cursor stops at its evidence, so the
  rest are looked at again on the next run. A tip is about what was just said: a run never
  starts more than `MAX_BEHIND_FINALS` behind the newest final (those before are passed over;
  the post-meeting notes cover the whole meeting), or tips fell further behind all meeting
  whenever more items were said than one interval's tip, and went on after it ended.
- **Dedup**: an item whose words overlap a recent tip's by `DUPLICATE_OVERLAP` or more is dropped.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ingest.insights.base import Insight
from ingest.insights.rules import DUPLICATE_OVERLAP, overlap

RECENT_TIPS = 10  # tips remembered per meeting for dedup (and shown to the backend)
WINDOW_FINALS = 30  # finals given to one call at most (the oldest not yet covered first)
MAX_BEHIND_FINALS = 10  # how far behind the newest final a run may start
# After failed calls in a row the next waits at least 1, 2, 4, ... s, at most this (a store or
# backend that stays away is not called in a loop when the interval is short).
MAX_FAILURE_WAIT_S = 60.0


@dataclass(frozen=True, slots=True)
class TipCall:
    call_id: int
    after: int  # the window is the finals after this number (at most WINDOW_FINALS of them)


@dataclass
class TipSchedule:
    min_interval_s: float
    cursor: int = 0  # finals through this number are covered
    announced: int = 0  # the highest final number seen on the bus
    recent: deque[Insight] = field(default_factory=lambda: deque(maxlen=RECENT_TIPS))
    _last_call_at: float = -math.inf
    _in_flight: int | None = None
    _calls: int = 0
    _failures: int = 0  # calls failed in a row
    _failed_at: float = -math.inf

    def on_final(self, segment_no: int) -> None:
        self.announced = max(self.announced, segment_no)

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    def next_run_at(self) -> float | None:
        """When the next call is due (now or later), or None: nothing new, or a call is out."""
        if self._in_flight is not None or self.announced <= self.cursor:
            return None
        due = self._last_call_at + self.min_interval_s
        if self._failures:  # counted from the failure: a call may time out after a while
            backoff_s = min(MAX_FAILURE_WAIT_S, 2.0 ** min(self._failures - 1, 16))
            due = max(due, self._failed_at + backoff_s)
        return due

    def start(self, now: float) -> TipCall | None:
        """A call to make now, or None when none is due."""
        due = self.next_run_at()
        if due is None or now < due:
            return None
        self.cursor = max(self.cursor, self.announced - MAX_BEHIND_FINALS)
        self._calls += 1
        self._in_flight = self._calls
        self._last_call_at = now
        return TipCall(self._calls, self.cursor)

    def finish(
        self, call: TipCall, window: Sequence[int], items: Sequence[Insight]
    ) -> Insight | None:
        """The call's answer for `window` (the finals' numbers it was given): the tip to
        publish, or None (nothing new, a near-duplicate, or a superseded call's late answer)."""
        if call.call_id != self._in_flight:
            return None  # superseded: a newer call owns the meeting now
        self._in_flight = None
        self._failures = 0
        fresh = [item for item in items if not self._repeats(item)]
        covered = max(window, default=self.cursor)
        if fresh:
            tip = fresh[0]
            if len(fresh) > 1:  # look at the rest again next run
                covered = min(covered, max(tip.segment_nos, default=covered))
            self.recent.append(tip)
        else:
            tip = None
        self.cursor = max(self.cursor, covered)
        return tip

    def supersede(self, call: TipCall, now: float | None = None) -> None:
        """The call failed or timed out: free the meeting; a late answer to it is dropped. The
        finals it had stay uncovered, for the next run, which waits 1, 2, 4 ... s from `now`
        (the failure) after failures in a row, at most `MAX_FAILURE_WAIT_S`."""
        if call.call_id == self._in_flight:
            self._in_flight = None
            self._failures += 1
            self._failed_at = self._last_call_at if now is None else now

    def _repeats(self, item: Insight) -> bool:
        return any(overlap(item.text, seen.text) >= DUPLICATE_OVERLAP for seen in self.recent)
