from __future__ import annotations

import asyncio

import pytest

from shared.single_flight import SingleFlight
from tests.util import eventually


async def test_concurrent_requests_for_one_key_share_one_call() -> None:
    flight: SingleFlight[list[int]] = SingleFlight()
    gate = asyncio.Event()
    calls = 0

    async def read() -> list[int]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return [1, 2, 3]

    waiters = [asyncio.create_task(flight.run(("t", "m", 0), read)) for _ in range(50)]
    other = asyncio.create_task(flight.run(("t", "m", 7), read))
    await eventually(lambda: flight.in_flight() == 2)
    gate.set()
    results = await asyncio.gather(*waiters)
    assert all(result == [1, 2, 3] for result in results)
    assert results[0] is results[-1]
    assert await other == [1, 2, 3]
    assert calls == 2 and flight.calls == 2 and flight.shared == 49
    assert flight.in_flight() == 0


async def test_nothing_is_cached_after_the_call() -> None:
    flight: SingleFlight[int] = SingleFlight()
    counter = iter(range(10))

    async def read() -> int:
        return next(counter)

    assert await flight.run("k", read) == 0
    assert await flight.run("k", read) == 1


async def test_an_error_reaches_every_waiter() -> None:
    flight: SingleFlight[int] = SingleFlight()
    gate = asyncio.Event()

    async def read() -> int:
        await gate.wait()
        raise ConnectionError("store down")

    waiters = [asyncio.create_task(flight.run("k", read)) for _ in range(3)]
    await eventually(lambda: flight.in_flight() == 1)
    gate.set()
    for waiter in waiters:
        with pytest.raises(ConnectionError):
            await waiter
    assert flight.in_flight() == 0


async def test_a_cancelled_caller_does_not_cancel_the_others() -> None:
    flight: SingleFlight[str] = SingleFlight()
    gate = asyncio.Event()

    async def read() -> str:
        await gate.wait()
        return "rows"

    first = asyncio.create_task(flight.run("k", read))
    second = asyncio.create_task(flight.run("k", read))
    await eventually(lambda: flight.shared == 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == "rows"
