"""The live tips schedule with a scripted meeting: rate limit with a trailing run, single flight,
superseded answers dropped, the cursor over covered finals, and near-duplicates dropped."""

from __future__ import annotations

from ingest.insights.base import FinalLine, Insight
from ingest.insights.live import TipSchedule
from ingest.insights.rules import find_items

MEETING = [
    "Good morning everyone, can you hear me?",
    "We decided to move the launch to Friday.",
    "Ahmet will send the updated numbers by Thursday.",
    "Nice weather today.",
    "We have decided to move the launch to Friday afternoon.",  # a near-duplicate
    "Should we invite the finance team to the review?",
]
LINES = [FinalLine(n, text) for n, text in enumerate(MEETING, start=1)]


def run(schedule: TipSchedule, now: float) -> Insight | str | None:
    """One worker step with the rules backend: the tip, None, or "idle" if no call was due."""
    call = schedule.start(now)
    if call is None:
        return "idle"
    window = [line for line in LINES if line.segment_no > call.after][:30]
    window = [line for line in window if line.segment_no <= schedule.announced]
    return schedule.finish(call, [w.segment_no for w in window], find_items(window))


def test_one_call_per_interval_with_a_trailing_run() -> None:
    s = TipSchedule(min_interval_s=30)
    assert s.next_run_at() is None and run(s, 0) == "idle"  # nothing said yet
    s.on_final(1)
    assert run(s, 0) is None  # small talk: no tip, but covered
    assert s.cursor == 1 and s.next_run_at() is None
    s.on_final(2)
    assert s.next_run_at() == 30  # the interval since the last call
    assert run(s, 10) == "idle"
    s.on_final(3)  # more finals inside the interval: one run covers them
    tip = run(s, 30)
    assert isinstance(tip, Insight) and tip.kind == "decision" and tip.segment_nos == (2,)
    # Two items were found; the tip is the first and the cursor stops at its evidence.
    assert s.cursor == 2 and s.next_run_at() == 60
    tip = run(s, 60)  # the trailing run, with no new final
    assert isinstance(tip, Insight) and tip.kind == "action_item" and tip.owner == "Ahmet"
    assert s.cursor == 3 and s.next_run_at() is None


def test_near_duplicates_are_dropped_and_the_cursor_moves_on() -> None:
    s = TipSchedule(min_interval_s=0)
    s.on_final(3)
    assert isinstance(run(s, 0), Insight) and isinstance(run(s, 1), Insight)
    s.on_final(6)
    tip = run(s, 2)  # 4 small talk, 5 repeats the decision, 6 a question
    assert isinstance(tip, Insight) and tip.kind == "question" and tip.segment_nos == (6,)
    assert [t.kind for t in s.recent] == ["decision", "action_item", "question"]
    assert s.cursor == 6


def test_single_flight_and_a_superseded_answer_is_dropped() -> None:
    s = TipSchedule(min_interval_s=5)
    s.on_final(2)
    first = s.start(0)
    assert first is not None and s.in_flight
    s.on_final(3)
    assert s.start(100) is None and s.next_run_at() is None  # one call at a time
    s.supersede(first)  # it timed out
    assert s.cursor == 0  # its finals stay uncovered
    second = s.start(100)
    assert second is not None and second.after == 0
    late = find_items(LINES[:2])
    assert s.finish(first, [1, 2], late) is None  # the late answer is dropped
    assert s.in_flight and s.cursor == 0
    tip = s.finish(second, [1, 2, 3], find_items(LINES[:3]))
    assert tip is not None and tip.segment_nos == (2,)


def test_a_meeting_with_more_items_than_tips_keeps_its_tips_near_the_newest_final() -> None:
    """Each run found several items and the cursor stopped at the first: a soak meeting's tips
    ended up 9 minutes behind the speech, and went on for 12 minutes after it ended."""
    s = TipSchedule(min_interval_s=30)
    lines = [FinalLine(n, MEETING[1 + n % 2]) for n in range(1, 401)]  # decisions, actions
    now, lags = 0.0, []
    for newest in range(20, 401, 10):  # 10 finals per interval, each with an item
        s.on_final(newest)
        call = s.start(now)
        assert call is not None
        window = [line for line in lines if call.after < line.segment_no <= newest][:30]
        tip = s.finish(call, [w.segment_no for w in window], find_items(window))
        if tip is not None:
            lags.append(newest - max(tip.segment_nos))
        now += 30
    assert lags and max(lags) <= 10, lags
    s.on_final(400)
    assert s.start(now) is None or s.cursor >= 390  # nothing long past is left to run on


def test_calls_that_keep_failing_wait_longer_each_time_until_one_succeeds() -> None:
    """A store gone from under a meeting at INSIGHTS_MIN_INTERVAL_S=0 failed ~200 calls a
    second (the rolling-upgrade tester's 7,889 warnings in 38 s)."""
    s = TipSchedule(min_interval_s=0)
    s.on_final(3)
    now, waits = 0.0, []
    for _ in range(9):
        call = s.start(now)
        assert call is not None
        failed_at = now + 5  # each call times out after 5 s: the wait counts from then
        s.supersede(call, failed_at)
        due = s.next_run_at()
        assert due is not None
        waits.append(due - failed_at)
        now = due
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    for _ in range(2000):  # a backend away for days: no overflow, still a minute
        call = s.start(now)
        assert call is not None
        s.supersede(call, now)
        now = s.next_run_at() or now
    assert s.next_run_at() == now and s.start(now - 1) is None
    tip = run(s, now)  # it answers again
    assert isinstance(tip, Insight)
    s.on_final(6)
    assert s.next_run_at() == now  # back to the interval
