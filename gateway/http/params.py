"""A REST request's query parameters, each read by its rule (gateway.params) and every failure
a 400 that names the rule.

Every parameter of the REST API is single-valued: one given twice is refused rather than
resolved (a page that reads the first value while the server checked the last is how a check
gets bypassed). Parameters an endpoint does not read are ignored, repeated or not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.requests import ClientDisconnect, Request

from gateway.http.errors import HttpError
from gateway.params import ParamError, bounded_int, single

MAX_PARAM_CHARS = 1024


class Params:
    """A request's query parameters. One the endpoint reads is 400 if repeated (clients and
    servers disagree on which copy counts); one it does not read is ignored. `reads` are checked
    at once (before a body is read), the others as they are read."""

    def __init__(self, request: Request, reads: Iterable[str] = ()) -> None:
        self._query = request.query_params
        self._raw_query: bytes = request.scope.get("query_string", b"")
        for name in reads:
            self.text(name)

    def text(self, name: str, max_chars: int = MAX_PARAM_CHARS) -> str | None:
        """The parameter's value; None when absent or empty (`?speaker=`, as an HTML form sends
        a blank field, is the same as leaving it out)."""
        try:
            value = single(self._query, name) or None
        except ParamError as exc:
            raise HttpError(400, str(exc)) from None
        if value is not None and len(value) > max_chars:
            raise HttpError(400, f"{name} is limited to {max_chars} characters")
        if value is not None and not storable(value):
            raise HttpError(400, f"{name} must be Unicode text without NUL characters")
        if value is not None and "\ufffd" in value and not _utf8_value(self._raw_query, name):
            # Starlette decodes bytes that are not UTF-8 as U+FFFD: a label would keep those.
            raise HttpError(400, f"{name} is not UTF-8")
        return value

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        raw = self.text(name)
        if raw is None or raw == "":
            return default
        try:
            return bounded_int(raw, name, low, high)
        except ParamError as exc:
            raise HttpError(400, str(exc)) from None

    def optional_integer(self, name: str, *, low: int, high: int) -> int | None:
        return None if not self.text(name) else self.integer(name, low, low=low, high=high)

    def boolean(self, name: str) -> bool | None:
        raw = self.text(name)
        if raw is None or raw == "":
            return None
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise HttpError(400, f"{name} must be true or false")

    def moment(self, name: str) -> datetime | None:
        """An ISO 8601 time; one without an offset is taken as UTC."""
        raw = self.text(name)
        if raw is None or raw == "":
            return None
        problem = f"{name} must be an ISO 8601 time, e.g. 2026-12-03T09:30:00Z"
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            raise HttpError(400, problem) from None
        return as_utc(value, problem)


def _utf8_value(raw_query: bytes, name: str) -> bool:
    """Whether every value of `name` in the raw query string is UTF-8 once %-decoded."""
    for pair in raw_query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")).decode(errors="replace") != name:
            continue
        try:
            unquote_to_bytes(value.replace(b"+", b" ")).decode()
        except UnicodeDecodeError:
            return False
    return True


def as_utc(value: datetime, problem: str) -> datetime:
    """`value` in UTC (one without an offset is taken as UTC); 400 with `problem` when UTC
    has no such time (year 1 or 9999 with an offset that crosses the calendar's end)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise HttpError(400, problem) from None


async def json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":  # media types are case-insensitive (RFC 9110)
        raise HttpError(415, "send the body as application/json")
    declared = request.headers.get("content-length", "")
    # Refused before the body is sent (a client that asked `Expect: 100-continue` sends none).
    if declared.isascii() and declared.isdecimal() and int(declared) > max_bytes:
        raise HttpError(413, f"the body is limited to {max_bytes} bytes")
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise HttpError(413, f"the body is limited to {max_bytes} bytes")
    except ClientDisconnect:  # gone, or closed for a body that stopped coming: no one to answer
        raise HttpError(400, "the body ended early") from None
    try:
        value = json.loads(
            body,
            object_pairs_hook=_object_without_repeats,
            parse_constant=_not_json,
            parse_int=_json_int,
            parse_float=_json_float,
        )
    except _RepeatedKey as exc:
        key = json.dumps(exc.key[:64])  # named, not echoed whole
        raise HttpError(400, f"the body gives {key} twice in one object") from None
    except _BodyRefused as exc:
        raise HttpError(400, str(exc)) from None
    except RecursionError:
        raise HttpError(400, "the body's JSON is nested too deeply") from None
    except ValueError:
        raise HttpError(400, "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise HttpError(400, "the body must be a JSON object")
    if not all(storable(text) for text in _strings(value)):
        raise HttpError(
            400,
            "strings in the body must be Unicode text without NUL characters "
            "or lone surrogates (\\ud800 to \\udfff unpaired)",
        )
    return value


class _BodyRefused(ValueError):
    """A body Python's decoder reads but the API refuses, with the reason."""


MAX_JSON_INT_DIGITS = 4300  # Python's own limit for int(str), named instead of "not valid JSON"


def _not_json(constant: str) -> object:
    raise _BodyRefused(f"the body holds {constant}, which is not JSON")


def _json_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: JSON's number, Python's infinity
        raise _BodyRefused("a number in the body is too large")
    return value


def _json_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _BodyRefused(f"a number in the body has more than {MAX_JSON_INT_DIGITS} digits")
    return int(digits)


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        self.key = key


def _object_without_repeats(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused if it gives a key twice: json.loads would keep the last one,
    while a proxy or an audit log in front may read the first."""
    value = dict(items)
    if len(value) != len(items):
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return value


def _strings(value: object) -> Iterator[str]:
    """Every string in a decoded JSON value, keys included (a loop, not recursion: the
    decoder accepts nesting deeper than a recursive walk could go)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def storable(text: str) -> bool:
    """Whether a database takes `text`: JSON's \\u escapes can spell a lone surrogate (no
    UTF-8 encoding) and any input NUL (PostgreSQL's text refuses it)."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
