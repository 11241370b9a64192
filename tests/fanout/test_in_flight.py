"""What a publish changes in a meeting's in-flight partials, with plain values."""

from __future__ import annotations

from fanout.in_flight import InFlightChange, in_flight_change
from fanout.topics import status_topic, transcript_topic

TOPIC = transcript_topic("t1", "m1")
PARTIAL = b'{"type":"transcript.partial","segment_no":3,"source":"mic","text":"hel"}'


def test_a_partial_becomes_its_sources_in_flight_one() -> None:
    assert in_flight_change(TOPIC, PARTIAL) == InFlightChange(TOPIC, "mic", PARTIAL)


def test_a_final_or_its_streams_end_drops_it() -> None:
    final = b'{"type":"transcript.final","segment_no":3,"source":"mic","text":"hello"}'
    assert in_flight_change(TOPIC, final) == InFlightChange(TOPIC, "mic", None)
    ended = b'{"type":"status","event":"stream.ended","source":"system","stream_id":"s1"}'
    assert in_flight_change(status_topic("t1", "m1"), ended) == InFlightChange(
        TOPIC, "system", None
    )


def test_other_messages_change_nothing() -> None:
    started = b'{"type":"status","event":"stream.started","source":"mic","stream_id":"s1"}'
    assert in_flight_change(status_topic("t1", "m1"), started) is None
    assert in_flight_change(TOPIC, b'{"type":"ai.tip","tip_no":1}') is None
    assert in_flight_change(TOPIC, b"not json") is None
    assert in_flight_change("control", PARTIAL) is None
    # A partial without a source is kept under "".
    unsourced = b'{"type":"transcript.partial","segment_no":1,"text":"x"}'
    assert in_flight_change(TOPIC, unsourced) == InFlightChange(TOPIC, "", unsourced)
