"""What a publish changes in a meeting's in-flight partials, as a bus keeps them. Pure.

A room keeps each source's latest partial so a viewer joining mid-sentence sees it, but a room
created after that partial went out (the meeting's first viewer on a process) never saw it. So
the bus keeps the latest partial of each source of each transcript topic too, until that
source's final or the end of its stream, and a new room starts from them (`Bus.partials`).
Any final of the source drops its partial, a re-published older one too: the bus cannot compare
numbers inside a Redis transaction, and the source's next partial (a fraction of a second later
while someone speaks) brings it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from fanout.publication import Kind, Publication
from fanout.topics import is_status_topic, is_transcript_topic, transcript_of

# How long a partial is kept without a newer one, final or end of stream (a crashed stream's
# last partial is not shown to viewers joining later).
PARTIAL_TTL_MS = 60_000


@dataclass(frozen=True, slots=True)
class InFlightChange:
    topic: str  # the transcript topic whose partials change
    source: str  # "" for a message without a source
    partial: bytes | None  # the source's partial from now on; None: it has none


def in_flight_change(topic: str, data: bytes) -> InFlightChange | None:
    """The change publishing `data` on `topic` makes, or None (most status messages)."""
    if is_transcript_topic(topic):
        pub = Publication.parse(data)
        if pub.kind is Kind.PARTIAL:
            return InFlightChange(topic, pub.source or "", data)
        if pub.kind is Kind.FINAL:
            return InFlightChange(topic, pub.source or "", None)
        return None
    if is_status_topic(topic):
        pub = Publication.parse(data)
        if pub.kind is Kind.STREAM_ENDED:
            return InFlightChange(transcript_of(topic), pub.source or "", None)
    return None
