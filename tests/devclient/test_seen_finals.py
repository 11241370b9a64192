"""What a resuming subscription asks for: the numbers through which it saw every final."""

from __future__ import annotations

from gateway.client.resume import SeenFinals


def test_resumes_below_a_final_still_on_its_way() -> None:
    seen = SeenFinals(3)
    assert seen.add(5) and seen.through == 3  # 4 (another source, a recording) not here yet
    assert seen.add(6) and seen.through == 3
    assert seen.add(4) and seen.through == 6
    assert not seen.add(5)  # history after a reconnect sends it again: not passed on twice
    assert seen.add(2) and not seen.add(2)  # below the start: new the first time only


def test_without_a_start_the_first_final_is_the_start() -> None:
    seen = SeenFinals(None)
    assert seen.add(10) and seen.through == 10
    assert seen.add(11) and seen.through == 11
    # A recording's block committed after a live final above it: new, passed on.
    assert all(seen.add(n) for n in range(1, 10))
    assert seen.through == 11 and not seen.add(5)


def test_a_number_never_used_is_left_behind() -> None:
    """A replica that died holding a number leaves a hole no final fills: past MAX_AHEAD finals
    above it, resuming from below it would replay more and more of the meeting."""
    seen = SeenFinals(0)
    for number in range(2, SeenFinals.MAX_AHEAD + 3):
        assert seen.add(number)
    assert seen.through == SeenFinals.MAX_AHEAD + 2
    assert seen.add(SeenFinals.MAX_AHEAD + 3) and seen.through == SeenFinals.MAX_AHEAD + 3
    assert seen.add(1) and not seen.add(1)  # the late final after all: new, once


def test_memory_stays_bounded() -> None:
    seen = SeenFinals(0)
    for number in range(1, 50_000):
        seen.add(number)
    assert len(seen._seen) <= 2 * SeenFinals.KEEP_BELOW
