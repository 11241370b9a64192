"""The meeting list, one meeting's summary and full-text search, over SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import update

from store import search_sql
from store.base import NewFinal, StreamProgress
from store.catalog import (
    FinalChangedMeanwhile,
    MeetingFilter,
    MeetingPosition,
    SearchFilter,
    SearchHit,
    TooManySpeakerNames,
)
from store.catalog_sql import SqlMeetingCatalog
from store.search import SearchPosition, parse_query
from store.search_sql import read_from_index
from store.sql import SqlTranscriptStore
from store.tables import ingest_streams
from tests.store.conftest import FakeClock
from tests.util import eventually, sessions_waiting_on_locks

LIVE_S = 15.0


def position(page: list[SearchHit]) -> SearchPosition:
    return SearchPosition(tuple(hit.row_id for hit in page), page[-1].score)


async def final(
    store: SqlTranscriptStore,
    tenant: str,
    meeting: str,
    text: str,
    *,
    speaker: str | None = None,
    source: str = "mic",
) -> int:
    n = await store.last_segment_no(tenant, meeting) + 1
    stored = await store.store_numbered_final(
        tenant,
        meeting,
        n,
        NewFinal(
            text=text, start_ms=n * 1000, end_ms=n * 1000 + 900, source=source, speaker=speaker
        ),
        store._clock(),
    )
    return stored.segment_no


async def test_meetings_newest_first_with_their_figures(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    await store.claim_meeting("t1", "old")
    clock.advance(60)
    await store.open_stream(
        "t1", "new", stream_id="s1", source="mic", engine="local", sample_rate=48000, channels=1
    )
    await final(store, "t1", "new", "hello there", speaker="Speaker 1")
    await final(store, "t1", "new", "general kenobi", speaker="Speaker 2", source="system")
    await store.update_streams([StreamProgress("s1", 5000, 250)])
    await store.claim_meeting("t2", "new")  # another tenant's meeting with the same id

    page = await catalog.list_meetings("t1", limit=10, live_within_s=LIVE_S)
    assert [m.meeting_id for m in page] == ["new", "old"]
    new, old = page
    assert (new.final_count, new.last_segment_no, new.duration_ms) == (2, 2, 5000)
    assert new.sources == ("mic", "system") and new.engines == ("local",)
    assert new.speakers == ("Speaker 1", "Speaker 2")
    assert new.live and not old.live
    assert new.last_activity_at >= new.created_at and new.streams == ()
    assert (old.final_count, old.duration_ms, old.sources) == (0, 0, ())

    clock.advance(LIVE_S + 1)  # the stream stopped refreshing: its replica is gone
    running = MeetingFilter(active=True)
    assert await catalog.list_meetings("t1", limit=10, where=running, live_within_s=LIVE_S) == []
    one = await catalog.meeting("t1", "new", live_within_s=LIVE_S)
    assert one is not None and [s.stream_id for s in one.streams] == ["s1"] and not one.live
    # Nobody will close its row: it ended by its last refresh, not runs forever.
    (lost,) = one.streams
    assert lost.ended_at is not None and lost.ended_at == lost.updated_at
    assert await catalog.meeting("t1", "missing", live_within_s=LIVE_S) is None
    assert await catalog.meeting("t3", "new", live_within_s=LIVE_S) is None


async def test_a_resumed_streams_audio_counts_from_where_it_started(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    # The meeting's duration is on its clock, as the exports: the longest stream alone said
    # 22 s of a 45 s meeting whose mic reconnected after 22 s.
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    opened = {"source": "mic", "engine": "local", "sample_rate": 16000, "channels": 1}
    await store.open_stream("t1", "m", stream_id="first", **opened)
    await store.update_streams([StreamProgress("first", 22000, 1100)])
    await store.close_stream("first", audio_ms=22000, frames=1100)
    clock.advance(23)
    await store.open_stream("t1", "m", stream_id="again", **opened)
    await store.update_streams([StreamProgress("again", 9600, 480)])
    one = await catalog.meeting("t1", "m", live_within_s=LIVE_S)
    assert one is not None and one.duration_ms == 23000 + 9600
    # One that says where its audio began (`resumes`: 18 s into the first, re-sent) counts from
    # there, as the exports place it, not from when it connected.
    began = clock.now - timedelta(seconds=5)
    clock.advance(10)
    await store.open_stream("t1", "m", stream_id="resumed", audio_started_at=began, **opened)
    await store.update_streams([StreamProgress("resumed", 30000, 1500)])
    one = await catalog.meeting("t1", "m", live_within_s=LIVE_S)
    assert one is not None and one.duration_ms == 18000 + 30000


async def test_filters_and_the_meetings_claim(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    start = clock.now
    for name in ("a", "b", "c"):
        await store.claim_meeting("t1", name)
        clock.advance(10)
    await store.open_stream(
        "t1", "b", stream_id="sb", source="mic", engine="local", sample_rate=16000, channels=1
    )

    async def ids(**kw: object) -> list[str]:
        where = MeetingFilter(**kw)  # type: ignore[arg-type]
        page = await catalog.list_meetings("t1", limit=10, where=where, live_within_s=LIVE_S)
        return [m.meeting_id for m in page]

    assert await ids(since=start + timedelta(seconds=5)) == ["c", "b"]
    assert await ids(until=start + timedelta(seconds=15)) == ["b", "a"]
    assert await ids(active=True) == ["b"]
    assert await ids(active=False) == ["c", "a"]
    assert await ids(meeting_ids=frozenset({"a", "c", "zzz"})) == ["c", "a"]


async def test_pages_neither_skip_nor_repeat_under_concurrent_inserts(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    for n in range(25):
        await store.claim_meeting("t1", f"m{n:02d}")
        if n % 3:
            clock.advance(1)  # some share a creation time: the id breaks the tie
    expected = [m.meeting_id for m in await catalog.list_meetings("t1", limit=100, live_within_s=1)]

    seen: list[str] = []
    after: MeetingPosition | None = None
    added = 0
    while True:
        page = await catalog.list_meetings("t1", limit=4, after=after, live_within_s=1)
        # Meetings created while a client pages (newer than all) do not shift later pages.
        clock.advance(1)
        await asyncio.gather(*(store.claim_meeting("t1", f"new{added + i}") for i in range(3)))
        added += 3
        if not page:
            break
        seen.extend(m.meeting_id for m in page)
        after = MeetingPosition(page[-1].created_at, page[-1].meeting_id)
    assert seen == expected


async def test_search_english_and_turkish_with_filters(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    await final(store, "t1", "m1", "Good morning everyone.", speaker="Speaker 1")
    await final(store, "t1", "m1", "The Q3 budget review moves to Thursday.", speaker="Speaker 2")
    clock.advance(100)
    await final(store, "t1", "m2", "İSTANBUL ofisi bütçeyi onayladı.", speaker="Ayşe")
    await final(store, "t1", "m2", "Irmak kenarında toplantı yapacağız.")
    await final(store, "t1", "m2", "We decided the budget, finally.")
    await final(store, "t2", "m1", "The Q3 budget of another tenant.")

    async def hits(q: str, **kw: object) -> list[tuple[str, int]]:
        where = SearchFilter(**kw)  # type: ignore[arg-type]
        found = await catalog.search("t1", parse_query(q), limit=10, where=where)
        return [(h.meeting_id, h.segment_no) for h in found]

    assert sorted(await hits("budget")) == [("m1", 2), ("m2", 3)]
    assert await hits('"q3 budget"') == [("m1", 2)]
    assert await hits('"budget q3"') == []
    assert await hits("thurs*") == [("m1", 2)]
    assert await hits("budget", meeting_id="m2") == [("m2", 3)]
    assert await hits("budget", speaker="Speaker 2") == [("m1", 2)]
    assert await hits("budget", meeting_ids=frozenset({"m2"})) == [("m2", 3)]
    assert await hits("budget", since=clock.now) == [("m2", 3)]
    assert await hits("budget", until=clock.now) == [("m1", 2)]
    # Turkish: dotted and dotless i fold together, other letters keep their marks.
    assert await hits("istanbul") == [("m2", 1)]
    assert await hits("İstanbul") == [("m2", 1)]
    assert await hits("IRMAK") == await hits("\u0131rmak") == [("m2", 2)]
    assert await hits("bütçeyi") == [("m2", 1)]
    assert await hits("onayla*") == [("m2", 1)]
    assert await hits("'; DROP TABLE segments; --") == []
    assert await catalog.search("t2", parse_query("budget"), limit=10) != []


async def test_scripts_with_combining_marks_and_greek_are_found_whole_on_either_store(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    """On SQLite "बीत" found "बात" (both cut into letters); on PostgreSQL "बैठक", pointed Hebrew
    and a Greek word ending in sigma were not found at all (the multilingual tester)."""
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    await final(store, "t1", "m1", "बैठक कल होगी और हिन्दी में बात")
    await final(store, "t1", "m1", "שָׁלוֹם מֹשֶׁה")
    await final(store, "t1", "m1", "Ο ΟΔΥΣΣΕΑΣ ήρθε, ο κόσμος χαίρεται")  # noqa: RUF001
    await final(store, "t1", "m1", "مُحَمَّد قال")

    async def hits(q: str) -> list[int]:
        return sorted(h.segment_no for h in await catalog.search("t1", parse_query(q), limit=10))

    assert await hits("बैठक") == await hits("हिन्दी") == await hits('"कल होगी"') == [1]
    assert await hits("बीत") == []
    assert await hits("מֹשֶׁה") == [2]
    assert await hits("οδυσσεας") == await hits("ΟΔΥΣΣΕΑΣ") == await hits("οδυσσεασ") == [3]
    assert await hits("κοσμος") == []  # accents are kept
    assert await hits("κόσμος") == await hits("ΚΌΣΜΟΣ") == [3]
    assert await hits("مُحَمَّد") == [4]


async def test_phrases_match_adjacent_words_only(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    await final(store, "t1", "m1", "The Q3-budget review of İSTANBUL Ofisi is done.")
    await final(store, "t1", "m1", "Review the budget, then the q3 numbers.")
    await final(store, "t1", "m1", "budget budget review review")

    async def hits(q: str) -> list[int]:
        return sorted(h.segment_no for h in await catalog.search("t1", parse_query(q), limit=10))

    assert await hits('"budget review"') == [1, 3]
    assert await hits('"the q3 budget review"') == [1]
    assert await hits("q3-budg*") == [1]  # a phrase whose last word is a prefix
    assert await hits('"istanbul ofisi"') == await hits('"İstanbul OFİSİ"') == [1]
    assert await hits('"review budget"') == []
    assert await hits('"budget review" numbers') == []
    assert await hits('"the budget" numbers') == [2]
    # Python counts ² as part of a word, PostgreSQL splits there: no pair is asked for.
    await final(store, "t1", "m1", "x²y z")
    assert await hits('"x²y z"') == [4]
    # Two long words next to each other: their pair would pass a lexeme's 2,047 bytes.
    long_words = f"{'a' * 1100} {'b' * 1100} closing"
    await final(store, "t1", "m1", long_words)
    assert await hits('"closing"') == [5]


async def test_search_windows_past_the_probe_take_the_newest_matches(
    clocked_store: SqlTranscriptStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the newest DENSE_PROBE_ROWS finals, PostgreSQL walks on or reads the GIN index
    by the density it measured there; either way the window is the newest matches."""
    monkeypatch.setattr(search_sql, "DENSE_PROBE_ROWS", 30)
    monkeypatch.setattr(search_sql, "SEARCH_WINDOW", 12)
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    phrase, sparse, rare = [], [], []
    for n in range(1, 241):
        words = ["status"]
        if n % 4 == 0:
            words += ["budget", "review"]
            phrase.append(n)
        else:
            words += ["review", "of", "budget"]
        if n % 25 == 0:
            words.append("quarterly")
            sparse.append(n)
        if n in (3, 7):
            words.append("zephyr")
            rare.append(n)
        await final(store, "t1", "m1", " ".join(words))

    async def newest(q: str) -> list[int]:
        found = await catalog.search("t1", parse_query(q), limit=50)
        return sorted(h.segment_no for h in found)

    assert await newest("status") == list(range(229, 241))
    assert await newest('"budget review"') == phrase[-12:]
    assert await newest("quarterly") == sparse[-12:]
    assert await newest("zephyr") == rare


