"""The ingest endpoint's wire protocol, sans I/O.

A client opens the WebSocket, sends one JSON text message `{"type": "handshake", ...}`, then binary
frames of raw PCM (signed 16-bit little-endian, interleaved) and, at any time, JSON control messages
`{"type": "finalize"}` (flush the current utterance), `{"type": "close"}` (flush and end),
`{"type": "refresh", "token": "..."}` (extend the connection's life with a new token) or
`{"type": "ping"}` (answered with a `pong` message, an application-level keepalive).

Everything here is pure: the gateway feeds in what it received and sends back `str(ProtocolError)`,
which is written to be shown to the client.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from shared.ignored_fields import ignored_names

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
MAX_DEVICE_ID_LEN = 256
BYTES_PER_SAMPLE = 2

Source = Literal["mic", "system"]
AiMode = Literal["standard", "super"]
ControlType = Literal["finalize", "close", "refresh", "ping"]

CONTROL_TYPES: tuple[str, ...] = get_args(ControlType)

# BCP 47-ish: a 2-3 letter language with optional region/script subtags (en, tr, en-US, zh-Hant-TW).
LANGUAGE_PATTERN = r"^(auto|[a-z]{2,3}(-[a-z0-9]{2,8}){0,2})$"


class ProtocolError(Exception):
    """The client broke the protocol; the message is safe to send back to it."""


class FrameTooLarge(ProtocolError):
    """A binary frame exceeded the configured size limit."""


MAX_STREAM_ID_LEN = 64
MAX_FROM_MS = 2**31 - 1


class Resumes(BaseModel):
    """Where the audio a resumed stream sends begins: at `from_ms` of a previous stream of the
    meeting (typically where its last final ended), so the meeting's clock places it where it
    was spoken, not when the client got back."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    stream_id: str = Field(min_length=1, max_length=MAX_STREAM_ID_LEN)
    from_ms: int = Field(ge=0, le=MAX_FROM_MS)


