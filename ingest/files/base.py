"""The file-transcription interface every engine offers beside its live `open()`.

A recording is decoded once (PyAV, frame by frame) to 16 kHz mono float32 and cut at pauses into
`AudioChunk`s; the job runner hands each chunk to a `FileEngine` and stores the resulting
`FileSegment`s as finals, checkpointing per chunk. An engine that would rather see the original
file whole (Deepgram's pre-recorded API) says so with `whole_file`; the runner then calls
`transcribe_file` once and treats the file as a single chunk.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.segments import PendingFinal

SAMPLE_RATE = 16_000  # what every chunk carries: mono float32 in [-1, 1]
# Less detected speech than this cannot hold a word (the live engine's gate: a 0.46 s click
# with about 200 ms of "speech" decoded as "thank you").
MIN_SPEECH_MS = 250


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A stretch of the recording, cut at a pause, with its offset from the file's start."""

    index: int
    start_ms: int
    samples: np.ndarray  # float32, mono, SAMPLE_RATE
    channel: int | None = None  # which channel, when a file's channels are transcribed apart
    channels: int = 1  # chunks cut at this instant: one per channel transcribed apart
    # Speech the chunker's voice detector found in it (None: not measured, treat as speech).
    speech_ms: int | None = None

    @property
    def end_ms(self) -> int:
        return self.start_ms + len(self.samples) * 1000 // SAMPLE_RATE

    @property
    def silent(self) -> bool:
        """Too little speech to hold a word: engines return no segments without decoding it
        (Whisper invents text in silence); the runner still checkpoints past it."""
        return self.speech_ms is not None and self.speech_ms < MIN_SPEECH_MS


# One final from a file, with audio-time offsets from the file's start: a live final's shape.
FileSegment = PendingFinal


@dataclass(frozen=True, slots=True)
class FileOptions:
    language: str  # "en", "tr", ... or "auto"
    diarize: bool = True
    # The job's id: lets an engine keep per-job state across chunks (the local engine reuses
    # the language it detected on earlier chunks for "auto" when a chunk holds little speech).
    job: str | None = None


class FileEngine(abc.ABC):
    """Transcribes recordings; one instance serves many jobs concurrently."""

    name: str
    # Preferred chunk length in seconds (the runner cuts at the pause nearest below it).
    chunk_seconds: float = 30.0
    # Chunks of one job in flight at once.
    max_concurrency: int = 1
    can_diarize: bool = False
    whole_file: bool = False

    @abc.abstractmethod
    def supported_languages(self) -> frozenset[str]: ...

    def supports(self, language: str) -> bool:
        return language in self.supported_languages()

    @abc.abstractmethod
    async def transcribe_chunk(self, chunk: AudioChunk, options: FileOptions) -> list[FileSegment]:
        """Segments of one chunk, offsets already shifted by `chunk.start_ms`.

        Raises `ingest.engines.base.EngineError` (retryable or not) on failure.
        """

    def accepts_file_bytes(self, size: int) -> bool:
        """Whether a file this big can go whole (engines with `whole_file`; else chunks)."""
        return self.whole_file

    async def transcribe_file(self, path: Path, options: FileOptions) -> list[FileSegment]:
        """The whole original file at once (only engines with `whole_file`)."""
        raise NotImplementedError

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and pools."""
