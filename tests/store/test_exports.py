"""Export formats (pure functions)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest

from store.base import FinalSegment
from store.exports import (
    EXPORT_FORMATS,
    REORDER_CUES,
    Timeline,
    in_clock_order,
    render,
    stream,
    to_json,
    to_srt,
    to_text,
    to_vtt,
    voiced_by_source,
)

CREATED = datetime(2025, 3, 1, tzinfo=UTC)
SRT_TIMING = re.compile(r"^(\d{2}):(\d{2}):(\d{2}),(\d{3}) --> (\d{2}):(\d{2}):(\d{2}),(\d{3})$")
VTT_TIMING = re.compile(r"^(\d{2}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2}):(\d{2}):(\d{2})\.(\d{3})$")


def seg(
    no: int,
    text: str,
    start_ms: int,
    end_ms: int,
    speaker: str | None = None,
    confidence: float | None = None,
    source: str = "mic",
) -> FinalSegment:
    return FinalSegment(no, text, start_ms, end_ms, source, speaker, confidence, CREATED)


SEGMENTS = [
    seg(1, "Hello there.", 0, 1500, speaker="Ada", confidence=0.92),
    seg(2, "General Kenobi!", 1500, 3_723_456, source="system"),
    seg(3, "a < b && c > d", 3_723_456, 3_724_000, speaker="Bob <ops>"),
]


def _ms(parts: tuple[str, ...]) -> tuple[int, int]:
    h1, m1, s1, f1, h2, m2, s2, f2 = map(int, parts)
    return (h1 * 3600 + m1 * 60 + s1) * 1000 + f1, (h2 * 3600 + m2 * 60 + s2) * 1000 + f2


def parse_srt(body: str) -> list[tuple[int, tuple[int, int], list[str]]]:
    """Strict SubRip reader: numbered blocks from 1, one timing line, >=1 text line."""
    if not body:
        return []
    assert body.endswith("\n\n") and not body.endswith("\n\n\n")
    cues = []
    for expected_no, block in enumerate(body[:-2].split("\n\n"), start=1):
        number, timing, *text = block.split("\n")
        assert int(number) == expected_no
        match = SRT_TIMING.match(timing)
        assert match, timing
        assert text and all(line.strip() for line in text)
        cues.append((expected_no, _ms(match.groups()), text))
    return cues


def parse_vtt(body: str) -> list[tuple[str, tuple[int, int], list[str]]]:
    assert body.startswith("WEBVTT\n")
    rest = body.removeprefix("WEBVTT\n")
    if not rest:
        return []
    assert rest.startswith("\n")  # blank line after the header
    rest = rest[1:]
    assert rest.endswith("\n") and not rest.endswith("\n\n")
    cues = []
    for block in rest[:-1].split("\n\n"):
        ident, timing, *text = block.split("\n")
        assert "-->" not in ident
        match = VTT_TIMING.match(timing)
        assert match, timing
        assert text and all(line.strip() and "-->" not in line for line in text)
        cues.append((ident, _ms(match.groups()), text))
    return cues


def test_json_shape() -> None:
    doc = json.loads(to_json("m-1", SEGMENTS[:2]))
    assert doc == {
        "meeting_id": "m-1",
        "segments": [
            {
                "segment_no": 1,
                "text": "Hello there.",
                "start_ms": 0,
                "end_ms": 1500,
                "speaker": "Ada",
                "confidence": 0.92,
                "source": "mic",
                "stream_id": None,
                "meeting_start_ms": 0,
                "meeting_end_ms": 1500,
            },
            {
                "segment_no": 2,
                "text": "General Kenobi!",
                "start_ms": 1500,
                "end_ms": 3_723_456,
                "speaker": None,
                "confidence": None,
                "source": "system",
                "stream_id": None,
                "meeting_start_ms": 1500,
                "meeting_end_ms": 3_723_456,
            },
        ],
    }


def test_json_keeps_unicode_readable() -> None:
    assert "Grüße" in to_json("m", [seg(1, "Grüße", 0, 1)])


def test_srt_blocks_and_timestamps() -> None:
    body = to_srt(SEGMENTS)
    assert body.startswith("1\n00:00:00,000 --> 00:00:01,500\nAda: Hello there.\n\n2\n")
    assert "00:00:01,500 --> 01:02:03,456\nGeneral Kenobi!\n" in body
    cues = parse_srt(body)
    assert [c[1] for c in cues] == [(s.start_ms, s.end_ms) for s in SEGMENTS]
    # SubRip has no escaping: a word joiner keeps "<ops>" from reading as a tag
    assert cues[2][2] == ["Bob <\u2060ops>: a <\u2060 b && c > d"]


def test_srt_numbers_consecutively_even_when_segment_numbers_do_not() -> None:
    body = to_srt([seg(7, "x", 0, 1), seg(9, "y", 1, 2)])
    assert [c[0] for c in parse_srt(body)] == [1, 2]


def test_blank_lines_in_text_cannot_break_blocks() -> None:
    segments = [seg(1, "first\n\n\nsecond\n", 0, 1000), seg(2, "  \n", 1000, 2000)]
    assert [c[2] for c in parse_srt(to_srt(segments))] == [["first", "second"]]
    assert [c[2] for c in parse_vtt(to_vtt(segments))] == [["first", "second"]]


def test_a_final_of_invisible_characters_has_no_cue_and_no_line() -> None:
    """A correction to a zero-width space and a no-break space shows nothing: no cue, no line.
    An emoji sequence holds joiners (invisible) and is kept."""
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    segments = [
        seg(1, "\u200b\u00a0 ", 0, 1000),
        seg(2, "\u200e\n\u2060", 1000, 2000),
        seg(3, family, 2000, 3000),
    ]
    assert [c[2] for c in parse_srt(to_srt(segments))] == [[family]]
    assert [c[2] for c in parse_vtt(to_vtt(segments))] == [[family]]
    assert to_text(segments).splitlines() == [f"[00:00:02] {family}"]


def test_a_speaker_label_that_shows_nothing_names_no_one() -> None:
    """An engine's label of blanks or a zero-width space made `<v >` (invalid WebVTT: a voice
    needs a name) and lines starting ": "."""
    segments = [seg(1, "one", 0, 1000, speaker="  "), seg(2, "two", 1000, 2000, speaker="\u200b")]
    assert [c[2] for c in parse_vtt(to_vtt(segments))] == [["one"], ["two"]]
    assert [c[2] for c in parse_srt(to_srt(segments))] == [["one"], ["two"]]
    assert to_text(segments).splitlines() == ["[00:00:00] one", "[00:00:01] two"]


def test_a_right_to_left_name_is_isolated_from_the_text_after_it() -> None:
    """Unisolated, "שלום: 42 items" is displayed "42 :שלום items" (the number joins the name's
    run). A left-to-right name is left as it is."""
    shalom = "\u05e9\u05dc\u05d5\u05dd"  # Hebrew
    segments = [seg(1, "42 items", 0, 1000, speaker=shalom), seg(2, "ok", 1000, 2000, "Ada")]
    assert [c[2] for c in parse_srt(to_srt(segments))] == [
        [f"\u2068{shalom}\u2069: 42 items"],
        ["Ada: ok"],
    ]
    assert to_text(segments).splitlines()[0] == f"[00:00:00] \u2068{shalom}\u2069: 42 items"
    assert parse_vtt(to_vtt(segments))[0][2] == [f"<v {shalom}>42 items"]  # not rendered: as it is


def test_vtt_cues_voice_and_escaping() -> None:
    body = to_vtt(SEGMENTS)
    assert body.startswith("WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.500\n<v Ada>Hello there.\n\n")
    cues = parse_vtt(body)
    assert [c[0] for c in cues] == ["1", "2", "3"]  # identifier = segment_no
    assert [c[1] for c in cues] == [(s.start_ms, s.end_ms) for s in SEGMENTS]
    assert cues[1][2] == ["General Kenobi!"]  # no speaker, no voice span
    assert cues[2][2] == ["<v Bob &lt;ops&gt;>a &lt; b &amp;&amp; c &gt; d"]


def test_clamps_bad_times() -> None:
    # Never negative, and a cue ends after it starts (WebVTT requires it): at least 1 ms.
    segments = [seg(1, "backwards", 5000, 4000), seg(2, "negative", -20, 10), seg(3, "0", 7, 7)]
    expected = [(0, 10), (7, 8), (5000, 5001)]
    assert [c[1] for c in parse_srt(to_srt(segments))] == expected
    assert [c[1] for c in parse_vtt(to_vtt(segments))] == expected


T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
# mic and system from 09:00:00 and 09:00:02, the mic again (a reconnect) from 09:01:00.
STARTS = {"mic-1": T0, "sys-1": T0 + timedelta(seconds=2), "mic-2": T0 + timedelta(minutes=1)}


def on(
    stream_id: str | None, no: int, start_ms: int, end_ms: int, text: str = "words"
) -> FinalSegment:
    source = "system" if (stream_id or "").startswith("sys") else "mic"
    return FinalSegment(no, text, start_ms, end_ms, source, None, None, CREATED, stream_id)


def test_cues_of_two_sources_and_a_reconnect_run_on_the_meetings_clock() -> None:
    """Each stream's time starts at 0; the cues are placed by when their stream started and
    written in start order, so WebVTT's starts never go back."""
    segments = [
        on("sys-1", 1, 0, 3000, "system first"),  # 09:00:02
        on("mic-1", 2, 1000, 6000, "mic long"),  # 09:00:01, numbered when it ended
        on("sys-1", 3, 4000, 5000, "system second"),  # 09:00:06
        on("mic-2", 4, 500, 1500, "after the reconnect"),  # 09:01:00.5
        on(None, 5, 90_000, 91_000, "a recording's"),  # no stream known: its own time
    ]
    timeline = Timeline(STARTS)
    expected = [(1000, 6000), (2000, 5000), (6000, 7000), (60_500, 61_500), (90_000, 91_000)]
    assert [c[1] for c in parse_srt(to_srt(segments, timeline))] == expected
    vtt = parse_vtt(to_vtt(segments, timeline))
    assert [(c[0], c[1]) for c in vtt] == list(
        zip(["2", "1", "3", "4", "5"], expected, strict=True)
    )
    assert to_text(segments, timeline).splitlines() == [
        "[00:00:02] system first",
        "[00:00:01] mic long",
        "[00:00:06] system second",
        "[00:01:00] after the reconnect",
        "[00:01:30] a recording's",
    ]
    # Without the streams' starts a final keeps the time of its own stream.
    assert [c[1][0] for c in parse_srt(to_srt(segments))] == [0, 500, 1000, 4000, 90_000]
    # JSON keeps both: the stream's time as stored, its stream, and the meeting's clock (a JSON
    # reader could not put a reconnected source's finals, back at 0, on one timeline).
    items = json.loads(to_json("m", segments, timeline))["segments"]
    assert [(i["start_ms"], i["stream_id"]) for i in items][3] == (500, "mic-2")
    assert [(i["meeting_start_ms"], i["meeting_end_ms"]) for i in items] == [
        (2000, 5000),
        (1000, 6000),
        (6000, 7000),
        (60_500, 61_500),
        (90_000, 91_000),
    ]


