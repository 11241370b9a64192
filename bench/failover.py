#!/usr/bin/env python3
"""Measure mid-stream failover: how long from the primary's death to the next engine serving.

The primary is Deepgram against the protocol-faithful fake (tests/engines/fake_deepgram.py),
which closes the socket 1011 after `--die-after-s` of audio; the fallback is Google against its
fake (or the local engine with `--fallback local`). Streams are fed in real-time-sized 20 ms
frames as fast as the engines take them. Figures:

- baseline: opening a fresh stream on the fallback engine (a failover cannot beat it);
- failover: from the fake closing the socket to the chain announcing the switch (the replay of
  the unfinalized audio follows the announcement);
- ratio failover / baseline, and whether the p95 failover stays under the 2 s target.

Usage: .venv/bin/python bench/failover.py [--rounds 20] [--fallback google|local]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.engines.base import Engine, StreamConfig  # noqa: E402
from ingest.engines.chain import ChainPolicy, EngineChain  # noqa: E402
from ingest.engines.deepgram import DeepgramEngine, DeepgramOptions  # noqa: E402
from ingest.engines.google import GoogleEngine, GoogleOptions  # noqa: E402
from tests.engines.fake_deepgram import FakeDeepgram  # noqa: E402
from tests.engines.fake_google import FakeGoogle  # noqa: E402
from tests.engines.toy_asr import tone_words  # noqa: E402

CONFIG = StreamConfig(16000, 1, "en")
FRAME = 640  # 20 ms


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drain(stream) -> None:  # type: ignore[no-untyped-def]
    async for _ in stream.events():
        pass


async def one_failover(chain: EngineChain, fake: FakeDeepgram, audio: bytes) -> float:
    switched = asyncio.get_running_loop().create_future()
    sessions = len(fake.sessions)
    stream = await chain.open(
        CONFIG, on_switch=lambda *_: switched.done() or switched.set_result(time.monotonic())
    )
    consumer = asyncio.create_task(drain(stream))
    for offset in range(0, len(audio), FRAME):
        await stream.send(audio[offset : offset + FRAME])
    switched_at = await asyncio.wait_for(switched, 30)
    died = fake.sessions[sessions].ended_at
    assert died is not None
    await stream.close()
    await consumer
    return max(0.0, switched_at - died)


async def one_open(engine: Engine) -> float:
    started = time.monotonic()
    stream = await engine.open(CONFIG)
    elapsed = time.monotonic() - started
    await stream.close()
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--fallback", choices=["google", "local"], default="google")
    parser.add_argument("--die-after-s", type=float, default=1.0)
    args = parser.parse_args()

    deepgram_fake = await FakeDeepgram(api_key="bench").start()
    google_fake = await FakeGoogle().start()
    fallback: Engine
    if args.fallback == "local":
        from ingest.engines.local.engine import LocalEngine

        fallback = LocalEngine(workers=1)
        await fallback.warm_up()
    else:
        fallback = GoogleEngine(
            GoogleOptions(endpoint=google_fake.endpoint, insecure=True, rotate_s=240)
        )
    primary = DeepgramEngine("bench", DeepgramOptions(url=deepgram_fake.url))
    # A breaker that never opens: every round starts on the primary.
    chain = EngineChain([primary, fallback], ChainPolicy(breaker_failures=10**6))
    deepgram_fake.die_after_bytes = int(args.die_after_s * 16000) * 2
    audio = tone_words(list(range(1, 9)), gap_ms=50) * 2

    baseline = [await one_open(fallback) for _ in range(args.rounds)]
    failover = [await one_failover(chain, deepgram_fake, audio) for _ in range(args.rounds)]
    await chain.aclose()
    await deepgram_fake.stop()
    await google_fake.stop()

    base_p50, fail_p50 = statistics.median(baseline), statistics.median(failover)
    fail_p95 = percentile(failover, 0.95)
    print(f"rounds: {args.rounds}, fallback: {args.fallback}")
    print(f"baseline open on the fallback: p50 {base_p50 * 1000:.1f} ms")
    print(
        f"failover (death -> switch):    p50 {fail_p50 * 1000:.1f} ms, p95 {fail_p95 * 1000:.1f} ms"
    )
    print(f"ratio failover/baseline (p50): {fail_p50 / max(base_p50, 1e-6):.1f}x")
    print(f"p95 under the 2 s target: {'yes' if fail_p95 < 2.0 else 'NO'}")


if __name__ == "__main__":
    asyncio.run(main())
