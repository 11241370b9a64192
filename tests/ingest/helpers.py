"""Shared helpers for the ingest tests: fixture manifest, word error rate, stream drivers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ingest.engines.base import EngineEvent, EngineStream
from ingest.wav import read_wav

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TIMEOUT_S = 90.0  # every await on the engine is bounded by this: sized for a loaded machine


@dataclass(frozen=True)
class Fixture:
    path: Path
    pcm: bytes
    sample_rate: int
    channels: int
    sentences: list[str]
    spans_ms: list[tuple[int, int]]

    @property
    def bytes_per_ms(self) -> float:
        return self.sample_rate * self.channels * 2 / 1000

    def offset(self, ms: int) -> int:
        """Byte offset of `ms` into the audio, on a sample-frame boundary."""
        frame = 2 * self.channels
        return int(ms * self.bytes_per_ms) // frame * frame

    def chunks(self, start: int = 0, end: int | None = None, chunk_ms: int = 20) -> list[bytes]:
        size = self.offset(chunk_ms)
        data = self.pcm[start:end]
        return [data[i : i + size] for i in range(0, len(data), size)]


def load_fixture(name: str) -> Fixture:
    manifest = json.loads((FIXTURES / "fixtures.json").read_text())
    entry = next(item for item in manifest["files"] if item["file"] == name)
    pcm, rate, channels = read_wav(FIXTURES / name)
    assert (rate, channels) == (entry["sample_rate"], entry["channels"])
    return Fixture(
        path=FIXTURES / name,
        pcm=pcm,
        sample_rate=rate,
        channels=channels,
        sentences=[s["text"] for s in entry["sentences"]],
        spans_ms=[(s["start_ms"], s["end_ms"]) for s in entry["sentences"]],
    )


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference length."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        diagonal, row[0] = row[0], i
        for j, hyp_word in enumerate(hyp, start=1):
            best = min(row[j] + 1, row[j - 1] + 1, diagonal + (ref_word != hyp_word))
            diagonal, row[j] = row[j], best
    return row[len(hyp)] / max(1, len(ref))


@dataclass
class Collector:
    """Consumes `events()` in the background; tests await conditions on what arrived."""

    stream: EngineStream
    events: list[EngineEvent] = field(default_factory=list)
    error: BaseException | None = None
    ended: bool = False  # events() returned or raised
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _task: asyncio.Task[None] | None = None

    def start(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            async for event in self.stream.events():
                async with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        except Exception as exc:
            self.error = exc
        async with self._changed:
            self.ended = True
            self._changed.notify_all()

    @property
    def finals(self) -> list[EngineEvent]:
        return [e for e in self.events if e.is_final]

    async def wait_for(
        self, predicate: Callable[[Collector], bool], timeout: float = TIMEOUT_S
    ) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self) or self.ended)
        assert predicate(self), f"condition not met; events: {self.events}, error: {self.error}"

    async def finish(self, timeout: float = TIMEOUT_S) -> list[EngineEvent]:
        assert self._task is not None
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._task)
        return self.events


async def feed(stream: EngineStream, chunks: list[bytes], *, interleave: bool = False) -> None:
    for chunk in chunks:
        await stream.send(chunk)
        if interleave:
            await asyncio.sleep(0)  # a yield, not a wait: lets a concurrent feeder take turns
