"""ForgetDeleted: once per burst of deletions, again after a run readers kept from finishing,
and closed without waiting out a retry."""

from __future__ import annotations

import asyncio

from gateway.pipeline.forget_deleted import ForgetDeleted
from tests.util import eventually


async def test_requests_during_a_run_make_one_more_run() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def forget() -> bool:
        started.set()
        await release.wait()
        return True

    runner = ForgetDeleted(forget)
    runner.request()
    await started.wait()
    for _ in range(5):  # a retention sweep's deletions while the first run works
        runner.request()
    release.set()
    await eventually(lambda: runner.runs == 2, what="one more run")
    await runner.aclose()
    assert runner.runs == 2


async def test_a_run_kept_from_finishing_goes_again_and_closing_stops_the_wait() -> None:
    answers = [False, True]

    async def forget() -> bool:
        return answers.pop(0) if answers else True

    runner = ForgetDeleted(forget, retry_s=0.05)
    runner.request()
    await eventually(lambda: runner.runs == 2, what="retried")
    await runner.aclose()

    stuck = ForgetDeleted(lambda: asyncio.sleep(0, result=False), retry_s=3600)
    stuck.request()
    await eventually(lambda: stuck.runs == 1, what="first run")
    await asyncio.wait_for(stuck.aclose(), 10)  # not an hour
    assert stuck.runs == 1
