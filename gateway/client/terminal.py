"""Rendering a meeting's partials and finals in a terminal (or a pipe)."""

from __future__ import annotations

import shutil
import sys
from typing import TextIO

from gateway.client.connection import Message

_CLEAR_LINE = "\r\x1b[2K"


def format_ms(ms: int | float | None) -> str:
    """Milliseconds as mm:ss.mmm (minutes keep growing past 59)."""
    total = max(0, int(ms or 0))
    minutes, rest = divmod(total, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{minutes:02d}:{seconds:02d}.{millis:03d}"


def format_segment(msg: Message) -> str:
    """`#N [mm:ss.mmm-mm:ss.mmm] (source) text`, or `(source speaker)` when it has a speaker (a
    diarized one, or a channel transcribed apart: `ch1`)."""
    span = f"{format_ms(msg.get('start_ms'))}-{format_ms(msg.get('end_ms'))}"
    who = " ".join(str(part) for part in (msg.get("source") or "?", msg.get("speaker")) if part)
    return f"#{msg.get('segment_no')} [{span}] ({who}) {msg.get('text') or ''}"


def describe(msg: Message) -> str:
    """One line for a non-transcript message: `[type] key=value ...` (nulls left out)."""
    shown = {k: v for k, v in msg.items() if k not in ("type", "ts") and v is not None}
    fields = " ".join(f"{k}={v}" for k, v in shown.items())
    return f"[{msg.get('type')}] {fields}".rstrip()


SegmentKey = tuple[str, int]


class TranscriptView:
    """Keeps a meeting's finals and in-flight partials and renders them to a terminal.

    On a TTY the partials share one status line rewritten in place; finals and other messages are
    printed as lines above it. Elsewhere (pipes, logs) partials are lines prefixed with `~`,
    printed only when their text changes.
    """

    def __init__(
        self, out: TextIO | None = None, *, tty: bool | None = None, width: int | None = None
    ) -> None:
        self.out = out if out is not None else sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self._width = width
        self.finals: dict[SegmentKey, Message] = {}
        self.partials: dict[SegmentKey, Message] = {}
        self._status_visible = False

    @staticmethod
    def key(msg: Message) -> SegmentKey:
        return (str(msg.get("source") or "?"), int(msg.get("segment_no") or 0))

    def handle(self, msg: Message) -> None:
        kind = msg.get("type")
        if kind == "transcript.partial":
            self._on_partial(msg)
        elif kind == "transcript.final":
            self._on_final(msg)
        elif kind == "status" and msg.get("event") == "segment.corrected":
            self._on_corrected(msg)
        else:
            self.note(describe(msg))

    def ordered_finals(self) -> list[Message]:
        """Finals by segment number (then source), whatever order they arrived in."""
        return [m for _, m in sorted(self.finals.items(), key=lambda kv: (kv[0][1], kv[0][0]))]

    def text(self) -> str:
        return " ".join(str(m.get("text") or "") for m in self.ordered_finals()).strip()

    def note(self, line: str) -> None:
        """Print a line above the partials."""
        self._print_line(line)

    def close(self) -> None:
        """End the status line so whatever is printed next starts on a fresh line."""
        if self.tty and self._status_visible:
            self.out.write("\n")
            self._status_visible = False
            self.out.flush()

    def _on_partial(self, msg: Message) -> None:
        key = self.key(msg)
        if key in self.finals:
            return  # a late partial must not resurrect a segment that is already final
        if not msg.get("text"):  # withdrawn: the engine settled on nothing
            if self.partials.pop(key, None) is not None and self.tty:
                self._draw_status()
            return
        previous = self.partials.get(key)
        self.partials[key] = msg
        if self.tty:
            self._draw_status()
        elif previous is None or previous.get("text") != msg.get("text"):
            self._print_line("~" + format_segment(msg))

    def _on_final(self, msg: Message) -> None:
        key = self.key(msg)
        previous = self.finals.get(key)
        self.finals[key] = msg
        # The final replaces its partial; earlier partials of that source can never finish now.
        for stale in [k for k in self.partials if k[0] == key[0] and k[1] <= key[1]]:
            del self.partials[stale]
        if previous is None or previous.get("text") != msg.get("text"):
            self._print_line(format_segment(msg))
        elif self.tty:
            self._draw_status()

    def _on_corrected(self, msg: Message) -> None:
        """An editor's correction replaces a held final's text; the gateway's (a number handed
        out twice) is the whole final the store keeps under that number, held or not."""
        number = msg.get("segment_no")
        held = [key for key in self.finals if key[1] == number]
        if msg.get("edited_by") == "gateway":
            for key in held:
                del self.finals[key]
            self._on_final({**msg, "type": "transcript.final"})
            return
        if not held:
            return  # a final this view never had: nothing on screen to correct
        for key in held:
            self.finals[key] = {**self.finals[key], "text": msg.get("text")}
        self._print_line(format_segment(self.finals[held[0]]) + " (corrected)")

    def _print_line(self, line: str) -> None:
        if self.tty:
            self.out.write(_CLEAR_LINE + line + "\n")
            self._status_visible = False
            self._draw_status()
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def _draw_status(self) -> None:
        line = " | ".join("~" + format_segment(m) for _, m in sorted(self.partials.items()))
        if not line and not self._status_visible:
            return
        width = self._width or shutil.get_terminal_size().columns
        if len(line) >= width:  # a wrapped line could not be rewritten in place; keep the tail
            line = "…" + line[-(width - 2) :]
        self.out.write(_CLEAR_LINE + line)
        self._status_visible = bool(line)
        self.out.flush()