def test_the_index_is_read_when_its_matches_cost_less_than_the_walk() -> None:
    # 20,000 finals probed of 2 million: a phrase with 175 matches there has about 7,000 in
    # all (cheap to read from the index) but needs 114,000 more finals walked.
    assert read_from_index(175, 20_000, 2_000_000, window=1000)
    assert read_from_index(0, 20_000, 2_000_000, window=1000)
    # A word in 5 % of the finals: the next 19,000 finals walked hold the window; the index
    # would read 100,000 matches.
    assert not read_from_index(950, 20_000, 2_000_000, window=1000)
    assert read_from_index(950, 20_000, 21_000, window=1000)


async def test_search_ranks_pages_and_sees_live_finals_at_once(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    await final(store, "t1", "m1", "the budget was discussed among many other unrelated things")
    await final(store, "t1", "m1", "budget budget budget")
    terms = parse_query("budget")
    first = await catalog.search("t1", terms, limit=1)
    second = await catalog.search("t1", terms, limit=1, after=position(first))
    assert [h.segment_no for h in first + second] == [2, 1]
    assert first[0].score >= second[0].score
    assert await catalog.search("t1", terms, limit=1, after=position(second)) == []
    n = await final(store, "t1", "m1", "a brand new budget line")
    assert n in [h.segment_no for h in await catalog.search("t1", terms, limit=10)]


async def test_search_pages_hold_while_finals_are_stored_and_deleted(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    """Every hit the first page could see comes exactly once, in rank order, though better
    matches are stored, other finals are stored, and meetings holding hits are deleted between
    pages, the page's last hit's included."""
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    # Finals of one length: three scores, many ties.
    for i in range(30):
        times = 1 + i % 3
        await final(store, "t1", f"m{i % 5}", " ".join(["budget"] * times + ["item"] * (8 - times)))
    terms = parse_query("budget")
    where = SearchFilter(up_to_row=await catalog.search_horizon("t1"))
    pages = [await catalog.search("t1", terms, limit=7, where=where)]
    # The meetings of the page's first and last hits (the next page starts after the last hit
    # still there), and one none of its hits is in.
    deleted = {pages[0][0].meeting_id, pages[0][-1].meeting_id}
    deleted.add(next(f"m{i}" for i in range(5) if f"m{i}" not in deleted))
    assert any(h.meeting_id not in deleted for h in pages[0])
    for meeting in deleted:
        assert await catalog.delete_meeting("t1", meeting, announce=False)
    while len(pages[-1]) == 7:
        for i in range(10):  # matches ranked below every page, and finals of other lengths
            await final(store, "t1", "m-new", "budget " + "item " * 20)
            await final(store, "t2", "other", "a long unrelated final " * (i + 1))
        after = position(pages[-1])
        pages.append(await catalog.search("t1", terms, limit=7, after=after, where=where))
    seen = [(h.meeting_id, h.segment_no) for page in pages for h in page]
    expected = 30 - 6 * len(deleted) + sum(1 for h in pages[0] if h.meeting_id in deleted)
    assert len(seen) == len(set(seen)) == expected, seen
    assert all(meeting != "m-new" for meeting, _ in seen)
    for page in pages:  # scores from one read each
        assert [h.score for h in page] == sorted((h.score for h in page), reverse=True)


async def test_another_tenants_finals_move_neither_scores_nor_the_search_horizon(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    # Both reach the tenant (the score in each hit, the horizon in the cursor): neither may tell
    # it how many of another tenant's finals hold a word, or that another tenant stored any.
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    await final(store, "t1", "m1", "quarterly zeppelin review")
    await final(store, "t1", "m1", "the zeppelin and the zeppelin hangar")
    terms = parse_query("zeppelin")
    before = [(h.segment_no, h.score) for h in await catalog.search("t1", terms, limit=5)]
    horizon = await catalog.search_horizon("t1")
    for i in range(5):
        await final(store, "t2", "m9", f"zeppelin zeppelin plans {i}")
    assert [(h.segment_no, h.score) for h in await catalog.search("t1", terms, limit=5)] == before
    assert await catalog.search_horizon("t1") == horizon
    assert await catalog.search_horizon("t2") > horizon


async def test_titles_and_speaker_names_merge(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    await final(store, "t1", "m1", "hello", speaker="Speaker 1")
    assert await catalog.edit_meeting("t2", "m1", title="not yours") is None
    labels = await catalog.edit_meeting(
        "t1", "m1", title="Weekly sync", speakers={"Speaker 1": "Ayşe", "Speaker 2": "Bob"}
    )
    assert labels is not None and labels.title == "Weekly sync"
    assert labels.speaker_names == {"Speaker 1": "Ayşe", "Speaker 2": "Bob"}
    # Merge: a name given replaces, a null removes, others stay; the title stays unless given.
    labels = await catalog.edit_meeting("t1", "m1", speakers={"Speaker 2": None, "S3": "Can"})
    assert labels is not None and labels.title == "Weekly sync"
    assert labels.speaker_names == {"Speaker 1": "Ayşe", "S3": "Can"}
    assert (await catalog.labels("t1", "m1")).name("Speaker 1") == "Ayşe"
    assert (await catalog.labels("t1", "m1")).name("Speaker 9") == "Speaker 9"
    assert (await catalog.labels("t2", "m1")).speaker_names == {}
    (summary,) = await catalog.list_meetings("t1", limit=5, live_within_s=LIVE_S)
    assert summary.title == "Weekly sync" and summary.speaker_names["S3"] == "Can"
    labels = await catalog.edit_meeting("t1", "m1", title=None)
    assert labels is not None and labels.title is None


async def test_an_edit_may_not_take_a_meeting_past_its_speaker_name_limit(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    await final(store, "t1", "m1", "hello")
    five = {f"S{n}": f"Name {n}" for n in range(5)}
    await catalog.edit_meeting("t1", "m1", speakers=five)  # no limit: named before there was one
    with pytest.raises(TooManySpeakerNames):
        await catalog.edit_meeting("t1", "m1", title="x", speakers={"S9": "new"}, max_names=3)
    labels = await catalog.labels("t1", "m1")
    assert labels.title is None and labels.speaker_names == five  # nothing changed
    # Past the limit already: it can still be retitled, and shrink, even if not below it.
    labels = await catalog.edit_meeting("t1", "m1", title="ok", max_names=3)
    assert labels is not None and labels.title == "ok"
    labels = await catalog.edit_meeting(
        "t1", "m1", speakers={"S0": None, "S1": "Renamed"}, max_names=3
    )
    assert labels is not None and len(labels.speaker_names) == 4
    with pytest.raises(TooManySpeakerNames):  # nor back up to where it was
        await catalog.edit_meeting("t1", "m1", speakers={"S0": "again"}, max_names=3)


async def test_a_meeting_with_a_recording_to_run_is_not_inactive(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    from store.jobs import SUCCEEDED, JobStore, NewJob

    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    jobs = JobStore(clocked_store.engine, clock=clock)
    for meeting in ("uploaded", "quiet"):
        await final(store, "t1", meeting, "long ago")
    job, _ = await jobs.create(
        NewJob("t1", "uploaded", "/tmp/x.wav", 100, 60_000, "recording", "en", True, None)
    )
    day = 24 * 3600

    async def inactive() -> list[str]:
        before = clock() - timedelta(seconds=day)
        return [m.meeting_id for m in await catalog.inactive_meetings(before, limit=10)]

    clock.advance(3 * day)  # the job has queued for days: its upload waits for it
    assert await inactive() == ["quiet"]
    assert await jobs.claim("a", lease_s=60) is not None
    assert await jobs.finish(job.job_id, "a", SUCCEEDED)  # no finals: it ended just now
    assert await inactive() == ["quiet"]
    clock.advance(2 * day)
    assert sorted(await inactive()) == ["quiet", "uploaded"]


async def test_retentions_walk_sees_each_meeting_once_across_batches(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    """Meetings created at the same moment in several tenants, walked two at a time: each is
    listed once, in (created_at, tenant, meeting) order, whichever batch it falls in."""
    catalog = SqlMeetingCatalog(clocked_store.engine, clock=clock)
    made = []
    for moment in range(3):
        for tenant in ("t2", "t1", "t3"):
            for meeting in ("b", "a"):
                await clocked_store.claim_meeting(tenant, meeting + str(moment))
                made.append((moment, tenant, meeting + str(moment)))
        clock.advance(1)
    clock.advance(3 * 24 * 3600)
    before = clock() - timedelta(days=1)
    walked: list[tuple[str, str]] = []
    batch = await catalog.inactive_meetings(before, limit=2)
    while batch:
        walked.extend((m.tenant_id, m.meeting_id) for m in batch)
        batch = await catalog.inactive_meetings(before, limit=2, after=batch[-1])
    assert walked == [(tenant, meeting) for _, tenant, meeting in sorted(made)]


async def test_a_correction_keeps_the_original_and_is_searchable(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    store, catalog = clocked_store, SqlMeetingCatalog(clocked_store.engine, clock=clock)
    await final(store, "t1", "m1", "the budge review is on friday")
    fixed = await catalog.correct_final(
        "t1", "m1", 1, "the budget review is on Friday", editor="u1"
    )
    assert fixed is not None and fixed.original_text == "the budge review is on friday"
    again = await catalog.correct_final("t1", "m1", 1, "The budget review: Friday", editor="u2")
    assert again is not None and again.original_text == "the budge review is on friday"
    assert again.edited_by == "u2" and again.edited_at == clock.now
    (stored,) = await store.finals_after("t1", "m1")
    assert stored.text == "The budget review: Friday"
    assert await catalog.search("t1", parse_query("budge"), limit=5) == []
    assert len(await catalog.search("t1", parse_query("budget"), limit=5)) == 1
    assert await catalog.correct_final("t1", "m1", 2, "x", editor="u1") is None
    assert await catalog.correct_final("t2", "m1", 1, "x", editor="u1") is None
    # Made from a text the final no longer has (u2's came first): refused, nothing changed.
    with pytest.raises(FinalChangedMeanwhile) as changed:
        await catalog.correct_final(
            "t1",
            "m1",
            1,
            "budget: Friday",
            editor="u3",
            previous_text="the budget review is on Friday",
        )
    assert changed.value.edited_by == "u2"
    assert (await store.finals_after("t1", "m1"))[0].text == "The budget review: Friday"
    made = await catalog.correct_final(
        "t1", "m1", 1, "budget: Friday", editor="u3", previous_text="The budget review: Friday"
    )
    assert made is not None and made.text == "budget: Friday"


async def test_a_meeting_names_the_engines_of_its_recordings_too(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    from store.jobs import JobStore, NewJob

    catalog = SqlMeetingCatalog(clocked_store.engine, clock=clock)
    jobs = JobStore(clocked_store.engine, clock=clock)
    job, _ = await jobs.create(
        NewJob("t1", "uploaded", "/tmp/x.wav", 100, 60_000, "recording", "en", True, None)
    )
    assert await jobs.claim("a", lease_s=60) is not None
    await jobs.checkpoint(
        job.job_id,
        "a",
        chunk_index=0,
        audio_ms_done=30_000,
        finals=[],
        engines_ms={"deepgram": 20_000, "local": 10_000},
    )
    summary = await catalog.meeting("t1", "uploaded", live_within_s=15)
    assert summary is not None and summary.engines == ("deepgram", "local")
    assert summary.streams == ()  # recorded, not streamed
    # Another tenant's meeting of that name: not seen.
    assert (await catalog.meeting("t2", "uploaded", live_within_s=15)) is None


async def test_a_deletion_takes_stream_rows_in_the_order_a_refresh_does(pg_url: str) -> None:
    """PostgreSQL: a process refreshes all its streams' rows in one transaction, in stream-id
    order; a deletion of their meeting takes them in that order too, so neither is aborted as a
    deadlock, even when the table holds the rows in the other order."""
    from store.migrate import upgrade

    await upgrade(pg_url)
    store = SqlTranscriptStore(pg_url)
    catalog = SqlMeetingCatalog(store.engine)
    s = ingest_streams
    try:
        for stream_id, source in (("s-z", "mic"), ("s-a", "system")):
            await store.open_stream(
                "t1",
                "m1",
                stream_id=stream_id,
                source=source,
                engine="local",
                sample_rate=48000,
                channels=1,
            )
        async with store.engine.connect() as refresh:
            await refresh.execute(update(s).where(s.c.stream_id == "s-a").values(frames=1))
            deleting = asyncio.create_task(catalog.delete_meeting("t1", "m1"))

            async def deletion_waits() -> bool:
                assert not deleting.done(), "the deletion did not wait for the stream row"
                return await sessions_waiting_on_locks(pg_url) > 0

            await eventually(deletion_waits, what="the deletion waiting on a stream row")
            # The refresh's next row: a deletion that took it first would deadlock with it.
            await refresh.execute(update(s).where(s.c.stream_id == "s-z").values(frames=1))
            await refresh.commit()
        assert await asyncio.wait_for(deleting, 30)
        assert await store.active_streams("t1", "m1", fresh_within_s=60) == []
    finally:
        await store.aclose()
