"""A meeting's bus topics: `meeting:<tenant>:<meeting>:transcript` and `...:status`.

Ids hold no ':' (gateway.ids), so a topic splits back into its parts.
"""

from __future__ import annotations

_PREFIX = "meeting"
TRANSCRIPT = "transcript"
STATUS = "status"


def transcript_topic(tenant_id: str, meeting_id: str) -> str:
    return f"{_PREFIX}:{tenant_id}:{meeting_id}:{TRANSCRIPT}"


def status_topic(tenant_id: str, meeting_id: str) -> str:
    return f"{_PREFIX}:{tenant_id}:{meeting_id}:{STATUS}"


def _parse(topic: str, kind: str) -> tuple[str, str] | None:
    parts = topic.split(":")
    if len(parts) == 4 and parts[0] == _PREFIX and parts[3] == kind:
        return parts[1], parts[2]
    return None


def parse_transcript_topic(topic: str) -> tuple[str, str] | None:
    """(tenant_id, meeting_id) of a transcript topic; None for any other topic."""
    return _parse(topic, TRANSCRIPT)


def parse_status_topic(topic: str) -> tuple[str, str] | None:
    """(tenant_id, meeting_id) of a status topic; None for any other topic."""
    return _parse(topic, STATUS)


def is_transcript_topic(topic: str) -> bool:
    return topic.endswith(":" + TRANSCRIPT)


def is_status_topic(topic: str) -> bool:
    return topic.endswith(":" + STATUS)


def transcript_of(status: str) -> str:
    """The transcript topic of the same meeting as the status topic `status`."""
    return status[: -len(STATUS)] + TRANSCRIPT
