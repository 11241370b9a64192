"""Transcript export formats. Pure functions: segments in, text out, no I/O."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence

from store.base import FinalSegment

Renderer = Callable[[str, Sequence[FinalSegment]], str]


def _span(segment: FinalSegment) -> tuple[int, int]:
    """(start_ms, end_ms) made safe: never negative, end never before start."""
    start = max(segment.start_ms, 0)
    return start, max(segment.end_ms, start)


def _clock(ms: int, fraction_sep: str) -> str:
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{fraction_sep}{millis:03d}"


# A timing arrow as lenient readers take it: a dash, then dashes or blanks, then ">" ("-->",
# "--->", "- ->", "->").
_ARROW = re.compile(r"-[ \t-]*>")


# C0 and C1 control characters but tab and line breaks: a corrected final may hold terminal
# escapes (ESC [ 2 J) that a reader's `cat` would obey. Each becomes a blank.
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")


def _printable(text: str) -> str:
    return _CONTROLS.sub(" ", text)


def _cue_lines(text: str) -> list[str]:
    """Non-blank lines: a blank line would end a SubRip block / WebVTT cue early."""
    return [line.strip() for line in _printable(text).splitlines() if line.strip()]


def _srt_safe(line: str) -> str:
    """A cue text line that cannot read as a timing line: SubRip readers start a new cue at a
    line holding "-->", blank line before it or not (a final could forge cues otherwise). The
    arrow becomes "→", which says the same to a reader."""
    return _ARROW.sub("\u2192", line)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def json_item(segment: FinalSegment) -> dict[str, object]:
    return {
        "segment_no": segment.segment_no,
        "text": segment.text,
        "start_ms": segment.start_ms,
        "end_ms": segment.end_ms,
        "speaker": segment.speaker,
        "confidence": segment.confidence,
        "source": segment.source,
    }


def to_json(meeting_id: str, segments: Sequence[FinalSegment]) -> str:
    return json.dumps(
        {"meeting_id": meeting_id, "segments": [json_item(s) for s in segments]},
        ensure_ascii=False,
    )


def srt_cue(index: int, segment: FinalSegment) -> str | None:
    """SubRip block `index` (1-based, counting written blocks), or None for an empty final."""
    lines = _cue_lines(segment.text)
    if not lines:
        return None  # SubRip has no empty cues
    start, end = _span(segment)
    if segment.speaker:
        lines[0] = f"{' '.join(_printable(segment.speaker).split())}: {lines[0]}"
    timing = f"{_clock(start, ',')} --> {_clock(end, ',')}"
    return "\n".join([str(index), timing, *map(_srt_safe, lines)]) + "\n\n"


def to_srt(segments: Sequence[FinalSegment]) -> str:
    blocks: list[str] = []
    for segment in segments:
        block = srt_cue(len(blocks) + 1, segment)
        if block is not None:
            blocks.append(block)
    return "".join(blocks)


VTT_HEADER = "WEBVTT\n"


def vtt_cue(segment: FinalSegment) -> str | None:
    """A WebVTT cue (preceded by its blank separator line), or None for an empty final."""
    lines = [_vtt_escape(line) for line in _cue_lines(segment.text)]
    if not lines:
        return None
    start, end = _span(segment)
    if segment.speaker:
        # The annotation ends at the first ">" and may not span lines.
        speaker = _vtt_escape(" ".join(_printable(segment.speaker).split()))
        lines[0] = f"<v {speaker}>{lines[0]}"
    timing = f"{_clock(start, '.')} --> {_clock(end, '.')}"
    return "\n" + "\n".join([str(segment.segment_no), timing, *lines]) + "\n"


def to_vtt(segments: Sequence[FinalSegment]) -> str:
    # Escaping turns every ">" into "&gt;", so no cue text line holds a timing arrow "-->".
    return VTT_HEADER + "".join(cue for s in segments if (cue := vtt_cue(s)) is not None)


def text_line(segment: FinalSegment) -> str:
    text = " ".join(_printable(segment.text).split())
    stamp = _clock(_span(segment)[0], ".").partition(".")[0]  # HH:MM:SS, hours past 99 too
    # One line per final, as SRT and WebVTT.
    name = " ".join(_printable(segment.speaker or "").split())
    speaker = f"{name}: " if name else ""
    return f"[{stamp}] {speaker}{text}\n"


def to_text(segments: Sequence[FinalSegment]) -> str:
    return "".join(text_line(s) for s in segments)


async def stream(
    fmt: str,
    meeting_id: str,
    batches: AsyncIterable[Sequence[FinalSegment]],
    tips: Sequence[Mapping[str, object]] = (),
) -> AsyncIterator[str]:
    """Export `fmt` piece by piece from batches of finals: the same text `render` gives for
    their concatenation, with memory bounded by one batch whatever the meeting's length. The
    JSON format ends with the meeting's live `tips` when there are any."""
    media_type(fmt)  # refuses an unknown format before anything is sent
    if fmt == "json":
        yield json.dumps({"meeting_id": meeting_id}, ensure_ascii=False)[:-1] + ', "segments": ['
    elif fmt == "vtt":
        yield VTT_HEADER
    written = 0
    async for batch in batches:
        parts: list[str] = []
        for segment in batch:
            if fmt == "json":
                item = json.dumps(json_item(segment), ensure_ascii=False)
                parts.append(item if written == 0 else ", " + item)
                written += 1
            elif fmt == "srt":
                block = srt_cue(written + 1, segment)
                if block is not None:
                    parts.append(block)
                    written += 1
            elif fmt == "vtt":
                parts.append(vtt_cue(segment) or "")
            else:
                parts.append(text_line(segment))
        if parts:
            yield "".join(parts)
    if fmt == "json":
        yield (
            "]" + (f', "tips": {json.dumps(list(tips), ensure_ascii=False)}' if tips else "") + "}"
        )


EXPORT_FORMATS: dict[str, tuple[str, Renderer]] = {
    "json": ("application/json", to_json),
    "srt": ("application/x-subrip; charset=utf-8", lambda _m, s: to_srt(s)),
    "vtt": ("text/vtt; charset=utf-8", lambda _m, s: to_vtt(s)),
    "txt": ("text/plain; charset=utf-8", lambda _m, s: to_text(s)),
}


def media_type(fmt: str) -> str:
    """The media type of export format `fmt`; ValueError naming the formats for any other."""
    try:
        return EXPORT_FORMATS[fmt][0]
    except KeyError:
        known = ", ".join(sorted(EXPORT_FORMATS))
        raise ValueError(f"unknown export format {fmt!r}; expected one of: {known}") from None


def render(fmt: str, meeting_id: str, segments: Sequence[FinalSegment]) -> tuple[str, str]:
    """(body, media_type) for export format `fmt` (one of EXPORT_FORMATS)."""
    kind = media_type(fmt)
    return EXPORT_FORMATS[fmt][1](meeting_id, segments), kind
