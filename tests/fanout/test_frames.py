from __future__ import annotations

import json
import random

import pytest
from websockets.frames import Frame, Opcode

from fanout.frames import text_frame
from fanout.messages import TranscriptMessage
from fanout.publication import Kind, Publication, transcript_header


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


def test_the_transcript_header_is_read_as_a_decoder_reads_it() -> None:
    """The fast path agrees with `json.loads` on whatever the encoder writes (texts holding
    quotes, backslashes, keys, non-ASCII), or defers to it."""
    rng = random.Random(17)
    pieces = ['"', "\\", '"source":"x"', '"segment_no":9,', "ş İ 🎤", ",", "null", " ", "a"]
    sources = ["mic", "system", None, 'mi"c', "mik\\", "oda-ş", ""]
    fast = 0
    for n in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        message = TranscriptMessage(
            type=rng.choice(["transcript.partial", "transcript.final"]),
            meeting_id=rng.choice(["m1", 'm"1', "m\\1"]),
            segment_no=rng.randint(0, 10**12),
            text=text,
            start_ms=n,
            end_ms=n + 1,
            speaker=rng.choice([None, "Speaker 1", '"source":"y"']),
            source=rng.choice(sources),
        ).encode()
        decoded = json.loads(message)
        header = transcript_header(message)
        if header is not None:
            fast += 1
            assert header == (decoded["segment_no"], decoded["source"]), message
        pub = Publication.parse(message)
        assert (pub.segment_no, pub.source) == (decoded["segment_no"], decoded["source"])
    assert fast > 1000  # plain sources (4 of the 7) take the fast path


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"transcript.final","segment_no":null,"source":"mic"}',
        b'{"type":"transcript.final","segment_no":-1,"source":"mic"}',
        b'{"type":"transcript.final","segment_no":4}',
        b'{"type":"transcript.final","segment_no":4,"source":7}',
        b'{"type":"transcript.final","segment_no":4,"source":"unterminated',
    ],
)
def test_other_shapes_are_left_to_the_decoder(data: bytes) -> None:
    assert transcript_header(data) is None
