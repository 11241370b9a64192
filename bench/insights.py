#!/usr/bin/env python3
"""CPU the live tips worker adds per active meeting, with the offline rules backend.

Runs the same load twice in one process, on the gateway's own pieces (an in-process bus, an
SQLite store, the live tips worker with the rules backend): `--meetings` meetings, each storing
and publishing a final every `--final-every` seconds (lines of a meeting transcript with
decisions, action items and questions among small talk) for `--seconds`. First without the
worker (the baseline: finals stored and published, nothing follows them), then with it following
every meeting (`INSIGHTS_MIN_INTERVAL_S` = `--interval`). Prints both runs' process CPU, the
difference per meeting as a share of one core (target: under 1 %), and the tips published.

Usage: .venv/bin/python bench/insights.py [--meetings 50] [--seconds 60] [--final-every 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fanout.bus_memory import InProcessBus  # noqa: E402
from fanout.coordinator_local import LocalCoordinator  # noqa: E402
from fanout.topics import transcript_topic  # noqa: E402
from gateway.observability.metrics import Metrics  # noqa: E402
from gateway.pipeline.live_tips import LiveTips  # noqa: E402
from gateway.pipeline.stored_finals import final_message  # noqa: E402
from ingest.insights.rules import RulesInsights  # noqa: E402
from store.base import NewFinal  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from store.sql import SqlTranscriptStore  # noqa: E402
from store.tips import TipStore  # noqa: E402

TENANT = "bench"
LINES = (
    "Good morning everyone, thanks for joining.",
    "Let's start with the quarterly numbers from the sales team.",
    "The numbers came in a little below the forecast this quarter.",
    "We decided to move the product launch to Friday.",
    "John will send the updated numbers by Thursday.",
    "Should we invite the finance team to the budget review?",
    "I think the customer feedback was mostly positive.",
    "Can you share the slides after the call?",
    "The release plan stays the same for next month.",
    "Ayşe will prepare the hiring plan by next week.",
    "Bütçe toplantısını cuma gününe erteledik, karar verdik.",
    "Nice weather today, by the way.",
)


async def run(meetings: int, seconds: float, final_every: float, tips_on: bool, interval: float):
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        await upgrade(url)
        store = SqlTranscriptStore(url)
        bus = InProcessBus()
        await bus.start()
        metrics = Metrics()
        worker = LiveTips(
            bus=bus,
            coordinator=LocalCoordinator(),
            store=store,
            tips=TipStore(store.engine),
            rules=RulesInsights(),
            configured=RulesInsights(),
            mode="handshake",
            min_interval_s=interval,
            call_timeout_s=30,
            max_calls=4,
            holder="bench",
            metrics=metrics,
        )
        ids = [f"m{i}" for i in range(meetings)]
        if tips_on:
            worker.start()
            for meeting in ids:
                worker.want(TENANT, meeting, "standard")

        async def speak(index: int, meeting: str) -> None:
            await asyncio.sleep(final_every * index / meetings)  # spread the meetings out
            n = 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                text = LINES[(n + index) % len(LINES)]
                final = NewFinal(text, n * 3000, n * 3000 + 2500, "mic")
                stored = await store.append_final(TENANT, meeting, final)
                await bus.publish(transcript_topic(TENANT, meeting), final_message(meeting, stored))
                n += 1
                await asyncio.sleep(final_every)

        cpu = time.process_time()
        await asyncio.gather(*(speak(i, m) for i, m in enumerate(ids)))
        if tips_on:
            await asyncio.sleep(interval + 1)  # the trailing runs
        used = time.process_time() - cpu
        published = sum(
            sample.value
            for family in metrics.registry.collect()
            if family.name.endswith("tips_published")
            for sample in family.samples
            if sample.name.endswith("_total")
        )
        await worker.aclose()
        await bus.aclose()
        await store.aclose()
        return used, published


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meetings", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--final-every", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=30.0)
    args = parser.parse_args()
    load = (args.meetings, args.seconds, args.final_every)
    base_cpu, _ = await run(*load, tips_on=False, interval=args.interval)
    tips_cpu, tips = await run(*load, tips_on=True, interval=args.interval)
    wall = args.seconds
    added = max(tips_cpu - base_cpu, 0.0)
    print(f"{args.meetings} meetings, a final every {args.final_every:g} s each, {wall:g} s")
    print(f"baseline (finals stored and published): {base_cpu:.2f} s CPU")
    print(f"with live tips (rules, one tip per {args.interval:g} s at most): {tips_cpu:.2f} s CPU")
    print(f"tips published: {tips:.0f}")
    share = added / wall / args.meetings * 100
    print(f"added CPU per active meeting: {share:.3f} % of one core (target < 1 %)")
    print(f"ratio to the baseline: {tips_cpu / base_cpu:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
