"""A published message as delivery sees it: its bytes, what kind it is, and its frame.

The bus carries encoded JSON; a room classifies each message once per publish (not per viewer)
so queues can coalesce partials and drop duplicate finals without parsing again, and the
WebSocket frame is built at most once, however many viewers receive it.
"""

from __future__ import annotations

import json
from enum import Enum

from fanout.frames import text_frame


class Kind(Enum):
    PARTIAL = "partial"  # a transcript.partial with an integer segment_no (coalescible)
    FINAL = "final"  # a transcript.final with an integer segment_no
    STREAM_ENDED = "stream.ended"  # a status message: the source's stream is over
    OTHER = "other"  # status, pong, error, or anything unrecognised: delivered as is


_PARTIAL_PREFIX = b'{"type":"transcript.partial"'
_FINAL_PREFIX = b'{"type":"transcript.final"'
_STATUS_PREFIX = b'{"type":"status"'


class Publication:
    __slots__ = ("_frame", "data", "kind", "segment_no", "source")

    def __init__(
        self,
        data: bytes,
        kind: Kind = Kind.OTHER,
        *,
        segment_no: int | None = None,
        source: str | None = None,
    ) -> None:
        self.data = data
        self.kind = kind
        self.segment_no = segment_no
        self.source = source
        self._frame: bytes | None = None

    @classmethod
    def parse(cls, data: bytes) -> Publication:
        """Classify encoded envelope bytes; only transcript and status messages are parsed."""
        if data.startswith(_PARTIAL_PREFIX):
            kind = Kind.PARTIAL
        elif data.startswith(_FINAL_PREFIX):
            kind = Kind.FINAL
        elif data.startswith(_STATUS_PREFIX):
            fields = _fields(data)
            if fields.get("event") == "stream.ended":
                return cls(data, Kind.STREAM_ENDED, source=_text(fields.get("source")))
            return cls(data)
        else:
            return cls(data)
        fields = _fields(data)
        segment_no = fields.get("segment_no")
        if not isinstance(segment_no, int) or isinstance(segment_no, bool):
            return cls(data)  # not a numbered segment: nothing to coalesce or dedupe
        return cls(data, kind, segment_no=segment_no, source=_text(fields.get("source")))

    @property
    def frame(self) -> bytes:
        """The WebSocket text frame, built on first use and shared by every viewer."""
        frame = self._frame
        if frame is None:
            frame = self._frame = text_frame(self.data)
        return frame

    def __repr__(self) -> str:
        return f"Publication({self.kind.value}, segment_no={self.segment_no}, {len(self.data)} B)"


def _fields(data: bytes) -> dict[str, object]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
