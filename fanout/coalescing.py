"""A viewer's backlog: a FIFO bounded in messages and bytes that coalesces partials.

Pure: no I/O, no event loop. A queued partial of (source, segment_no) is replaced in place by a
newer partial of the same segment; a final removes its source's queued partials (of that segment
or, when the partial carried a stale predicted number, an earlier one), since it supersedes them.
Whatever still does not fit is an overflow: the caller closes the viewer (4408) so it reconnects
with `since`, instead of losing a final silently.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from fanout.publication import Kind, Publication

# A queue slot is a one-item list so a newer partial can take an older one's place, and a final
# can blank a superseded partial (None) without searching the deque.
_Slot = list[Publication | None]


class CoalescingQueue:
    __slots__ = ("_partials", "_slots", "coalesced", "count", "max_bytes", "max_messages", "nbytes")

    def __init__(self, max_messages: int, max_bytes: int | None = None) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._slots: deque[_Slot] | None = None  # created while something is queued
        self._partials: dict[tuple[str | None, int], _Slot] = {}
        self.count = 0  # messages queued (blanked slots excluded)
        self.nbytes = 0  # payload bytes queued
        self.coalesced = 0  # partials replaced or superseded while queued

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def push(self, item: Publication) -> bool:
        """Queue `item` (coalescing partials); False when it does not fit (an overflow)."""
        if item.kind is Kind.PARTIAL:
            slot = self._partials.get((item.source, item.segment_no))  # type: ignore[arg-type]
            if slot is not None:
                return self._replace(slot, item)
        elif item.kind is Kind.FINAL and self._partials:
            self._drop_partials_of(item.source, item.segment_no)  # type: ignore[arg-type]
        size = len(item.data)
        if self.count >= self.max_messages or (
            self.max_bytes is not None and self.nbytes + size > self.max_bytes
        ):
            return False
        slot = [item]
        if self._slots is None:
            self._slots = deque()
        self._slots.append(slot)
        if item.kind is Kind.PARTIAL:
            self._partials[(item.source, item.segment_no)] = slot  # type: ignore[index]
        self.count += 1
        self.nbytes += size
        return True

    def pop(self) -> Publication | None:
        """The oldest queued message, or None when empty."""
        slots = self._slots
        while slots:
            slot = slots.popleft()
            if not slots:
                self._slots = None  # give the deque's block back while idle
            item = slot[0]
            if item is None:
                continue  # a partial its final superseded
            if item.kind is Kind.PARTIAL:
                key = (item.source, item.segment_no)
                if self._partials.get(key) is slot:  # type: ignore[arg-type]
                    del self._partials[key]  # type: ignore[arg-type]
            self.count -= 1
            self.nbytes -= len(item.data)
            return item
        return None

    def clear(self) -> None:
        self._slots = None
        self._partials.clear()
        self.count = self.nbytes = 0

    def __iter__(self) -> Iterator[Publication]:
        """The queued messages, oldest first (for inspection; the queue is not changed)."""
        return (slot[0] for slot in self._slots or () if slot[0] is not None)

    def __getitem__(self, index: int) -> Publication:
        """The queued message at `index`, oldest first (for inspection: O(n))."""
        return list(self)[index]

    def _replace(self, slot: _Slot, item: Publication) -> bool:
        old = slot[0]
        assert old is not None
        nbytes = self.nbytes - len(old.data) + len(item.data)
        if self.max_bytes is not None and nbytes > self.max_bytes:
            return False
        slot[0] = item
        self.nbytes = nbytes
        self.coalesced += 1
        return True

    def _drop_partials_of(self, source: str | None, segment_no: int) -> None:
        stale = [key for key in self._partials if key[0] == source and key[1] <= segment_no]
        for key in stale:
            slot = self._partials.pop(key)
            old = slot[0]
            assert old is not None
            slot[0] = None
            self.count -= 1
            self.nbytes -= len(old.data)
            self.coalesced += 1
