#!/usr/bin/env python3
"""Search latency and export throughput of the transcript store, each against a plain SELECT of
the same rows in the same run.

Loads a store of `--meetings` meetings x `--finals` finals of generated English and Turkish
sentences (PostgreSQL by default, in a database of its own that is dropped afterwards; SQLite
with `--sqlite`), then prints:
- search: p50/p99 of `GET /api/v1/search`'s query (ranked, filtered by tenant, 20 hits) for
  common, rare, phrase and prefix queries, against a plain `SELECT ... WHERE id IN (...)` of the
  rows it returned; target p99 under 50 ms on PostgreSQL;
- export: a 6-hour meeting's SRT streamed in batches as the transcript route does, in finals/s
  and peak Python memory, against one SELECT of all its rows; and the same export of a 1-hour
  meeting, to show memory does not grow with the meeting's length.

Usage: .venv/bin/python bench/store.py [--meetings 10000] [--finals 200] [--sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select, tuple_  # noqa: E402

from store.base import FinalSegment  # noqa: E402
from store.catalog_sql import SqlMeetingCatalog  # noqa: E402
from store.exports import stream  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from store.search import parse_query  # noqa: E402
from store.sql import SqlTranscriptStore  # noqa: E402
from store.tables import meetings as meetings_table  # noqa: E402
from store.tables import segments  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TENANT = "bench"
WORDS = (
    "the we our team budget review meeting project deadline customer release plan quarter "
    "report numbers sales growth decision action item owner friday monday thursday office "
    "launch design server database latency cost hiring roadmap risk feature bug test deploy "
    "bütçe toplantı karar proje müşteri rapor hafta cuma pazartesi ofis satış büyüme sunucu "
    "istanbul ırmak şirket ekip yarın bugün hedef plan sonuç öneri"
).split()
RARE = ["zephyr", "quokka", "xylophone", "obelisk", "ığdır", "çınaraltı"]
QUERIES = [
    "budget",
    "decision friday",
    '"budget review"',
    "deadl*",
    "toplantı",
    "istanbul",
    "zephyr",
    "quokka obelisk",
    '"action item" owner',
    "karar*",
]


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 20))]
    if rng.random() < 0.002:
        words.insert(rng.randrange(len(words)), rng.choice(RARE))
    return " ".join(words).capitalize() + "."


async def create_pg_database() -> tuple[str, str]:
    import asyncpg

    name = f"mg_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def drop_pg_database(name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def load(store: SqlTranscriptStore, meetings: int, finals: int, long_finals: int) -> None:
    """Bulk rows straight into the tables (the bench measures reads, not the write path)."""
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    meeting_rows: list[dict[str, object]] = []
    batch: list[dict[str, object]] = []

    async def flush() -> None:
        async with store.engine.begin() as conn:
            if meeting_rows:
                await conn.execute(meetings_table.insert(), meeting_rows)
                meeting_rows.clear()
            if batch:
                await conn.execute(segments.insert(), batch)
                batch.clear()

    plan = [(f"m{n:05d}", finals) for n in range(meetings)]
    plan += [("six-hours", long_finals), ("one-hour", long_finals // 6)]
    for index, (meeting_id, count) in enumerate(plan):
        created = start + timedelta(minutes=index)
        meeting_rows.append(
            {
                "tenant_id": TENANT,
                "meeting_id": meeting_id,
                "created_at": created,
                "last_segment_no": count,
            }
        )
        step_ms = 6 * 3600 * 1000 // max(long_finals, 1)
        for no in range(1, count + 1):
            batch.append(
                {
                    "tenant_id": TENANT,
                    "meeting_id": meeting_id,
                    "segment_no": no,
                    "text": sentence(rng),
                    "start_ms": no * step_ms,
                    "end_ms": no * step_ms + step_ms - 200,
                    "speaker": f"Speaker {rng.randint(1, 4)}",
                    "confidence": 0.9,
                    "source": "mic",
                    "stream_id": None,
                    "stream_seq": None,
                    "created_at": created + timedelta(seconds=no),
                }
            )
        if len(batch) >= 20_000:
            await flush()
        if index and index % 1000 == 0:
            print(f"  loaded {index} meetings", flush=True)
    await flush()
    if store.engine.dialect.name == "postgresql":
        # Statistics, as autovacuum would gather them (committed: they are transactional).
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


async def bench_search(store: SqlTranscriptStore, rounds: int) -> None:
    catalog = SqlMeetingCatalog(store.engine)
    searched: list[float] = []
    plain: list[float] = []
    by_query: dict[str, list[float]] = {q: [] for q in QUERIES}
    # One round first, not measured: the pool's connection and its prepared statements, as a
    # running gateway has them.
    for q in QUERIES:
        await catalog.search(TENANT, parse_query(q), limit=21)
    for _ in range(rounds):
        for q in QUERIES:
            terms = parse_query(q)
            started = time.perf_counter()
            hits = await catalog.search(TENANT, terms, limit=21)
            searched.append(time.perf_counter() - started)
            by_query[q].append(searched[-1])
            ids = [(h.meeting_id, h.segment_no) for h in hits] or [("m00000", 1)]
            started = time.perf_counter()
            async with store.engine.connect() as conn:
                await conn.execute(
                    select(segments.c.text).where(
                        segments.c.tenant_id == TENANT,
                        tuple_(segments.c.meeting_id, segments.c.segment_no).in_(ids),
                    )
                )
            plain.append(time.perf_counter() - started)
    p50, p99 = percentile(searched, 0.5), percentile(searched, 0.99)
    b50, b99 = percentile(plain, 0.5), percentile(plain, 0.99)
    print(f"search ({len(searched)} queries)   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    print(f"plain SELECT of those rows      p50 {b50:7.2f} ms   p99 {b99:7.2f} ms")
    print(f"ratio                           p50 x{p50 / b50:.1f}   p99 x{p99 / b99:.1f}")
    for q, samples in by_query.items():
        print(
            f"  {q!r:24} p50 {percentile(samples, 0.5):7.2f} ms   "
            f"p99 {percentile(samples, 0.99):7.2f} ms   max {max(samples) * 1000:7.2f} ms"
        )


async def export_srt(store: SqlTranscriptStore, meeting_id: str) -> tuple[int, float, int]:
    """(bytes, seconds, peak Python bytes) of the route's streamed SRT."""

    async def batches() -> AsyncIterator[Sequence[FinalSegment]]:
        position = 0
        while batch := await store.finals_after(TENANT, meeting_id, position, limit=500):
            yield batch
            position = batch[-1].segment_no

    tracemalloc.start()
    started = time.perf_counter()
    size = 0
    async for part in stream("srt", meeting_id, batches()):
        size += len(part.encode())
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return size, elapsed, peak


