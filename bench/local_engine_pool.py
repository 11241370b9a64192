#!/usr/bin/env python3
"""Measure the local engine: CPU per second of audio, event-loop lag under load, throughput.

Streams are fed the spoken fixtures in tests/fixtures as fast as the engine takes them (20 ms
chunks, the engine's backpressure paces the sender), which is the worst case for the loop.

- CPU: one stream at a time on one worker; the gateway process's CPU and the workers' (from
  /proc) per second of audio.
- Loop lag: a task sleeping 5 ms in a loop records how late it wakes while N streams decode;
  the target is p99 under 20 ms with 2 workers (decoding on a thread of the gateway's process
  gave 18-25 ms and stalls of 0.3 s). This was a test's assertion until the suite had to pass
  on a loaded machine: it is a measure of the machine too, so it lives here.
- Throughput: N concurrent streams with 1 worker, then with 2: seconds of audio per second.

Usage: .venv/bin/python bench/local_engine_pool.py [--streams N] [--rounds R]
       [--module ingest.engines.local.engine]   (any module with the same LocalEngine API)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.engines.base import StreamConfig  # noqa: E402
from ingest.wav import read_wav  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
CLIPS = ("two_sentences_16k_mono.wav", "two_sentences_48k_stereo.wav", "two_sentences_48k_mono.wav")
CHUNK_MS = 20
LAG_P99_TARGET_S = 0.020  # event-loop lag p99 with 2 workers: the target, on an unloaded machine


class Clip:
    def __init__(self, name: str) -> None:
        self.pcm, self.rate, self.channels = read_wav(FIXTURES / name)
        self.seconds = len(self.pcm) / (2 * self.rate * self.channels)
        size = self.rate * self.channels * 2 * CHUNK_MS // 1000
        self.chunks = [self.pcm[i : i + size] for i in range(0, len(self.pcm), size)]


async def transcribe(engine: Any, clip: Clip) -> int:
    """Stream one clip; the number of finals."""
    stream = await engine.open(StreamConfig(clip.rate, clip.channels, "en"))

    async def drain() -> int:
        return sum([event.is_final async for event in stream.events()])

    finals = asyncio.create_task(drain())
    for chunk in clip.chunks:
        await stream.send(chunk)
    await stream.close()
    return await finals


def worker_cpu_s(engine: Any) -> float:
    """CPU seconds used so far by the engine's worker processes (0 for a threaded engine)."""
    total = 0.0
    for pid in getattr(engine, "worker_pids", list)():
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def bench_cpu(module: Any, clips: list[Clip], rounds: int) -> None:
    engine = module.LocalEngine(workers=1)
    try:
        await engine.warm_up()
        await transcribe(engine, clips[0])  # first-use costs out of the measure
        parent, workers, audio = time.process_time(), worker_cpu_s(engine), 0.0
        for _ in range(rounds):
            for clip in clips:
                await transcribe(engine, clip)
                audio += clip.seconds
        parent, workers = time.process_time() - parent, worker_cpu_s(engine) - workers
    finally:
        await engine.aclose()
    print(
        f"CPU per second of audio ({audio:.0f} s, one stream at a time): "
        f"gateway process {parent / audio:.4f} s, workers {workers / audio:.4f} s"
    )


async def bench_lag(module: Any, clips: list[Clip], streams: int, workers: int) -> None:
    engine = module.LocalEngine(workers=workers)
    lags: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    try:
        await engine.warm_up(2)
        ticker = asyncio.create_task(tick())
        await asyncio.gather(*(transcribe(engine, clips[i % len(clips)]) for i in range(streams)))
        done.set()
        await ticker
    finally:
        await engine.aclose()
    lags.sort()
    p50, p99 = statistics.median(lags), lags[int(len(lags) * 0.99)]
    verdict = "" if workers < 2 else f" ({'meets' if p99 < LAG_P99_TARGET_S else 'misses'} target)"
    print(
        f"loop lag, {streams} streams on {workers} worker(s): p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms{verdict}, max {lags[-1] * 1000:.1f} ms ({len(lags)} ticks)"
    )


async def bench_throughput(module: Any, clips: list[Clip], streams: int, workers: int) -> None:
    engine = module.LocalEngine(workers=workers)
    try:
        await engine.warm_up(2)
        batch = [clips[i % len(clips)] for i in range(streams)]
        start = time.perf_counter()
        finals = await asyncio.gather(*(transcribe(engine, clip) for clip in batch))
        wall = time.perf_counter() - start
    finally:
        await engine.aclose()
    audio = sum(clip.seconds for clip in batch)
    assert all(count == 2 for count in finals), finals
    print(
        f"throughput, {streams} streams on {workers} worker(s): {audio:.0f} s of audio in "
        f"{wall:.2f} s = {audio / wall:.1f}x real time"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", default="ingest.engines.local.engine")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    module = importlib.import_module(args.module)
    clips = [Clip(name) for name in CLIPS]
    print(f"{args.module} on {os.cpu_count()} CPUs")
    await bench_cpu(module, clips, args.rounds)
    for streams in (3, args.streams):
        for workers in (1, 2):
            await bench_lag(module, clips, streams, workers)
    for workers in (1, 2):
        await bench_throughput(module, clips, args.streams, workers)


if __name__ == "__main__":  # required: workers are spawned, and re-import the main module
    asyncio.run(main())
