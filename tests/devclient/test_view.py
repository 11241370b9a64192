from __future__ import annotations

import io
from typing import Any

import pytest

from gateway.client.terminal import TranscriptView, describe, format_ms, format_segment

CLEAR = "\r\x1b[2K"


def partial(n: int, text: str, source: str = "mic", start: int = 0, end: int = 1500) -> dict:
    return _msg("transcript.partial", n, text, source, start, end)


def final(n: int, text: str, source: str = "mic", start: int = 0, end: int = 1500) -> dict:
    return _msg("transcript.final", n, text, source, start, end)


def _msg(kind: str, n: int, text: str, source: str, start: int, end: int) -> dict[str, Any]:
    return {
        "type": kind,
        "meeting_id": "m1",
        "segment_no": n,
        "text": text,
        "start_ms": start,
        "end_ms": end,
        "speaker": None,
        "confidence": 0.9,
        "source": source,
        "ts": "2025-01-01T00:00:00.000Z",
    }


def view(tty: bool, width: int = 200) -> tuple[TranscriptView, io.StringIO]:
    out = io.StringIO()
    return TranscriptView(out, tty=tty, width=width), out


def test_tty_partials_rewrite_one_line_and_the_final_replaces_them() -> None:
    v, out = view(tty=True)
    v.handle(partial(1, "hel"))
    v.handle(partial(1, "hello wor"))
    assert out.getvalue() == (
        f"{CLEAR}~#1 [00:00.000-00:01.500] (mic) hel"
        f"{CLEAR}~#1 [00:00.000-00:01.500] (mic) hello wor"
    )
    assert "\n" not in out.getvalue()
    v.handle(final(1, "hello world", end=1620))
    tail = out.getvalue().rsplit(CLEAR, 1)[-1]
    assert tail == "#1 [00:00.000-00:01.620] (mic) hello world\n"
    assert v.partials == {}
    assert list(v.finals) == [("mic", 1)]


def test_tty_final_is_printed_above_the_partials_still_in_flight() -> None:
    v, out = view(tty=True)
    v.handle(partial(1, "one"))
    v.handle(partial(2, "two", source="system"))
    assert out.getvalue().endswith(
        "~#1 [00:00.000-00:01.500] (mic) one | ~#2 [00:00.000-00:01.500] (system) two"
    )
    v.handle(final(1, "one done"))
    printed = out.getvalue()
    assert printed.endswith(
        f"{CLEAR}#1 [00:00.000-00:01.500] (mic) one done\n"
        f"{CLEAR}~#2 [00:00.000-00:01.500] (system) two"
    )


def test_partials_are_keyed_by_source_and_segment() -> None:
    v, _ = view(tty=True)
    v.handle(partial(1, "from the mic"))
    v.handle(partial(1, "from the speakers", source="system"))
    assert set(v.partials) == {("mic", 1), ("system", 1)}
    v.handle(final(1, "mic final"))
    assert set(v.partials) == {("system", 1)}
    assert set(v.finals) == {("mic", 1)}


def test_a_final_also_retires_older_partials_of_its_source_and_late_partials_are_ignored() -> None:
    v, out = view(tty=False)
    v.handle(partial(1, "abandoned"))
    v.handle(partial(2, "next"))
    v.handle(final(2, "next one"))
    assert v.partials == {}
    before = out.getvalue()
    v.handle(partial(2, "stale"))
    assert v.partials == {}
    assert out.getvalue() == before


def test_finals_are_ordered_by_segment_whatever_the_arrival_order() -> None:
    v, _ = view(tty=False)
    for n, text in [(3, "three"), (1, "one"), (2, "two")]:
        v.handle(final(n, text))
    v.handle(final(2, "two", source="system"))
    assert [(m["segment_no"], m["source"]) for m in v.ordered_finals()] == [
        (1, "mic"),
        (2, "mic"),
        (2, "system"),
        (3, "mic"),
    ]
    assert v.text() == "one two two three"


