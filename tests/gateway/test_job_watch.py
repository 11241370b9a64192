"""`JobWatch`: the event streams of one job share one poll of its row."""

from __future__ import annotations

import asyncio

from gateway.http.job_watch import JobWatch


async def test_streams_of_one_job_share_one_poll() -> None:
    reads: list[str] = []

    async def fetch(job_id: str) -> dict:
        reads.append(job_id)
        return {"job": job_id, "read": len(reads)}

    watch = JobWatch(fetch, interval_s=0.01)

    async def stream(job_id: str) -> list[int]:
        seen, version = [], 0
        async with watch.watch(job_id) as job:
            for _ in range(3):
                version, row = await job.after(version)
                seen.append(row["read"])
        return seen

    seen = await asyncio.gather(*[stream("j1") for _ in range(50)], stream("j2"))
    # Fifty streams of j1 read it as often as the one stream of j2 reads j2, not fifty times.
    assert reads.count("j1") <= reads.count("j2") + 1, reads
    assert all(s == sorted(set(s)) for s in seen)  # each poll seen once, in order
    assert watch.watched() == 0  # the last stream out stops the poll


async def test_a_failed_read_ends_every_stream_and_the_next_starts_afresh() -> None:
    failing = True

    async def fetch(job_id: str) -> dict:
        if failing:
            raise ConnectionError("database gone")
        return {"job": job_id}

    watch = JobWatch(fetch, interval_s=0.01)

    async def stream() -> dict | None:
        async with watch.watch("j1") as job:
            return (await job.after(0))[1]

    results = await asyncio.gather(stream(), stream(), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    failing = False
    assert await stream() == {"job": "j1"}


async def test_a_job_gone_reads_as_none() -> None:
    async def fetch(job_id: str) -> None:
        return None

    async with JobWatch(fetch, interval_s=0.01).watch("j1") as job:
        assert await job.after(0) == (1, None)


async def test_a_stream_joining_late_waits_for_a_poll_after_it_joined() -> None:
    reads = 0

    async def fetch(job_id: str) -> int:
        nonlocal reads
        reads += 1
        return reads

    watch = JobWatch(fetch, interval_s=0.01)
    async with watch.watch("j1") as first:
        version, _ = await first.after(0)
        version, _ = await first.after(version)
        async with watch.watch("j1") as late:
            joined = late.version
            _, row = await late.after(joined)
            assert row > joined  # a poll made after it joined, not an older row
