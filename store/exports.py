"""Transcript export formats. Pure functions: segments in, text out, no I/O.

SRT, WebVTT and text put every final on the meeting's clock (`Timeline`): a final's `start_ms`
counts from the start of its own stream, and each stream (a second source, a reconnect) starts
at 0. Subtitle cues come in start order (`CueOrder`), as WebVTT requires and players expect;
JSON keeps each final's stream time as stored, beside its time on the meeting's clock.
"""

from __future__ import annotations

import heapq
import json
import re
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from store.base import FinalSegment

Renderer = Callable[[str, Sequence[FinalSegment], "Timeline | None"], str]
# Finals come in number order, which is not start order where two sources overlap (a final is
# numbered when its utterance ends): cues wait, this many at most, to be written in start order.
REORDER_CUES = 64


def _span(segment: FinalSegment) -> tuple[int, int]:
    """(start_ms, end_ms) made safe: never negative, end never before start."""
    start = max(segment.start_ms, 0)
    return start, max(segment.end_ms, start)


class Timeline:
    """Each stream's audio time moved onto the meeting's clock, which starts when its first
    stream started. A final whose stream is not known (a recording's, or one whose stream's row
    is gone) stays at its own time."""

    def __init__(self, stream_starts: Mapping[str, datetime] | None = None) -> None:
        starts = stream_starts or {}
        origin = min(starts.values(), default=None)
        self._offsets = {
            stream_id: round((started - origin).total_seconds() * 1000)
            for stream_id, started in starts.items()
            if origin is not None
        }

    def offset(self, stream_id: str | None) -> int:
        """Where the stream's time 0 falls on the meeting's clock: none of its finals is earlier."""
        return self._offsets.get(stream_id or "", 0)

    def span(self, segment: FinalSegment) -> tuple[int, int]:
        start, end = _span(segment)
        offset = self.offset(segment.stream_id)
        return start + offset, end + offset


ON_OWN_CLOCKS = Timeline()  # no stream's start known: every final at its own stream's time
Cue = tuple[int, int, FinalSegment]  # (start_ms, end_ms, final) on the meeting's clock


class CueOrder:
    """Finals in, cues out in start order, holding at most REORDER_CUES: a cue that would still
    start before one already written starts with it instead (no cue's start goes backwards)."""

    def __init__(self, timeline: Timeline | None = None) -> None:
        self._timeline = timeline or ON_OWN_CLOCKS
        self._held: list[tuple[int, int, int, FinalSegment]] = []
        self._last_start = 0

    def push(self, segment: FinalSegment) -> list[Cue]:
        start, end = self._timeline.span(segment)
        heapq.heappush(self._held, (start, segment.segment_no, end, segment))
        return [self._release()] if len(self._held) > REORDER_CUES else []

    def flush(self) -> list[Cue]:
        return [self._release() for _ in range(len(self._held))]

    def _release(self) -> Cue:
        start, _, end, segment = heapq.heappop(self._held)
        start = max(start, self._last_start)
        self._last_start = start
        # A cue ends after it starts (WebVTT requires it; players drop one that does not), so a
        # zero-length final, or one moved to start with a later cue, lasts at least 1 ms.
        return start, max(end, start + 1), segment


# A stream to merge: where on the meeting's clock its finals begin at the earliest, and how to
# open it (its finals, each stream's in its own start order).
ClockedStream = tuple[int, Callable[[], AsyncIterator[FinalSegment]]]


async def in_clock_order(
    streams: Sequence[ClockedStream], timeline: Timeline | None = None
) -> AsyncIterator[FinalSegment]:
    """The finals of several streams merged into the meeting clock's start order. Number order
    is not that: a recording uploaded after the live finals is numbered after them all but
    starts at 0, and two sources' clocks drift apart, further than CueOrder's bounded wait can
    mend. A stream is opened only when the merge reaches its earliest start, so a meeting of
    thousands of streams (every reconnect is one) holds the few that overlap."""
    clock = timeline or ON_OWN_CLOCKS
    # (start, segment_no, n, final); an unopened stream waits as (its earliest start, -1, n,
    # None), before any final starting then.
    heads: list[tuple[int, int, int, FinalSegment | None]] = [
        (not_before, -1, n, None) for n, (not_before, _) in enumerate(streams)
    ]
    heapq.heapify(heads)
    opened: dict[int, AsyncIterator[FinalSegment]] = {}
    while heads:
        _, _, n, segment = heads[0]
        if segment is None:
            opened[n] = streams[n][1]()
        else:
            yield segment
        following = await anext(opened[n], None)
        if following is None:
            heapq.heappop(heads)
            del opened[n]
        else:
            start = clock.span(following)[0]
            heapq.heapreplace(heads, (start, following.segment_no, n, following))


def cues(segments: Iterable[FinalSegment], timeline: Timeline | None = None) -> list[Cue]:
    order = CueOrder(timeline)
    out = [cue for segment in segments for cue in order.push(segment)]
    return out + order.flush()


