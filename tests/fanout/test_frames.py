from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from fanout.frames import text_frame
from fanout.publication import Kind, Publication


@pytest.mark.parametrize("size", [0, 1, 125, 126, 300, 65535, 65536, 200_000])
def test_text_frame_matches_what_websockets_serialises(size: int) -> None:
    payload = b"x" * size
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


def test_text_frame_of_utf8() -> None:
    payload = '{"text":"grüße 🎤"}'.encode()
    frame = text_frame(payload)
    assert frame[0] == 0x81 and frame[1] == len(payload) and frame[2:] == payload


def test_publication_frame_is_built_once() -> None:
    pub = Publication(b'{"type":"pong"}')
    assert pub.frame is pub.frame
    assert pub.frame == text_frame(b'{"type":"pong"}')


@pytest.mark.parametrize(
    "data,kind,segment_no,source",
    [
        (b'{"type":"transcript.partial","segment_no":3,"source":"mic"}', Kind.PARTIAL, 3, "mic"),
        (b'{"type":"transcript.final","segment_no":4,"source":null}', Kind.FINAL, 4, None),
        (
            b'{"type":"status","event":"stream.ended","source":"mic"}',
            Kind.STREAM_ENDED,
            None,
            "mic",
        ),
        (b'{"type":"status","event":"stream.started","source":"mic"}', Kind.OTHER, None, None),
        # Unnumbered or malformed transcript messages are delivered as they are, never coalesced.
        (b'{"type":"transcript.partial","text":"x"}', Kind.OTHER, None, None),
        (b'{"type":"transcript.final","segment_no":"7"}', Kind.OTHER, None, None),
        (b'{"type":"transcript.final","segment_no":true}', Kind.OTHER, None, None),
        (b'{"type":"transcript.partial", broken', Kind.OTHER, None, None),
        (b'{"type":"pong"}', Kind.OTHER, None, None),
        (b"not json", Kind.OTHER, None, None),
    ],
)
def test_publications_are_classified(
    data: bytes, kind: Kind, segment_no: int | None, source: str | None
) -> None:
    pub = Publication.parse(data)
    assert (pub.kind, pub.segment_no, pub.source) == (kind, segment_no, source)
    assert pub.data is data
