"""Transcript export formats. Pure functions: segments in, text out, no I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

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


def _cue_lines(text: str) -> list[str]:
    """Non-blank lines: a blank line would end a SubRip block / WebVTT cue early."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _srt_safe(line: str) -> str:
    """A cue text line that cannot read as a timing line: SubRip readers start a new cue at a
    line holding "-->", blank line before it or not (a final could forge cues otherwise). The
    arrow becomes "→", which says the same to a reader."""
    return _ARROW.sub("\u2192", line)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_json(meeting_id: str, segments: Sequence[FinalSegment]) -> str:
    return json.dumps(
        {
            "meeting_id": meeting_id,
            "segments": [
                {
                    "segment_no": s.segment_no,
                    "text": s.text,
                    "start_ms": s.start_ms,
                    "end_ms": s.end_ms,
                    "speaker": s.speaker,
                    "confidence": s.confidence,
                    "source": s.source,
                }
                for s in segments
            ],
        },
        ensure_ascii=False,
    )


def to_srt(segments: Sequence[FinalSegment]) -> str:
    blocks: list[str] = []
    for segment in segments:
        lines = _cue_lines(segment.text)
        if not lines:
            continue  # SubRip has no empty cues
        start, end = _span(segment)
        if segment.speaker:
            lines[0] = f"{' '.join(segment.speaker.split())}: {lines[0]}"
        timing = f"{_clock(start, ',')} --> {_clock(end, ',')}"
        blocks.append("\n".join([str(len(blocks) + 1), timing, *map(_srt_safe, lines)]))
    return "".join(f"{block}\n\n" for block in blocks)


def to_vtt(segments: Sequence[FinalSegment]) -> str:
    # Escaping turns every ">" into "&gt;", so no cue text line holds a timing arrow "-->".
    parts = ["WEBVTT\n"]
    for segment in segments:
        lines = [_vtt_escape(line) for line in _cue_lines(segment.text)]
        if not lines:
            continue
        start, end = _span(segment)
        if segment.speaker:
            # The annotation ends at the first ">" and may not span lines.
            speaker = _vtt_escape(" ".join(segment.speaker.split()))
            lines[0] = f"<v {speaker}>{lines[0]}"
        timing = f"{_clock(start, '.')} --> {_clock(end, '.')}"
        parts.append("\n".join([str(segment.segment_no), timing, *lines]) + "\n")
    return "\n".join(parts)


def to_text(segments: Sequence[FinalSegment]) -> str:
    lines: list[str] = []
    for segment in segments:
        text = " ".join(segment.text.split())
        stamp = _clock(_span(segment)[0], ".")[:8]  # HH:MM:SS
        speaker = f"{segment.speaker}: " if segment.speaker else ""
        lines.append(f"[{stamp}] {speaker}{text}")
    return "".join(f"{line}\n" for line in lines)


EXPORT_FORMATS: dict[str, tuple[str, Renderer]] = {
    "json": ("application/json", to_json),
    "srt": ("application/x-subrip; charset=utf-8", lambda _m, s: to_srt(s)),
    "vtt": ("text/vtt; charset=utf-8", lambda _m, s: to_vtt(s)),
    "txt": ("text/plain; charset=utf-8", lambda _m, s: to_text(s)),
}


def render(fmt: str, meeting_id: str, segments: Sequence[FinalSegment]) -> tuple[str, str]:
    """(body, media_type) for export format `fmt` (one of EXPORT_FORMATS)."""
    try:
        media_type, renderer = EXPORT_FORMATS[fmt]
    except KeyError:
        known = ", ".join(sorted(EXPORT_FORMATS))
        raise ValueError(f"unknown export format {fmt!r}; expected one of: {known}") from None
    return renderer(meeting_id, segments), media_type
