"""Gap-free numbering while several replicas append to one meeting at once."""

from __future__ import annotations

import asyncio
import sys

from store.base import NewFinal
from store.sql import SqlTranscriptStore

PER_WRITER = 50

# A replica in its own process: appends `n` finals concurrently, prints the numbers it got.
_WRITER = """
import asyncio, sys
from store.base import NewFinal
from store.sql import SqlTranscriptStore

async def main(url, n, tag):
    store = SqlTranscriptStore(url)
    try:
        got = await asyncio.gather(
            *(store.append_final("t1", "m1", NewFinal(f"{tag}{i}", 0, 1, "mic")) for i in range(n))
        )
    finally:
        await store.aclose()
    print(" ".join(str(f.segment_no) for f in got))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


async def _append_many(store: SqlTranscriptStore, tag: str) -> list[int]:
    finals = await asyncio.gather(
        *(
            store.append_final("t1", "m1", NewFinal(f"{tag}{i}", i, i + 1, "mic"))
            for i in range(PER_WRITER)
        )
    )
    return [f.segment_no for f in finals]


async def _assert_gap_free(store: SqlTranscriptStore, total: int, tags: set[str]) -> None:
    stored = await store.finals_after("t1", "m1")
    assert [f.segment_no for f in stored] == list(range(1, total + 1))
    assert {f.text.rstrip("0123456789") for f in stored} == tags
    assert await store.last_segment_no("t1", "m1") == total


async def test_two_replicas_number_gap_free(migrated_url: str) -> None:
    # Separate engines (own pools and connections), as two gateway replicas would have.
    a, b = SqlTranscriptStore(migrated_url), SqlTranscriptStore(migrated_url)
    try:
        got_a, got_b = await asyncio.gather(_append_many(a, "a"), _append_many(b, "b"))
        assert sorted(got_a + got_b) == list(range(1, 2 * PER_WRITER + 1))
        await _assert_gap_free(a, 2 * PER_WRITER, {"a", "b"})
    finally:
        await a.aclose()
        await b.aclose()


async def test_two_processes_number_gap_free(migrated_url: str) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WRITER,
            migrated_url,
            str(PER_WRITER),
            tag,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for tag in ("p", "q")
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    numbers = [int(n) for out, _ in outputs for n in out.split()]
    assert sorted(numbers) == list(range(1, 2 * PER_WRITER + 1))

    store = SqlTranscriptStore(migrated_url)
    try:
        await _assert_gap_free(store, 2 * PER_WRITER, {"p", "q"})
    finally:
        await store.aclose()