def test_a_cue_later_than_the_reorder_window_starts_with_the_cue_before_it() -> None:
    early = on("mic-1", REORDER_CUES + 2, 100, 400, "very late")
    within = [on("mic-1", n, 1000 * n, 1000 * n + 500) for n in range(1, REORDER_CUES + 1)]
    assert parse_srt(to_srt([*within, early]))[0][1:] == ((100, 400), ["very late"])
    beyond = [*within, on("mic-1", REORDER_CUES + 1, 99_000, 99_500)]
    cues = parse_srt(to_srt([*beyond, early]))
    assert [c[1:] for c in cues[:2]] == [((1000, 1500), ["words"]), ((1000, 1001), ["very late"])]
    assert [c[1][0] for c in cues] == sorted(c[1][0] for c in cues)


async def test_streams_merged_on_the_meetings_clock_keep_every_cue_at_its_own_time() -> None:
    """A recording uploaded after a live stream: its finals are numbered after all the live
    ones but start at 0, further back than CueOrder can wait for. Merged stream by stream, no
    cue is moved."""
    live = [on("mic-1", n, 3000 * n, 3000 * n + 2000) for n in range(1, 101)]
    recording = [on("rec:job-1", 100 + n, 2900 * n, 2900 * n + 1000) for n in range(1, 21)]
    timeline = Timeline(STARTS)

    opened: list[str] = []

    def stream(name: str, finals: list[FinalSegment]) -> Callable[[], AsyncIterator[FinalSegment]]:
        async def each() -> AsyncIterator[FinalSegment]:
            opened.append(name)
            for final in finals:
                yield final

        return each

    late = [on("sys-9", 200, 0, 500, "much later")]  # a stream that starts 1 h in
    starts = {**STARTS, "sys-9": T0 + timedelta(hours=1)}
    timeline = Timeline(starts)
    streams = [
        (timeline.offset("sys-9"), stream("late", late)),
        (timeline.offset("mic-1"), stream("live", live)),
        (timeline.offset("rec:job-1"), stream("recording", recording)),
    ]
    merged = [f async for f in in_clock_order(streams, timeline)]
    assert merged[-1].text == "much later"
    # Opened as the merge reached them: the late stream after every earlier final was out.
    assert opened == ["live", "recording", "late"]
    merged = merged[:-1]
    expected = sorted(timeline.span(f) for f in live + recording)
    assert [c[1] for c in parse_srt(to_srt(merged, timeline))] == expected
    assert [c[1] for c in parse_vtt(to_vtt(merged, timeline))] == expected
    # In number order the recording's cues would be squeezed to 1 ms at the last live start.
    assert [c[1] for c in parse_srt(to_srt(live + recording, timeline))] != expected
    assert [f async for f in in_clock_order([], timeline)] == []
    assert len([f async for f in in_clock_order(streams, timeline)]) == 121