class Handshake(BaseModel):
    # Strict: "16000" or 1.5 are client bugs worth reporting, not values to coerce. Unknown keys
    # are ignored so newer clients keep working against older gateways.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    type: Literal["handshake"]
    source: Source
    sample_rate: int = Field(ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE)
    channels: Literal[1, 2] = 1
    language: str = Field(default="en", pattern=LANGUAGE_PATTERN)
    ai_mode: AiMode = "standard"
    device_id: str | None = Field(default=None, max_length=MAX_DEVICE_ID_LEN)
    resumes: Resumes | None = None
    # The client's fields this gateway does not know (set by parse_handshake, echoed in `ready`):
    # a misspelled `sample_rate` would otherwise leave the default without a word.
    _ignored: tuple[str, ...] = PrivateAttr(default=())

    @property
    def ignored(self) -> tuple[str, ...]:
        return self._ignored

    @field_validator("channels", mode="before")
    @classmethod
    def _exact_int(cls, value: object) -> object:
        # Literal matching compares by equality, which would let true and 1.0 through as 1.
        if type(value) is not int:
            raise ValueError("channels must be an integer")
        return value

    @field_validator("language", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


# One human sentence per field, naming what is allowed; pydantic's own texts are too generic.
_FIELD_HELP: dict[str, str] = {
    "type": 'type must be "handshake"',
    "source": 'source must be one of "mic", "system"',
    "sample_rate": (
        f"sample_rate must be an integer between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE}"
    ),
    "channels": "channels must be 1 or 2",
    "language": 'language must be a short language code such as "en", "tr", "en-US", or "auto"',
    "ai_mode": 'ai_mode must be one of "standard", "super"',
    "device_id": f"device_id must be a string of at most {MAX_DEVICE_ID_LEN} characters",
    "resumes": (
        'resumes must be {"stream_id": "<a previous stream of the meeting>", "from_ms": '
        f"<0..{MAX_FROM_MS}>}}"
    ),
}


def _load_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise ProtocolError(f"{what}'s JSON is nested too deeply") from exc
    except ValueError as exc:
        raise ProtocolError(f"{what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f'{what} must be a JSON object with a "type" field')
    return value


class _Object(dict[str, Any]):
    """A JSON object as parsed, with the first key it gave twice (json.loads keeps the last)."""

    repeated: str | None = None


def _pairs(items: list[tuple[str, Any]]) -> _Object:
    value = _Object(items)
    if len(value) != len(items):  # a set, not a scan per key: a handshake may hold thousands
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                value.repeated = key
                break
            seen.add(key)
    return value


def _repeated_key(text: str) -> str | None:
    """A key the object `text` gives twice, at its top level or inside a field this gateway
    reads as an object (`resumes`), or None. (Inside a field it does not know: the client's
    own business.)"""
    data = json.loads(text, object_pairs_hook=_pairs)
    inner = data.get("resumes") if isinstance(data, _Object) else None
    for obj in (data, inner):
        if isinstance(obj, _Object) and obj.repeated is not None:
            return obj.repeated
    return None


def _describe(error: ValidationError) -> str:
    messages: list[str] = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        if item["type"] == "missing":  # a nested one by its path: resumes.from_ms
            message = f"{'.'.join(map(str, item['loc']))} is required"
        else:
            message = _FIELD_HELP.get(field, f"{field}: {item['msg']}")
        if message not in messages:
            messages.append(message)
    return "invalid handshake: " + "; ".join(messages)


def parse_handshake(text: str, *, default_sample_rate: int) -> Handshake:
    """Parse the first message of an ingest stream; `sample_rate` defaults to the caller's."""
    data = _load_object(text, "handshake")
    if data.get("type") != "handshake":
        raise ProtocolError('the first message must be a handshake: {"type": "handshake", ...}')
    if (repeated := _repeated_key(text)) is not None:
        # Which of two `source`s the client meant cannot be told (once per stream: parsed again).
        raise ProtocolError(f"handshake repeats the key {json.dumps(repeated)[:66]}")
    # null is "not given", as many JSON encoders write an unset optional field.
    data = {key: value for key, value in data.items() if value is not None}
    data.setdefault("sample_rate", default_sample_rate)
    try:
        handshake = Handshake.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(_describe(exc)) from None
    handshake._ignored = ignored_names(data, Handshake.model_fields)
    return handshake


def parse_control(text: str) -> ControlType:
    """Parse a text message sent after the handshake."""
    data = _load_object(text, "control message")
    kind = data.get("type")
    if kind not in CONTROL_TYPES:
        allowed = ", ".join(f'"{t}"' for t in CONTROL_TYPES)
        shown = json.dumps(kind)[:64]
        raise ProtocolError(f"unknown control message type {shown}; allowed types: {allowed}")
    return kind


def refresh_token(text: str) -> object:
    """The `token` of a refresh control message (validated by the gateway, which answers a
    missing or non-string token with an error message)."""
    return _load_object(text, "control message").get("token")


def check_pcm_frame(data: bytes, *, channels: int, max_bytes: int) -> None:
    """Validate one binary frame: non-empty, within the limit, whole sample frames only."""
    size = len(data)
    if size > max_bytes:
        raise FrameTooLarge(f"PCM frame of {size} bytes exceeds the limit of {max_bytes} bytes")
    if size == 0:
        raise ProtocolError("empty PCM frame")
    if size % (BYTES_PER_SAMPLE * channels):
        if channels == 1 or size % BYTES_PER_SAMPLE:
            raise ProtocolError(f"PCM frame length {size} is not a whole number of 16-bit samples")
        raise ProtocolError(
            f"PCM frame length {size} is not a whole number of {channels}-channel 16-bit "
            "sample frames"
        )


def audio_ms(byte_count: int, sample_rate: int, channels: int) -> int:
    """Duration in whole milliseconds of `byte_count` bytes of s16le PCM."""
    return byte_count * 1000 // (BYTES_PER_SAMPLE * channels * sample_rate)