def test_non_tty_prints_partials_with_tilde_only_when_they_change() -> None:
    v, out = view(tty=False)
    v.handle(partial(4, "hi", start=61_234, end=62_000))
    v.handle(partial(4, "hi"))
    v.handle(partial(4, "hi there", start=61_234, end=62_500))
    v.handle(final(4, "hi there", start=61_234, end=62_600))
    v.handle(final(4, "hi there", start=61_234, end=62_600))  # a replayed duplicate
    assert out.getvalue().splitlines() == [
        "~#4 [01:01.234-01:02.000] (mic) hi",
        "~#4 [01:01.234-01:02.500] (mic) hi there",
        "#4 [01:01.234-01:02.600] (mic) hi there",
    ]
    assert "\x1b" not in out.getvalue()


def test_other_messages_are_described_on_their_own_line() -> None:
    v, out = view(tty=False)
    v.handle({"type": "error", "code": 4401, "message": "bad token", "ts": "x", "text": None})
    v.handle({"type": "status", "event": "stream.started", "stream_id": "s1", "engine": "local"})
    assert out.getvalue().splitlines() == [
        "[error] code=4401 message=bad token",
        "[status] event=stream.started stream_id=s1 engine=local",
    ]
    assert describe({"type": "pong"}) == "[pong]"


def test_tty_status_line_is_cut_to_the_terminal_width() -> None:
    v, out = view(tty=True, width=30)
    v.handle(partial(1, "a rather long partial transcript that would wrap"))
    line = out.getvalue().rsplit(CLEAR, 1)[-1]
    assert len(line) < 30
    assert line.endswith("that would wrap")


def test_close_ends_a_visible_status_line() -> None:
    v, out = view(tty=True)
    v.close()
    assert out.getvalue() == ""
    v.handle(partial(1, "x"))
    v.close()
    assert out.getvalue().endswith("x\n")


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "00:00.000"), (999, "00:00.999"), (61_234, "01:01.234"), (3_600_000, "60:00.000")],
)
def test_format_ms(ms: int, text: str) -> None:
    assert format_ms(ms) == text


def test_format_segment_names_its_speaker() -> None:
    msg = final(3, "left side", "recording") | {"speaker": "ch1"}
    assert format_segment(msg) == "#3 [00:00.000-00:01.500] (recording ch1) left side"


def test_format_segment() -> None:
    assert format_segment(final(12, "ok", "system", 1_000, 2_500)) == (
        "#12 [00:01.000-00:02.500] (system) ok"
    )


def corrected(n: int, text: str, edited_by: str, source: str = "mic") -> dict[str, Any]:
    return {
        "type": "status",
        "event": "segment.corrected",
        "meeting_id": "m1",
        "segment_no": n,
        "text": text,
        "start_ms": 0,
        "end_ms": 2000,
        "speaker": None,
        "source": source,
        "edited_by": edited_by,
    }


def test_an_editors_correction_replaces_the_finals_text() -> None:
    v, out = view(tty=False)
    v.handle(final(1, "helo world"))
    v.handle(corrected(1, "hello world", "alice"))
    assert v.text() == "hello world"
    last = out.getvalue().splitlines()[-1]
    assert last == "#1 [00:00.000-00:01.500] (mic) hello world (corrected)"


def test_a_gateway_correction_is_the_whole_final_held_or_not() -> None:
    v, out = view(tty=False)
    v.handle(final(1, "the live text", source="mic"))
    # The number went to a recording's final too: the store keeps the recording's.
    v.handle(corrected(1, "the recording", "gateway", source="recording"))
    assert list(v.finals) == [("recording", 1)]
    assert v.text() == "the recording"
    assert out.getvalue().splitlines()[-1] == "#1 [00:00.000-00:02.000] (recording) the recording"
    v.handle(corrected(2, "not held before", "gateway"))
    assert v.text() == "the recording not held before"


def test_an_editors_correction_of_an_unheld_final_prints_nothing() -> None:
    v, out = view(tty=False)
    v.handle(corrected(7, "text", "alice"))
    assert v.finals == {} and out.getvalue() == ""