@pytest.mark.parametrize("fmt", ["srt", "vtt", "txt"])
@pytest.mark.parametrize("batch", [1, 7, 500])
async def test_streamed_exports_on_the_meetings_clock_are_the_rendered_ones(
    fmt: str, batch: int
) -> None:
    # Two sources whose finals overlap, numbered as each ends: more than REORDER_CUES of them.
    segments = []
    for n in range(1, 200):
        stream_id = "mic-1" if n % 2 else "sys-1"
        segments.append(on(stream_id, n, 1000 * n - (1500 if n % 2 else 0), 1000 * n + 700))

    async def batches() -> AsyncIterator[list[FinalSegment]]:
        for i in range(0, len(segments), batch):
            yield segments[i : i + batch]

    timeline = Timeline(STARTS)
    streamed = "".join([part async for part in stream(fmt, "m1", batches(), (), timeline)])
    assert streamed == render(fmt, "m1", segments, timeline)[0]
    if fmt == "vtt":
        starts = [c[1][0] for c in parse_vtt(streamed)]
        assert starts == sorted(starts) and len(starts) == len(segments)


def test_long_meetings_format_hours() -> None:
    ms = ((12 * 60 + 34) * 60 + 56) * 1000 + 789
    assert "12:34:56,789 --> 12:34:56,790" in to_srt([seg(1, "late", ms, ms)])
    assert "12:34:56.789 --> 12:34:56.790" in to_vtt([seg(1, "late", ms, ms)])
    assert to_text([seg(1, "late", ms, ms)]) == "[12:34:56] late\n"


