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
        header = transcript_header(data)
        if header is not None:
            return cls(data, kind, segment_no=header[0], source=header[1])
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


_SEGMENT_NO_KEY = b'"segment_no":'
_SOURCE_KEY = b'"source":'


def transcript_header(data: bytes) -> tuple[int, str | None] | None:
    """(segment_no, source) of a transcript message as `TranscriptMessage.encode` writes it
    (compact JSON of flat fields, `segment_no` before `source`), read without decoding the rest:
    a room classifies every publish, and decoding its text cost more than the rest of the
    classification. None when the bytes are not in that shape; the caller then decodes them.

    A key found this way is a key: inside a JSON string every `"` is escaped, so `"source":`
    cannot occur there unescaped."""
    at = data.find(_SEGMENT_NO_KEY)
    if at < 0:
        return None
    start = at + len(_SEGMENT_NO_KEY)
    end = data.find(b",", start)
    digits = data[start:end]
    if end < 0 or not digits.isdigit() or len(digits) > 18:
        return None
    at = data.find(_SOURCE_KEY, end)
    if at < 0:
        return None
    start = at + len(_SOURCE_KEY)
    if data.startswith(b"null", start):
        return int(digits), None
    if not data.startswith(b'"', start):
        return None
    close = data.find(b'"', start + 1)
    value = data[start + 1 : close]
    if close < 0 or b"\\" in value or not value.isascii():
        return None  # an escape or a non-ASCII source: the decoder's job
    return int(digits), value.decode("ascii")


def _fields(data: bytes) -> dict[str, object]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
