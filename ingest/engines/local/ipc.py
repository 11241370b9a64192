"""What `LocalEngine` and its worker processes say to each other over a `multiprocessing.Pipe`.

The parent sends `(request_id, request)`; a request that wants an answer has an integer id and
gets exactly one `(request_id, events or Failed)` back. `Release` and `Stop` carry `None` and get
no answer. A worker handles its requests one at a time, in the order they arrive, so a stream's
answers come back in order too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.engines.base import EngineEvent, StreamConfig
from ingest.engines.local.recognizer import Tuning


@dataclass(frozen=True, slots=True)
class Open:
    """Create stream `sid`'s recognizer (with a pooled decoder if one is idle)."""

    sid: int
    config: StreamConfig
    tuning: Tuning


@dataclass(frozen=True, slots=True)
class Feed:
    sid: int
    pcm: bytes  # client PCM as received: the worker converts it


@dataclass(frozen=True, slots=True)
class Finalize:
    sid: int


@dataclass(frozen=True, slots=True)
class Close:
    """Flush everything; the recognizer stays until `Release`."""

    sid: int


@dataclass(frozen=True, slots=True)
class Release:
    """Drop stream `sid` (unknown ids are ignored); its decoder goes back to the pool."""

    sid: int


@dataclass(frozen=True, slots=True)
class Warm:
    """Create idle decoders until there are `decoders` (at most the pool's size)."""

    decoders: int


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Failed:
    message: str
    retryable: bool


Request = Open | Feed | Finalize | Close | Release | Warm | Stop
Envelope = tuple[int | None, Request]
Answer = tuple[int, list[EngineEvent] | Failed]