def test_text_one_line_per_final() -> None:
    segments = [
        *SEGMENTS,
        seg(4, "multi\nline  text", 61_000, 62_000),
        seg(5, "named", 62_000, 63_000, speaker="Bob\n[00:00:00] CEO"),  # an edited name
        seg(6, " \n\t ", 63_000, 64_000, speaker="Bob"),  # nothing to say: no line, as SRT
    ]
    assert to_text(segments) == (
        "[00:00:00] Ada: Hello there.\n"
        "[00:00:01] General Kenobi!\n"
        "[01:02:03] Bob <ops>: a < b && c > d\n"
        "[00:01:01] multi line text\n"
        "[00:01:02] Bob [00:00:00] CEO: named\n"
    )


def test_empty_transcripts() -> None:
    assert json.loads(to_json("m", [])) == {"meeting_id": "m", "segments": []}
    assert to_srt([]) == ""
    assert to_vtt([]) == "WEBVTT\n"
    assert parse_vtt(to_vtt([])) == []
    assert to_text([]) == ""


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [
        ("json", "application/json"),
        ("srt", "application/x-subrip; charset=utf-8"),
        ("vtt", "text/vtt; charset=utf-8"),
        ("txt", "text/plain; charset=utf-8"),
    ],
)
def test_render_dispatches(fmt: str, media_type: str) -> None:
    body, got_type = render(fmt, "m-1", SEGMENTS)
    assert got_type == media_type == EXPORT_FORMATS[fmt][0]
    expected = {
        "json": to_json("m-1", SEGMENTS),
        "srt": to_srt(SEGMENTS),
        "vtt": to_vtt(SEGMENTS),
        "txt": to_text(SEGMENTS),
    }[fmt]
    assert body == expected