def _clock(ms: int, fraction_sep: str) -> str:
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{fraction_sep}{millis:03d}"


# A timing arrow as lenient readers take it: a dash, then dashes or blanks, then ">" ("-->",
# "--->", "- ->", "->").
_ARROW = re.compile(r"-[ \t-]*>")
# What SubRip players (VLC, mpv, FFmpeg's subtitle filters, libass) may read as markup rather
# than text starts at a "<" (HTML-like tags, "< b>" too, and "<3" swallowed up to the next ">")
# or a "{" (SSA overrides {\an8}, MicroDVD codes {y:i}, and libass hides any {...}).
_SRT_MARKUP_OPENERS = re.compile(r"[<{]")
_WORD_JOINER = "\u2060"  # invisible: the text reads the same, no markup parses


# C0 and C1 control characters but tab and line breaks: a corrected final may hold terminal
# escapes (ESC [ 2 J) that a reader's `cat` would obey. Each becomes a blank.
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")


def _printable(text: str) -> str:
    return _CONTROLS.sub(" ", text)


def _shows_something(line: str) -> bool:
    """Whether a reader sees anything: not only blanks and invisible format characters (a
    zero-width space, a joiner, a direction mark; an emoji sequence's joiner has its emoji)."""
    return any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in line)


def voiced_by_source(
    segments: Sequence[FinalSegment], sources: Iterable[str]
) -> Sequence[FinalSegment]:
    """For subtitles and text: in a meeting of more than one source (the user's microphone and
    what the computer played), a final without a speaker is labelled with its source, as the
    viewer shows it; otherwise "who said it" is lost. One source: nothing to tell apart."""
    if len(set(sources)) < 2:
        return segments
    return [s if s.speaker else replace(s, speaker=s.source) for s in segments]


def _speaker_name(segment: FinalSegment, *, isolate: bool) -> str | None:
    """The final's speaker as one printable line, or None when it shows nothing (a label of
    blanks or invisible characters made `<v >`, invalid WebVTT, and ": " lines). `isolate`: a
    right-to-left name is wrapped in a first-strong isolate, or the bidi algorithm reorders it
    with the colon and the text's first words ("שלום: 42 items" read "42 :שלום items")."""
    name = " ".join(_printable(segment.speaker or "").split())
    if not _shows_something(name):
        return None
    if isolate and any(unicodedata.bidirectional(ch) in ("R", "AL") for ch in name):
        return f"\u2068{name}\u2069"
    return name


def _cue_lines(text: str) -> list[str]:
    """Lines that show something: a blank line would end a SubRip block / WebVTT cue early."""
    return [line.strip() for line in _printable(text).splitlines() if _shows_something(line)]


def _srt_safe(line: str) -> str:
    """A cue text line that cannot read as a timing line: SubRip readers start a new cue at a
    line holding "-->", blank line before it or not (a final could forge cues otherwise). The
    arrow becomes "→", which says the same to a reader. Nor as markup: SubRip has no escapes,
    so a word joiner goes after every "<" and "{" (a corrected final could restyle, hide or
    move subtitles otherwise)."""
    line = _SRT_MARKUP_OPENERS.sub(lambda m: m.group(0) + _WORD_JOINER, line)
    return _ARROW.sub("\u2192", line)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def json_item(segment: FinalSegment, timeline: Timeline | None = None) -> dict[str, object]:
    """A final as stored (`start_ms`/`end_ms` on its stream's clock, `stream_id` naming the
    stream), and where it falls on the meeting's clock, as SRT, WebVTT and text place it."""
    meeting_start, meeting_end = (timeline or ON_OWN_CLOCKS).span(segment)
    return {
        "segment_no": segment.segment_no,
        "text": segment.text,
        "start_ms": segment.start_ms,
        "end_ms": segment.end_ms,
        "speaker": segment.speaker,
        "confidence": segment.confidence,
        "source": segment.source,
        "stream_id": segment.stream_id,
        "meeting_start_ms": meeting_start,
        "meeting_end_ms": meeting_end,
    }


def to_json(
    meeting_id: str, segments: Sequence[FinalSegment], timeline: Timeline | None = None
) -> str:
    return json.dumps(
        {"meeting_id": meeting_id, "segments": [json_item(s, timeline) for s in segments]},
        ensure_ascii=False,
    )


def srt_cue(index: int, cue: Cue) -> str | None:
    """SubRip block `index` (1-based, counting written blocks), or None for an empty final."""
    start, end, segment = cue
    lines = _cue_lines(segment.text)
    if not lines:
        return None  # SubRip has no empty cues
    if (speaker := _speaker_name(segment, isolate=True)) is not None:
        lines[0] = f"{speaker}: {lines[0]}"
    timing = f"{_clock(start, ',')} --> {_clock(end, ',')}"
    return "\n".join([str(index), timing, *map(_srt_safe, lines)]) + "\n\n"


def to_srt(segments: Sequence[FinalSegment], timeline: Timeline | None = None) -> str:
    blocks: list[str] = []
    for cue in cues(segments, timeline):
        block = srt_cue(len(blocks) + 1, cue)
        if block is not None:
            blocks.append(block)
    return "".join(blocks)


