"""asyncio's Queue and Event interfaces without their eager per-object deques.

`asyncio.Queue` allocates three deques and `asyncio.Event` one (each a 64-slot block, about 760
bytes) when created, although an idle viewer's connection has nothing queued and nobody waiting.
These allocate only while items are queued or someone waits; the uvicorn protocol subclass uses
them for its receive queue and `writable` flag (one of each per connection).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def _wake_one(waiters: list[asyncio.Future[None]] | None) -> None:
    while waiters:
        waiter = waiters.pop(0)
        if not waiter.done():
            waiter.set_result(None)
            return


class LeanQueue(Generic[T]):
    """An unbounded FIFO with `put_nowait`, `get`, `get_nowait`, `empty` and `qsize`; `on_put`,
    when set, is called after each put (a consumer with no task waiting in `get`)."""

    __slots__ = ("_getters", "_items", "on_put")

    def __init__(self) -> None:
        self._items: deque[T] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self.on_put: Callable[[], None] | None = None

    def put_nowait(self, item: T) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        _wake_one(self._getters)
        if self.on_put is not None:
            self.on_put()

    def get_nowait(self) -> T:
        """The first item; IndexError when empty."""
        if not self._items:
            raise IndexError("get_nowait from an empty LeanQueue")
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def empty(self) -> bool:
        return not self._items

    def last(self) -> T | None:
        """The most recently put item still queued, or None."""
        return self._items[-1] if self._items else None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    async def get(self) -> T:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._getters:
                    self._getters.remove(waiter)
                elif self._items:
                    _wake_one(self._getters)  # it was woken for an item it will not take
                raise
        if not self._getters:
            self._getters = None
        item = self._items.popleft()
        if not self._items:
            self._items = None  # give the deque's block back while idle
        return item


class LeanEvent:
    """A flag with `set`, `clear`, `is_set` and `wait`, like asyncio.Event."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True
