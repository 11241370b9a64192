"""A meeting's topics are built and split back with plain values."""

from __future__ import annotations

from fanout.topics import (
    is_status_topic,
    is_transcript_topic,
    parse_status_topic,
    parse_transcript_topic,
    status_topic,
    transcript_of,
    transcript_topic,
)


def test_topics_round_trip() -> None:
    transcript, status = transcript_topic("t1", "m1"), status_topic("t1", "m1")
    assert (transcript, status) == ("meeting:t1:m1:transcript", "meeting:t1:m1:status")
    assert parse_transcript_topic(transcript) == ("t1", "m1")
    assert parse_status_topic(status) == ("t1", "m1")
    assert transcript_of(status) == transcript
    assert is_transcript_topic(transcript) and not is_transcript_topic(status)
    assert is_status_topic(status) and not is_status_topic(transcript)


def test_other_topics_parse_to_none() -> None:
    for topic in ("meeting:t1:m1:status", "meeting:t1:transcript", "room:t1:m1:transcript", ""):
        assert parse_transcript_topic(topic) is None
    assert parse_status_topic("meeting:t1:m1:transcript") is None