def test_render_unknown_format_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'docx'.*json, srt, txt, vtt"):
        render("docx", "m", SEGMENTS)


@pytest.mark.parametrize("fmt", sorted(EXPORT_FORMATS))
@pytest.mark.parametrize("batch", [1, 2, 50])
async def test_streamed_export_is_the_rendered_export(fmt: str, batch: int) -> None:
    segments = [
        *SEGMENTS,
        seg(4, "   ", 3_724_000, 3_725_000),
        seg(5, "after blank", 3_725_000, 3_726_000),
    ]

    async def batches() -> AsyncIterator[list[FinalSegment]]:
        for i in range(0, len(segments), batch):
            yield segments[i : i + batch]

    streamed = "".join([part async for part in stream(fmt, "m1", batches())])
    assert streamed == render(fmt, "m1", segments)[0]


async def test_a_streamed_export_of_an_unknown_format_fails_before_any_output() -> None:
    async def nothing() -> AsyncIterator[list[FinalSegment]]:
        yield []

    with pytest.raises(ValueError, match="unknown export format"):
        await anext(stream("pdf", "m1", nothing()))


# What players do (ffmpeg, VLC): any line holding a timing arrow starts a cue, whether or not a
# blank line comes before it.
LENIENT_TIMING = re.compile(r"\d+:\d+:\d+[,.]\d+\s*-[ -]*>\s*\d+:\d+:\d+[,.]\d+")

FORGERIES = [
    "Hello.\n\n2\n00:00:09,000 --> 00:00:10,000\nforged",
    "Hello.\r\n\r\n2\r\n00:00:09,000 ---> 00:00:10,000\r\nforged",
    "Hello.\n \n00:00:09.000 --> 00:00:10.000 line:0\nforged",
    "Hello. 00:00:09,000 -->00:00:10,000",
    "Hello.\n00:00:09,000 - -> 00:00:10,000",
    "Hello.\n00:00:09,000 -> 00:00:10,000",
    "Hello.\u2028\u20282\u202800:00:09,000 --> 00:00:10,000\u2028forged",
]


