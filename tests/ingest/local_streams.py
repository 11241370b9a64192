"""Stream drivers shared by the local engine tests."""

from __future__ import annotations

import os
from pathlib import Path

from ingest.engines.base import EngineEvent, StreamConfig
from ingest.engines.local.engine import LocalEngine, LocalEngineStream
from tests.ingest.helpers import Collector, Fixture, feed

MONO_16K = "two_sentences_16k_mono.wav"
STEREO_48K = "two_sentences_48k_stereo.wav"
MONO_48K = "two_sentences_48k_mono.wav"


async def open_stream(engine: LocalEngine, fx: Fixture, language: str = "en") -> LocalEngineStream:
    return await engine.open(StreamConfig(fx.sample_rate, fx.channels, language))


async def run_stream(
    stream: LocalEngineStream, fx: Fixture, *, interleave: bool = False
) -> list[EngineEvent]:
    """Feed the whole fixture, close, and return every event."""
    collector = Collector(stream).start()
    await feed(stream, fx.chunks(chunk_ms=20), interleave=interleave)
    await stream.close()
    events = await collector.finish()
    assert collector.error is None
    return events


async def transcribe(
    engine: LocalEngine, fx: Fixture, *, interleave: bool = False
) -> list[EngineEvent]:
    return await run_stream(await open_stream(engine, fx), fx, interleave=interleave)


def finals_of(events: list[EngineEvent]) -> list[EngineEvent]:
    return [e for e in events if e.is_final]


def child_pids() -> set[int]:
    """This process's children, zombies included (Linux /proc), except multiprocessing's
    resource tracker: the first spawn starts it, and it lives as long as this process."""
    me, children = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        if b"multiprocessing.resource_tracker" in cmdline:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == me:  # the field after "(comm) state"
            children.add(int(entry.name))
    return children
