"""A frame writer standing in for a viewer's socket transport (what `ViewerQueue` writes to)."""

from __future__ import annotations

import asyncio


class Transport:
    """A frame writer with a switch: `backed_up` plays a transport still sending earlier bytes
    (try_write refuses) whose `write` waits until it drains."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.direct = 0
        self.backed_up = False
        self.drained = asyncio.Event()
        self.drained.set()
        self.gone = False

    def try_write(self, frame: bytes) -> bool:
        if self.backed_up or self.gone:
            return False
        self.frames.append(frame)
        self.direct += 1
        return True

    def closing(self) -> bool:
        return self.gone

    async def write(self, frame: bytes) -> None:
        await self.drained.wait()
        if self.gone:
            raise ConnectionResetError("peer gone")
        self.frames.append(frame)

    def block(self) -> None:
        self.backed_up = True
        self.drained.clear()

    def unblock(self) -> None:
        self.backed_up = False
        self.drained.set()
