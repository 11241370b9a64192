"""Decode -> chunk -> transcribe, in audio order, with bounded work in flight.

`recording_chunks` is the blocking chunk source for a file (from a checkpoint); `transcribe_chunks`
advances it on a worker thread (decoding and the VAD never run on the event loop), keeps up to
`concurrency` chunks at the engine at once, and yields each chunk with its segments strictly in
chunk order, so the caller can store finals and checkpoint at `chunk.end_ms` / `chunk.index + 1`
after each. Memory holds at most `concurrency` chunks plus the chunker's pending audio, whatever
the file's length. Damage mid-way (`DecodeError`) is raised after every chunk before it has been
yielded; cancelling the consumer cancels the chunks in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from ingest.files.base import AudioChunk, FileEngine, FileOptions, FileSegment
from ingest.files.chunking import chunk_stream
from ingest.files.decode import decode


def recording_chunks(
    path: Path, engine: FileEngine, *, start_ms: int = 0, first_index: int = 0
) -> Iterator[AudioChunk]:
    """The file's chunks for `engine` from a checkpoint (blocking: decodes as it goes)."""
    return chunk_stream(
        decode(path, start_ms=start_ms),
        chunk_seconds=engine.chunk_seconds,
        start_ms=start_ms,
        first_index=first_index,
    )


async def transcribe_chunks(
    chunks: Iterator[AudioChunk],
    engine: FileEngine,
    options: FileOptions,
    *,
    concurrency: int | None = None,
) -> AsyncIterator[tuple[AudioChunk, list[FileSegment]]]:
    """(chunk, segments) in chunk order; engine errors propagate as raised."""
    limit = max(1, concurrency or engine.max_concurrency)
    in_flight: deque[tuple[AudioChunk, asyncio.Task[list[FileSegment]]]] = deque()
    source_error: BaseException | None = None
    exhausted = False
    try:
        while True:
            while not exhausted and len(in_flight) < limit:
                try:
                    chunk = await asyncio.to_thread(next, chunks, None)
                except Exception as exc:  # damage: finish what came before, then raise it
                    source_error, exhausted = exc, True
                    break
                if chunk is None:
                    exhausted = True
                    break
                task = asyncio.create_task(engine.transcribe_chunk(chunk, options))
                in_flight.append((chunk, task))
            if not in_flight:
                break
            chunk, task = in_flight.popleft()
            yield chunk, await task
        if source_error is not None:
            raise source_error
    finally:
        for _, task in in_flight:
            task.cancel()
