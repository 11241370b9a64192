"""ForgetDeleted: once per burst of deletions and runs spaced apart, again after a run that did
not finish or failed, and closed without waiting out a gap."""

from __future__ import annotations

import asyncio
import time

from gateway.pipeline.forget_deleted import ForgetDeleted
from tests.util import eventually


async def test_requests_during_a_run_make_one_more_run_after_the_gap() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    times: list[float] = []

    async def forget() -> bool:
        times.append(time.monotonic())
        started.set()
        await release.wait()
        return True

    runner = ForgetDeleted(forget, min_gap_s=0.3)
    runner.request()
    await started.wait()
    for _ in range(5):  # a retention sweep's deletions while the first run works
        runner.request()
    release.set()
    await eventually(lambda: runner.runs == 2, what="one more run")
    assert times[1] - times[0] >= 0.3  # spaced: each run rewrites the whole index
    await runner.aclose()
    assert runner.runs == 2


async def test_a_run_that_did_not_finish_or_failed_goes_again() -> None:
    answers: list[bool | Exception] = [False, RuntimeError("database is locked"), True]

    async def forget() -> bool:
        answer = answers.pop(0) if answers else True
        if isinstance(answer, Exception):
            raise answer
        return answer

    runner = ForgetDeleted(forget, min_gap_s=0.05)
    runner.request()
    await eventually(lambda: runner.runs == 3, what="tried until done")
    await runner.aclose()
    assert runner.runs == 3


async def test_closing_does_not_wait_out_the_gap() -> None:
    runner = ForgetDeleted(lambda: asyncio.sleep(0, result=False), min_gap_s=3600)
    runner.request()
    await eventually(lambda: runner.runs == 1, what="first run")
    await asyncio.wait_for(runner.aclose(), 10)  # not an hour
    assert runner.runs == 1
    runner.request()  # after close: nothing
    assert runner.runs == 1
