"""A missing counter's seed while the outbox drains: a final moved to the store between the
seed's two reads must still count (otherwise its number is handed out again)."""

from __future__ import annotations

from gateway.pipeline.durable_finals import counter_seed


class Draining:
    """Finals 4..6 wait in the outbox, 1..3 are stored; the writer stores the waiting ones
    right after whichever read comes first."""

    def __init__(self) -> None:
        self.waiting_high, self.stored_high = 6, 3

    def _drain(self) -> None:
        self.waiting_high, self.stored_high = 0, 6

    async def waiting(self) -> int:
        value = self.waiting_high
        self._drain()
        return value

    async def stored(self) -> int:
        value = self.stored_high
        self._drain()
        return value


async def test_a_final_stored_between_the_two_reads_still_counts() -> None:
    state = Draining()
    assert await counter_seed(state.waiting, state.stored) == 6


async def test_the_highest_of_both_without_a_drain() -> None:
    async def five() -> int:
        return 5

    async def two() -> int:
        return 2

    assert await counter_seed(five, two) == await counter_seed(two, five) == 5
