"""The audio an engine has not yet finalized, pure: kept so another stream can hear it again.

Positions are milliseconds of audio since the start of the ingest stream. `append` adds PCM as
the client sent it; `release_until(ms)` drops what a final result has covered; `pending()` is the
audio still owed a final, with the position it starts at, and `pending_cut(marks)` the same audio
cut at `position`s noted earlier (where the client asked to finalize). The buffer is bounded: past
`max_ms` the oldest audio is dropped (an engine that never finalizes cannot grow it forever).
"""

from __future__ import annotations

from collections import deque


class ReplayBuffer:
    def __init__(self, sample_rate: int, channels: int, max_ms: int = 120_000) -> None:
        self.frame_bytes = 2 * channels
        self.bytes_per_s = sample_rate * self.frame_bytes
        self.max_bytes = self._bytes(max_ms)
        self._chunks: deque[bytes] = deque()
        self._start = 0  # byte position of the first buffered byte
        self._end = 0  # byte position after the last appended byte
        self.dropped_bytes = 0  # trimmed by the bound before any final covered them

    def _bytes(self, ms: int) -> int:
        whole_frames = self.bytes_per_s * ms // 1000 // self.frame_bytes
        return whole_frames * self.frame_bytes

    def _ms(self, position: int) -> int:
        return position * 1000 // self.bytes_per_s

    @property
    def start_ms(self) -> int:
        return self._ms(self._start)

    @property
    def end_ms(self) -> int:
        return self._ms(self._end)

    @property
    def position(self) -> int:
        """Bytes appended so far: the point in the audio the next byte starts at."""
        return self._end

    @property
    def buffered_bytes(self) -> int:
        return self._end - self._start

    def append(self, pcm: bytes) -> None:
        if not pcm:
            return
        self._chunks.append(bytes(pcm))
        self._end += len(pcm)
        excess = self.buffered_bytes - self.max_bytes
        if excess > 0:
            self.dropped_bytes += excess
            self._drop(self._start + excess)

    def release_until(self, ms: int) -> None:
        """A final covered the audio before `ms`: it will not be needed again."""
        self._drop(min(self._bytes(ms), self._end))

    def pending(self) -> tuple[int, bytes]:
        """(start_ms, pcm) of the audio not yet covered by a final."""
        return self.start_ms, b"".join(self._chunks)

    def position_at(self, ms: int) -> int:
        """The `position` of the audio `ms` into the stream."""
        return self._bytes(ms)

    def pending_cut(self, marks: list[int]) -> tuple[int, list[bytes]]:
        """(start_ms, pieces): the pending audio cut at each of `marks` (ascending `position`s)
        after its start, one piece more than those marks: a mark with no pending audio before
        it (at or before the start) cuts nothing."""
        start_ms, audio = self.pending()
        pieces, cut = [], 0
        for mark in marks:
            if mark <= self._start:
                continue
            end = min(max(mark - self._start, cut), len(audio))
            pieces.append(audio[cut:end])
            cut = end
        pieces.append(audio[cut:])
        return start_ms, pieces

    def _drop(self, position: int) -> None:
        position -= (position - self._start) % self.frame_bytes  # never split a sample frame
        while self._chunks and position > self._start:
            head = self._chunks[0]
            take = position - self._start
            if take >= len(head):
                self._chunks.popleft()
                self._start += len(head)
            else:
                self._chunks[0] = head[take:]
                self._start += take
