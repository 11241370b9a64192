"""Fields a message or request carried that the receiver does not know.

They are ignored, so newer clients keep working against older gateways; naming them in the
answer lets a misspelled option show instead of silently taking its default."""

from __future__ import annotations

from collections.abc import Container, Iterable

IGNORED_MAX = 16  # names reported back, each cut to IGNORED_NAME_MAX characters
IGNORED_NAME_MAX = 64


def ignored_names(given: Iterable[str], known: Container[str]) -> tuple[str, ...]:
    """The names in `given` that are not `known`, as a client is told of them: unknown fields
    are ignored (newer clients keep working), and saying which lets a typo show."""
    names: list[str] = []
    for name in given:
        # A JSON key may hold a lone surrogate ("\ud800"), which no UTF-8 answer can carry.
        shown = name[:IGNORED_NAME_MAX].encode("utf-8", "backslashreplace").decode()
        if name not in known and shown not in names:
            names.append(shown)
            if len(names) == IGNORED_MAX:
                break
    return tuple(names)
