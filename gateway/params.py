"""Query parameters as the endpoints read them: each at most once, numbers within what the store
holds. Errors are `ParamError`s whose text names the rule (HTTP 400, close 4400)."""

from __future__ import annotations

import re
from typing import Protocol

from store.base import MAX_SEGMENT_NO

_DIGITS = re.compile(r"[0-9]{1,32}")


class MultiParams(Protocol):
    """Starlette's `QueryParams` (every value of a repeated parameter, in order)."""

    def getlist(self, key: str) -> list[str]: ...


class ParamError(ValueError):
    """A query parameter breaks its rule; the message is written to be shown to the client."""


def single(params: MultiParams, name: str) -> str | None:
    """The one value of `name`, or None when absent. A repeated parameter is refused: clients
    and servers disagree on which copy counts (the first, the last), so none is guessed."""
    values = params.getlist(name)
    if len(values) > 1:
        raise ParamError(f"query parameter '{name}' is repeated; give it at most once")
    return values[0] if values else None


def bounded_int(raw: str, name: str, low: int, high: int) -> int:
    """`raw` as a decimal integer in [low, high] (low >= 0: no sign is accepted)."""
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise ParamError(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def segment_no(raw: str, name: str = "since") -> int:
    """A segment number (`since=`): 0 up to the largest the store holds (MAX_SEGMENT_NO)."""
    return bounded_int(raw, name, 0, MAX_SEGMENT_NO)
