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
from dataclasses import replace
from pathlib import Path

from ingest.files.base import AudioChunk, FileEngine, FileOptions, FileSegment
from ingest.files.chunking import chunk_channels, chunk_stream
from ingest.files.decode import Stop, decode


def recording_chunks(
    path: Path,
    engine: FileEngine,
    *,
    start_ms: int = 0,
    first_index: int = 0,
    separate_channels: bool = False,
    stop: Stop | None = None,
) -> Iterator[AudioChunk]:
    """The file's chunks for `engine` from a checkpoint (blocking: decodes as it goes).

    With `separate_channels`, each channel is transcribed apart (a stereo recording of two
    people, one per side, whose overlapping speech a mix would lose): one chunk per channel for
    each cut (`chunk_channels`); `transcribe_cuts` puts a cut's chunks back together. Decoding
    ends early, as if the file did, once `stop` is set."""
    if separate_channels:
        return chunk_channels(
            decode(path, start_ms=start_ms, split_channels=True, stop=stop),
            chunk_seconds=engine.chunk_seconds,
            start_ms=start_ms,
            first_index=first_index,
        )
    return chunk_stream(
        decode(path, start_ms=start_ms, stop=stop),
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


async def transcribe_cuts(
    chunks: Iterator[AudioChunk],
    engine: FileEngine,
    options: FileOptions,
    *,
    concurrency: int | None = None,
) -> AsyncIterator[tuple[list[AudioChunk], list[FileSegment]]]:
    """`transcribe_chunks`, with the chunks of one cut (one per channel transcribed apart, else
    just one) yielded together, their segments in time order; a channel's segments carry it as
    their speaker, `ch1`, `ch2`, ... as a live stereo stream's do."""
    cut: list[tuple[AudioChunk, list[FileSegment]]] = []
    results = transcribe_chunks(chunks, engine, options, concurrency=concurrency)
    async for chunk, segments in results:
        cut.append((chunk, segments))
        if len(cut) < chunk.channels:
            continue
        yield [c for c, _ in cut], merge_channels(cut)
        cut = []


def merge_channels(cut: list[tuple[AudioChunk, list[FileSegment]]]) -> list[FileSegment]:
    """One cut's segments in time order, each labelled with its channel when it has one."""
    if len(cut) == 1 and cut[0][0].channel is None:
        return cut[0][1]
    labelled = [
        (seg.start_ms, chunk.channel or 0, replace(seg, speaker=f"ch{(chunk.channel or 0) + 1}"))
        for chunk, segments in cut
        for seg in segments
    ]
    return [seg for *_, seg in sorted(labelled, key=lambda item: item[:2])]