def lenient_cue_count(body: str) -> int:
    return sum(1 for line in body.splitlines() if LENIENT_TIMING.search(line))


@pytest.mark.parametrize("text", FORGERIES)
def test_final_text_cannot_forge_an_srt_cue(text: str) -> None:
    segments = [seg(1, text, 0, 1000), seg(2, "next", 1000, 2000, speaker="A\n\n-->B")]
    body = to_srt(segments)
    assert lenient_cue_count(body) == 2
    cues = parse_srt(body)  # blank lines inside cue text are gone too (strict reader)
    assert [c[1] for c in cues] == [(0, 1000), (1000, 2000)]
    assert not any("-->" in line for _, _, lines in cues for line in lines)
    assert cues[0][2][0] == "Hello." or cues[0][2][0].startswith("Hello. ")
    assert "\u2192" in body  # the words are kept, the arrow is neutralised


@pytest.mark.parametrize("text", FORGERIES)
def test_final_text_cannot_forge_a_vtt_cue(text: str) -> None:
    segments = [seg(1, text, 0, 1000), seg(2, "next", 1000, 2000, speaker="A\n\n-->B")]
    body = to_vtt(segments)
    assert lenient_cue_count(body) == 2
    cues = parse_vtt(body)  # no "-->" in any cue text line, no blank line inside a cue
    assert [(c[0], c[1]) for c in cues] == [("1", (0, 1000)), ("2", (1000, 2000))]


def test_text_stamps_past_99_hours_keep_their_seconds() -> None:
    assert to_text([seg(1, "long", 360_000_000, 360_001_000)]) == "[100:00:00] long\n"


def test_control_characters_never_reach_a_reader_s_terminal() -> None:
    """A corrected final holding terminal escapes: SRT, WebVTT and text carry blanks instead."""
    hostile = seg(1, "ok\x1b]0;pwned\x07\x1b[2J done\x9b", 0, 1000, speaker="A\x1bB")
    for body in (to_srt([hostile]), to_vtt([hostile]), to_text([hostile])):
        assert not re.search(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]", body), repr(body)
        assert "ok" in body and "done" in body


def test_srt_text_cannot_read_as_markup() -> None:
    """SubRip has no escapes: a corrected final of "<font color=#fff>", "< b>", "{\\an8}" or
    "{y:i}" restyled, hid or moved the subtitle in VLC, mpv and FFmpeg ("I <3 you > all" lost
    its middle). A word joiner after every opener keeps it text."""
    text = "Use <b>bold</b>, < b>x</ b>, {\\an8}top, {y:i}it, I <3 you > all, {x}."
    (cue,) = parse_srt(to_srt([seg(1, text, 0, 1000)]))
    (line,) = cue[2]
    assert not re.search(r"[<{](?!\u2060)", line), line
    assert line.replace("\u2060", "") == text


def test_a_final_without_a_speaker_is_labelled_by_its_source_when_sources_differ() -> None:
    """A desktop client's two sources, the local engine naming no speaker: subtitles and text
    showed no "who said it" at all (the viewer shows the source)."""
    segments = [on("mic-1", 1, 0, 900, "mine"), on("sys-1", 2, 1000, 1900, "theirs")]
    segments.append(FinalSegment(3, "named", 2000, 2900, "system", "Ada", None, CREATED, "sys-1"))
    labelled = voiced_by_source(segments, {"mic", "system"})
    assert to_text(labelled).splitlines() == [
        "[00:00:00] mic: mine",
        "[00:00:01] system: theirs",
        "[00:00:02] Ada: named",
    ]
    assert "<v mic>mine" in to_vtt(labelled) and "system: theirs" in to_srt(labelled)
    # One source: nothing to tell apart, nothing added.
    assert voiced_by_source(segments[:1], {"mic"}) == segments[:1]
