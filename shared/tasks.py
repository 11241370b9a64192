"""Stop background tasks so that they really end.

On Python 3.11 a task can lose its cancellation: `asyncio.wait_for` returns the inner result
when the inner operation finishes in the same turn of the loop as the cancel (CPython gh-86296,
fixed in 3.12), and redis-py bounds each socket write with `wait_for`. A loop that lost its
cancel runs on, so `task.cancel(); await task` waits forever. `cancel_and_wait` delivers the
cancel again until the task has ended, as anyio's level-triggered cancel scopes do.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Tasks that outlive whoever started them (`detach`): held here, or the loop's weak reference
# alone would let them be collected mid-way.
_detached: set[asyncio.Future[Any]] = set()

# Long enough for a cancelled task's cleanup (a shielded release) to run undisturbed, short
# enough that a lost cancel costs a fraction of a second.
REDELIVER_EVERY_S = 0.5


async def cancel_and_wait(
    *tasks: asyncio.Future[Any] | None, redeliver_every_s: float = REDELIVER_EVERY_S
) -> None:
    """Cancel `tasks` (None is skipped) and wait until every one has ended.

    A task that ended with an error other than its cancellation has that error raised here, as
    `await task` would, after all have ended. A cancel of the caller meanwhile is raised once
    every task has ended, never suppressed.
    """
    pending = {task for task in tasks if task is not None and not task.done()}
    ended = [task for task in tasks if task is not None]
    caller_cancelled = False
    while pending:
        for task in pending:
            task.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=redeliver_every_s)
        except asyncio.CancelledError:
            # Stop them first (nothing may outlive its owner), then pass the cancel on.
            caller_cancelled = True
    errors = [task.exception() for task in ended if not task.cancelled()]  # all retrieved
    if caller_cancelled:
        raise asyncio.CancelledError
    for error in errors:
        if error is not None:
            raise error


async def run_to_end(work: Awaitable[T]) -> T:
    """Await `work` to its end even if this task is cancelled again meanwhile.

    For cleanup a cancelled task must finish (a job handed back to the queue) although
    `cancel_and_wait` delivers its cancel again. Cancels that arrive meanwhile are dropped, so
    use it only where the task ends right after.
    """
    inner = asyncio.ensure_future(work)
    while True:
        try:
            return await asyncio.shield(inner)
        except asyncio.CancelledError:
            if inner.cancelled():
                raise  # `work` itself was cancelled
            if inner.done():
                return inner.result()  # it ended in the turn our wait was cancelled


def detach(work: Awaitable[T] | asyncio.Future[T], name: str | None = None) -> asyncio.Future[T]:
    """Run `work` (or keep the running task) to its end in the background, held until then."""
    task = asyncio.ensure_future(work)
    if name is not None and isinstance(task, asyncio.Task):
        task.set_name(name)
    _detached.add(task)
    task.add_done_callback(_detached.discard)
    return task


def shared_task(work: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
    """A task that serves every caller (a bus reader, a batch's flush), started by whichever
    comes first: run in an empty context, so its log lines carry none of that caller's bound
    ids (a connection's tenant and meeting, a recording job's)."""
    return asyncio.get_running_loop().create_task(work, name=name, context=contextvars.Context())
