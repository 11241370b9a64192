"""The open WebSocket connections of this process, each of which can be ended from outside.

A connection is ended by its token's lifetime (gateway/ws/session_token.py: 4401) or by a graceful
drain (gateway/drain.py: 1012). Ending only *requests* the end: the connection's own handler
notices (`ended()`), finishes what it must (an ingest flushes its finals) and closes with the
requested code, so the close goes through the same path as every other documented close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.close_codes import CloseCode, CloseError
from gateway.server.parking import Parked
from shared.lean_sync import LeanEvent

if TYPE_CHECKING:
    from gateway.ws.session_token import SessionToken

T = TypeVar("T")

RESTARTING = "server restarting, reconnect"


class LiveConnection:
    """One open connection: who it serves and whether something asked it to end.

    Kept small: a viewer's connection may idle for hours. Its events allocate only while someone
    waits (shared.lean_sync), and `run_until_ended` runs the work in the handler's own task,
    which `end` cancels, instead of a task for the work and one waiting for the end."""

    __slots__ = (
        "_end_requested",
        "_ending",
        "_registry",
        "_task",
        "end_error",
        "finished",
        "meeting_id",
        "role",
        "tenant_id",
        "token",
        "wake",
    )

    def __init__(self, role: str, tenant_id: str, meeting_id: str) -> None:
        self.role, self.tenant_id, self.meeting_id = role, tenant_id, meeting_id
        self.token: SessionToken | None = None
        self.end_error: CloseError | None = None
        self._end_requested = LeanEvent()
        self.finished = LeanEvent()  # the handler has returned
        self._task: asyncio.Task[Any] | None = None  # running `run_until_ended`'s work
        self._ending = False  # `end` cancelled that task (once)
        self._registry: ConnectionRegistry | None = None
        # Called by `end` when no task runs the work: a parked viewer (gateway.server.parking).
        self.wake: Callable[[], None] | None = None

    def register(self, registry: ConnectionRegistry) -> None:
        """Counted among `registry`'s connections until its `with` block is left."""
        self._registry = registry
        registry.add(self)

    def __enter__(self) -> LiveConnection:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is Parked:
            return  # still open: its resumed work leaves the block again
        self.wake = None
        if self.token is not None:
            self.token.cancel()
        if self._registry is not None:
            self._registry.discard(self)
        self.finished.set()

    def end(self, code: int, message: str) -> None:
        """Ask the connection to close with `code`; the first request wins."""
        if self.end_error is None:
            self.end_error = CloseError(CloseCode(code), message)
            self._end_requested.set()
            task = self._task
            if task is not None and not task.done():
                self._ending = True
                task.cancel()
            elif self.wake is not None:
                self.wake()

    async def ended(self) -> CloseError:
        """Wait until the connection is asked to end; the error to close it with."""
        await self._end_requested.wait()
        assert self.end_error is not None
        return self.end_error

    async def run_until_ended(self, work: Coroutine[Any, Any, T], *, resumed: bool = False) -> T:
        """Run `work` as the connection's life, then unregister the connection (as leaving its
        `with` block does); if the connection is asked to end first, cancel `work` (its
        `finally` blocks run) and raise the requested CloseError.

        A parked connection (gateway.server.parking) stays registered; its resumed work runs
        through here again with `resumed`, and checks `end_error` itself (it may have been asked
        to end while parked: its cleanup must run)."""
        with self:
            if self.end_error is not None and not resumed:
                work.close()
                raise self.end_error
            task = asyncio.current_task()
            assert task is not None
            self._task = task
            try:
                return await work
            except asyncio.CancelledError:
                if not self._ending:
                    raise
                self._ending = False
                if task.uncancel() > 0:
                    raise  # cancelled from outside too
                assert self.end_error is not None
                raise self.end_error from None
            finally:
                self._task = None
                if self._ending:  # the work swallowed the cancellation: take it back
                    self._ending = False
                    task.uncancel()


class ConnectionRegistry:
    """This process's live connections (for drain and stats)."""

    def __init__(self) -> None:
        self._connections: set[LiveConnection] = set()

    def __len__(self) -> int:
        return len(self._connections)

    def with_role(self, role: str) -> list[LiveConnection]:
        return [c for c in self._connections if c.role == role]

    def of_meeting(self, tenant_id: str, meeting_id: str) -> list[LiveConnection]:
        return [
            c for c in self._connections if c.tenant_id == tenant_id and c.meeting_id == meeting_id
        ]

    def add(self, connection: LiveConnection) -> None:
        self._connections.add(connection)

    def discard(self, connection: LiveConnection) -> None:
        self._connections.discard(connection)
