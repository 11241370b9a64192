"""Progress within a chunk, for engines whose vendor reports it (Google's `progress_percent`).

An engine that can report takes `progress=` in `transcribe_chunk` (a callable given the fraction
of that chunk done, 0..1) and says so with `reports_progress = True`. A caller that does not pass
one (the pipeline's `transcribe_chunks` calls `transcribe_chunk(chunk, options)`) can instead
set `CHUNK_PROGRESS` around the whole job: tasks copy the context they are created in, so every
chunk the job starts reports to it as `sink(chunk, fraction)`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from ingest.files.base import AudioChunk

ChunkProgressSink = Callable[[AudioChunk, float], None]

CHUNK_PROGRESS: ContextVar[ChunkProgressSink | None] = ContextVar("chunk_progress", default=None)
