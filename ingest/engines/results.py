"""An engine's results checked before they become segments, pure: a vendor's values are input.

One bad value must not cost more than its own result. Text that is not text fails the engine
(the chain fails over, a recording tries the next engine), not the stream's pipeline. Text keeps
only what every database and viewer can hold: control characters (NUL among them, which
PostgreSQL refuses) are dropped and halves of surrogate pairs (which no UTF-8 encoder writes)
become U+FFFD. A confidence that is not a number in [0, 1] is left out. Times are kept within the
audio the engine was given (a live stream's; a recording's chunk or file when known), so one
absurd time neither moves the stream's later finals nor overflows the store's columns, and a
time that is not a finite number fails the engine.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from ingest.engines.base import EngineError, EngineEvent, Word
from ingest.segments import PendingFinal

MAX_MS = 2**31 - 1  # the store's integer columns
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_HALF_PAIR = re.compile("[\ud800-\udfff]")


def malformed(what: str) -> EngineError:
    return EngineError(f"malformed result: {what}", reason="malformed")


def clean_text(value: object) -> str:
    if not isinstance(value, str):
        raise malformed(f"its text is {type(value).__name__}, not text")
    return _HALF_PAIR.sub("\ufffd", _CONTROL.sub("", value))


def clean_label(value: object) -> str | None:
    """A speaker label: text, or None (a label of another kind is no label)."""
    return clean_text(value) if isinstance(value, str) else None


def clean_confidence(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0.0 <= value <= 1.0 else None  # NaN compares false: None


def bounded_ms(value: object, high: int) -> int:
    """`value` as whole milliseconds within [0, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise malformed(f"a time is {value!r}")
    return min(max(int(value), 0), high)


def checked_event(event: EngineEvent, *, heard_ms: int = MAX_MS) -> EngineEvent:
    """`event` with its values cleaned and its times within [0, heard_ms] (the engine's own
    clock: the audio it has been sent); EngineError when it cannot be read as a result."""
    if event.notice is not None:
        return event
    start = bounded_ms(event.start_ms, heard_ms)
    words = tuple(
        Word(
            text=clean_text(w.text),
            start_ms=bounded_ms(w.start_ms, heard_ms),
            end_ms=bounded_ms(w.end_ms, heard_ms),
            confidence=clean_confidence(w.confidence),
            speaker=clean_label(w.speaker),
        )
        for w in event.words
    )
    return replace(
        event,
        text=clean_text(event.text),
        start_ms=start,
        end_ms=max(bounded_ms(event.end_ms, heard_ms), start),
        words=words,
        speaker=clean_label(event.speaker),
        confidence=clean_confidence(event.confidence),
    )


def checked_final(final: PendingFinal, *, low_ms: int = 0, high_ms: int = MAX_MS) -> PendingFinal:
    """A recording's segment cleaned as `checked_event` cleans a live result, its times within
    [low_ms, high_ms] (the chunk's audio, when known)."""
    start = min(max(bounded_ms(final.start_ms, high_ms), low_ms), high_ms)
    return replace(
        final,
        text=clean_text(final.text),
        start_ms=start,
        end_ms=max(bounded_ms(final.end_ms, high_ms), start),
        speaker=clean_label(final.speaker),
        confidence=clean_confidence(final.confidence),
    )