VTT_HEADER = "WEBVTT\n"


def vtt_cue(cue: Cue) -> str | None:
    """A WebVTT cue (preceded by its blank separator line), or None for an empty final."""
    start, end, segment = cue
    lines = [_vtt_escape(line) for line in _cue_lines(segment.text)]
    if not lines:
        return None
    if (speaker := _speaker_name(segment, isolate=False)) is not None:
        # The annotation ends at the first ">" and may not span lines; it is not rendered.
        lines[0] = f"<v {_vtt_escape(speaker)}>{lines[0]}"
    timing = f"{_clock(start, '.')} --> {_clock(end, '.')}"
    return "\n" + "\n".join([str(segment.segment_no), timing, *lines]) + "\n"


def to_vtt(segments: Sequence[FinalSegment], timeline: Timeline | None = None) -> str:
    # Escaping turns every ">" into "&gt;", so no cue text line holds a timing arrow "-->".
    return VTT_HEADER + "".join(vtt_cue(cue) or "" for cue in cues(segments, timeline))


def text_line(segment: FinalSegment, timeline: Timeline | None = None) -> str:
    """One line per final, in number order (the order of the conversation), stamped with its
    start on the meeting's clock; none for a final with no printable text (as SRT and WebVTT)."""
    text = " ".join(_printable(segment.text).split())
    if not _shows_something(text):
        return ""
    start = (timeline or ON_OWN_CLOCKS).span(segment)[0]
    stamp = _clock(start, ".").partition(".")[0]  # HH:MM:SS, hours past 99 too
    # One line per final, as SRT and WebVTT.
    name = _speaker_name(segment, isolate=True)
    speaker = f"{name}: " if name is not None else ""
    return f"[{stamp}] {speaker}{text}\n"


def to_text(segments: Sequence[FinalSegment], timeline: Timeline | None = None) -> str:
    return "".join(text_line(s, timeline) for s in segments)


async def stream(
    fmt: str,
    meeting_id: str,
    batches: AsyncIterable[Sequence[FinalSegment]],
    tips: Sequence[Mapping[str, object]] = (),
    timeline: Timeline | None = None,
) -> AsyncIterator[str]:
    """Export `fmt` piece by piece from batches of finals: the same text `render` gives for
    their concatenation, with memory bounded by one batch (and REORDER_CUES cues) whatever the
    meeting's length. The JSON format ends with the meeting's live `tips` when there are any."""
    media_type(fmt)  # refuses an unknown format before anything is sent
    if fmt == "json":
        yield json.dumps({"meeting_id": meeting_id}, ensure_ascii=False)[:-1] + ', "segments": ['
    elif fmt == "vtt":
        yield VTT_HEADER
    written = 0
    order = CueOrder(timeline)

    def subtitles(ready: list[Cue]) -> list[str]:
        nonlocal written
        parts = []
        for cue in ready:
            block = srt_cue(written + 1, cue) if fmt == "srt" else vtt_cue(cue)
            if block is not None:
                parts.append(block)
                written += 1
        return parts

    async for batch in batches:
        parts: list[str] = []
        for segment in batch:
            if fmt == "json":
                item = json.dumps(json_item(segment, timeline), ensure_ascii=False)
                parts.append(item if written == 0 else ", " + item)
                written += 1
            elif fmt in ("srt", "vtt"):
                parts += subtitles(order.push(segment))
            elif line := text_line(segment, timeline):
                parts.append(line)
        if parts:
            yield "".join(parts)
    if fmt in ("srt", "vtt") and (parts := subtitles(order.flush())):
        yield "".join(parts)
    if fmt == "json":
        yield (
            "]" + (f', "tips": {json.dumps(list(tips), ensure_ascii=False)}' if tips else "") + "}"
        )


EXPORT_FORMATS: dict[str, tuple[str, Renderer]] = {
    "json": ("application/json", lambda m, s, t: to_json(m, s, t)),
    "srt": ("application/x-subrip; charset=utf-8", lambda _m, s, t: to_srt(s, t)),
    "vtt": ("text/vtt; charset=utf-8", lambda _m, s, t: to_vtt(s, t)),
    "txt": ("text/plain; charset=utf-8", lambda _m, s, t: to_text(s, t)),
}


def media_type(fmt: str) -> str:
    """The media type of export format `fmt`; ValueError naming the formats for any other."""
    try:
        return EXPORT_FORMATS[fmt][0]
    except KeyError:
        known = ", ".join(sorted(EXPORT_FORMATS))
        raise ValueError(f"unknown export format {fmt!r}; expected one of: {known}") from None


def render(
    fmt: str, meeting_id: str, segments: Sequence[FinalSegment], timeline: Timeline | None = None
) -> tuple[str, str]:
    """(body, media_type) for export format `fmt` (one of EXPORT_FORMATS)."""
    kind = media_type(fmt)
    return EXPORT_FORMATS[fmt][1](meeting_id, segments, timeline), kind
