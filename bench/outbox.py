#!/usr/bin/env python3
"""Measure what the durable outbox costs a final, against writing it straight to the store.

- baseline: `store_numbered_final` alone (what storing a final costs anyway);
- outbox: append to the outbox (fsync'd SQLite) and wait until the writer has stored it: the
  delay a final sees before it is published while the database is up;
- append only: the part a final waits for while the database is down.

Prints medians and p99 in milliseconds and the ratios against the baseline measured in the same
run, on SQLite by default or on `--database-url` (e.g. a PostgreSQL URL, migrated).

Usage: .venv/bin/python bench/outbox.py [--finals N] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from store.base import NewFinal  # noqa: E402
from store.migrate import open_store  # noqa: E402
from store.outbox import FinalOutbox, OutboxEntry, OutboxWriter  # noqa: E402


def final(n: int, stream: str) -> NewFinal:
    return NewFinal(f"final {n}", n * 1000, n * 1000 + 900, "mic", stream_id=stream, stream_seq=n)


def summary(name: str, samples: list[float], baseline: float | None = None) -> str:
    ordered = sorted(samples)
    median = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    ratio = f"  x{median / baseline:.2f} of baseline" if baseline else ""
    return f"{name:<28} median {median:7.2f} ms   p99 {p99:7.2f} ms{ratio}"


async def main(finals: int, database_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
        store = await open_store(url)
        outbox = FinalOutbox(Path(tmp) / "outbox", url)
        writer = OutboxWriter(outbox, store)
        writer.start()
        at = datetime.now(UTC)
        try:
            direct: list[float] = []
            for n in range(1, finals + 1):
                started = time.perf_counter()
                await store.store_numbered_final("bench", "direct", n, final(n, "d"), at)
                direct.append(time.perf_counter() - started)

            through: list[float] = []
            appends: list[float] = []
            for n in range(1, finals + 1):
                entry = OutboxEntry("bench", "outbox", n, final(n, "o"), at, time.time())
                started = time.perf_counter()
                entry_id = await outbox.append(entry)
                appends.append(time.perf_counter() - started)
                assert await writer.wait_written(entry_id, 30)
                through.append(time.perf_counter() - started)
        finally:
            await writer.aclose()
            await outbox.aclose()
            await store.aclose()
    base = statistics.median(direct) * 1000
    print(f"{finals} finals on {url.split(':', 1)[0]}")
    print(summary("store only (baseline)", direct))
    print(summary("outbox append + store", through, base))
    print(summary("outbox append only", appends, base))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finals", type=int, default=300)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.finals, args.database_url))