async def bench_export(store: SqlTranscriptStore, long_finals: int) -> None:
    for meeting_id, count in (("one-hour", long_finals // 6), ("six-hours", long_finals)):
        size, elapsed, peak = await export_srt(store, meeting_id)
        print(
            f"SRT export, {meeting_id:<9} {count:6d} finals  {count / elapsed:9.0f} finals/s  "
            f"{size / 1e6:5.1f} MB  peak Python memory {peak / 1e6:5.1f} MB"
        )
    tracemalloc.start()
    started = time.perf_counter()
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(segments).where(
                    segments.c.tenant_id == TENANT, segments.c.meeting_id == "six-hours"
                )
            )
        ).all()
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(
        f"plain SELECT of the six-hour meeting  {len(rows) / elapsed:9.0f} rows/s  "
        f"peak Python memory {peak / 1e6:5.1f} MB"
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        database = None
        if args.sqlite:
            url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        else:
            database, url = await create_pg_database()
        try:
            await upgrade(url)
            store = SqlTranscriptStore(url)
            try:
                print(
                    f"loading {args.meetings} meetings x {args.finals} finals "
                    f"({store.engine.dialect.name})",
                    flush=True,
                )
                started = time.perf_counter()
                await load(store, args.meetings, args.finals, args.long_finals)
                print(f"loaded in {time.perf_counter() - started:.0f} s")
                await bench_search(store, args.rounds)
                await bench_export(store, args.long_finals)
            finally:
                await store.aclose()
        finally:
            if database is not None:
                await drop_pg_database(database)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meetings", type=int, default=10_000)
    parser.add_argument("--finals", type=int, default=200)
    # A six-hour meeting with a final every 5 s.
    parser.add_argument("--long-finals", type=int, default=4_320)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    asyncio.run(main(parser.parse_args()))
