"""Rules for the short texts a client names things with (titles, speaker names, labels,
descriptions): what would reorder, hide or break the lines they are shown in."""

from __future__ import annotations

import re
import unicodedata

_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")
_PDF, _PDI = "\u202c", "\u2069"  # pop directional formatting / isolate

# Format characters that belong to printable text: joiners (emoji sequences, Indic scripts) and
# the tags of subdivision flags. Other format characters (bidi overrides, BOM) reorder or hide.
_PRINTABLE_FORMAT = frozenset("\u200c\u200d") | frozenset(map(chr, range(0xE0020, 0xE0080)))


def unclosed_bidi(value: str) -> bool:
    """Whether an embedding or override is not closed by its PDF, or an isolate by its PDI,
    within `value` (closed pairs, as applications put around a name, are text)."""
    if not _BIDI_CONTROLS.search(value):
        return False
    open_: list[str] = []
    for char in value:
        if "\u202a" <= char <= "\u202e" and char != _PDF:
            open_.append(_PDF)
        elif "\u2066" <= char <= "\u2068":
            open_.append(_PDI)
        elif char == _PDF and open_ and open_[-1] == _PDF:
            open_.pop()
        elif char == _PDI and _PDI in open_:  # closes its isolate and what opened inside it
            del open_[len(open_) - 1 - open_[::-1].index(_PDI) :]
    return bool(open_)


def unprintable(char: str) -> bool:
    """A control, line break, or format character other than joiners and flag tags."""
    category = unicodedata.category(char)
    if category == "Cf":
        return char not in _PRINTABLE_FORMAT
    return category in ("Cc", "Zl", "Zp")


def one_line(value: str) -> str:
    """`value` with its line breaks, tabs and runs of spaces as single spaces."""
    return " ".join(value.split())


def description_problem(value: object, limit: int) -> str | None:
    """Why `value` (`one_line` already) cannot be a one-line description of at most `limit`
    characters, or None."""
    if not isinstance(value, str) or len(value) > limit:
        return f"must be a string of at most {limit} characters"
    if any(unicodedata.category(c) == "Cc" for c in value):
        return "must not hold control characters"
    if unclosed_bidi(value):
        return "holds a bidi embedding, override or isolate that is not closed within it"
    return None
