"""cancel_and_wait: a task that lost its cancel still ends; errors and the caller's cancel are
not swallowed; a short cleanup after the cancel runs undisturbed."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from shared.tasks import cancel_and_wait, shared_task


async def test_a_task_that_swallows_a_cancel_still_ends() -> None:
    swallowed = 0
    ticks = 0

    async def lossy_loop() -> None:  # as a loop whose tick lost its cancel in wait_for
        nonlocal swallowed, ticks
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed < 3:
                    swallowed += 1
                    continue
                raise
            ticks += 1

    task = asyncio.create_task(lossy_loop())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(cancel_and_wait(task, redeliver_every_s=0.02), timeout=30)
    assert task.cancelled()
    assert swallowed == 3


async def test_an_error_is_raised_after_every_task_ended() -> None:
    async def fails() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            raise ValueError("broken")

    async def sleeps() -> None:
        await asyncio.sleep(10)

    failing, sleeping = asyncio.create_task(fails()), asyncio.create_task(sleeps())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="broken"):
        await cancel_and_wait(failing, None, sleeping)
    assert sleeping.cancelled()


async def test_a_short_cleanup_is_not_interrupted() -> None:
    cleaned = asyncio.Event()

    async def with_cleanup() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.05)  # e.g. a lease given back
            cleaned.set()

    task = asyncio.create_task(with_cleanup())
    await asyncio.sleep(0)
    await cancel_and_wait(task, redeliver_every_s=5)
    assert cleaned.is_set()


async def test_the_callers_own_cancel_comes_after_the_task_ended() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:  # ignores cancels until released
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(task, redeliver_every_s=0.01))
    await asyncio.sleep(0.05)
    stopper.cancel()
    await asyncio.sleep(0.05)
    assert not stopper.done()  # nothing outlives its owner: it still stops the task first
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stopper, timeout=30)
    assert task.done()


async def test_a_shared_task_carries_none_of_its_first_callers_log_context() -> None:
    structlog.contextvars.bind_contextvars(connection_id="c1", meeting="m1")
    try:

        async def bound() -> dict[str, object]:
            return structlog.contextvars.get_contextvars()

        assert await shared_task(bound(), name="shared") == {}
        assert await asyncio.create_task(bound()) == {"connection_id": "c1", "meeting": "m1"}
    finally:
        structlog.contextvars.clear_contextvars()
