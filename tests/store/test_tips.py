"""Stored live tips, on SQLite and PostgreSQL: read back in pages past any cap, oldest first,
only those citing a final after the one asked for."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select, update

from store import tips as store_tips
from store.base import NewFinal
from store.catalog_sql import SqlMeetingCatalog
from store.migrate import open_store, upgrade
from store.sql import SqlTranscriptStore
from store.tables import meeting_tips, meetings
from store.tips import NewTip, TipStore
from tests.util import eventually, sessions_waiting_on_locks


async def test_pages_give_every_tip_citing_a_later_final(store: SqlTranscriptStore) -> None:
    tips = TipStore(store.engine)
    for n in range(1, 12):  # tip n cites final n; tip 12 belongs to another meeting
        await tips.add("t1", "m1", NewTip("decision", f"tip {n}", (n,)), backend="rules")
    await tips.add("t1", "m2", NewTip("decision", "other", (9,)), backend="rules")

    pages = [page async for page in tips.pages_covering_after("t1", "m1", 2, page=4)]
    assert [len(page) for page in pages] == [4, 4, 1]
    assert [tip.tip_no for page in pages for tip in page] == list(range(3, 12))
    exact = [page async for page in tips.pages_covering_after("t1", "m1", 3, page=4)]
    assert [len(page) for page in exact] == [4, 4]  # a full last page, then an empty read
    assert [page async for page in tips.pages_covering_after("t1", "m1", 11, page=4)] == []


async def test_a_resume_gets_every_tip_stored_after_it_left_whatever_it_cites(
    store: SqlTranscriptStore,
) -> None:
    """A tip whose call outlasted many finals cites finals long before the newest: replayed by
    what it cites (40 before the resume point), a viewer that left after the call began and
    came back later never got it."""
    tips = TipStore(store.engine)

    async def finals(first: int, last: int) -> None:
        for n in range(first, last + 1):
            await store.append_final("t1", "m1", NewFinal(f"final {n}", n, n + 1, "mic"))

    await finals(1, 20)
    await tips.add("t1", "m1", NewTip("decision", "early", (3,)), backend="rules")  # newest 20
    await finals(21, 60)
    await tips.add("t1", "m1", NewTip("decision", "slow call", (4,)), backend="rules")  # 60
    await tips.add("t1", "m1", NewTip("question", "recent", (58,)), backend="rules")  # 60
    legacy = [
        await tips.add("t1", "m1", NewTip("summary", text, (cited,)), backend="rules")
        for text, cited in (("old row, recent", 50), ("old row, early", 5))
    ]
    async with store.engine.begin() as conn:  # as stored by a release before migration 0013
        await conn.execute(
            update(meeting_tips)
            .where(meeting_tips.c.tip_no.in_([tip.tip_no for tip in legacy if tip]))
            .values(newest_segment_no=None)
        )

    async def missed(since: int) -> list[str]:
        pages = tips.pages_missed_since("t1", "m1", since, slack=2, legacy_window=20)
        return [tip.text async for page in pages for tip in page]

    assert await missed(59) == ["slow call", "recent", "old row, recent"]
    assert await missed(61) == ["slow call", "recent", "old row, recent"]  # within the slack
    # Past the slack, by what they cite: 58 and 50 > 63 - 20 (a store lagging the live finals,
    # rows of the previous release), then 58 > 75 - 20 only.
    assert await missed(63) == ["recent", "old row, recent"]
    assert await missed(75) == ["recent"]
    assert await missed(80) == []
    assert await missed(19) == ["early", "slow call", "recent", "old row, recent", "old row, early"]


async def test_a_correction_withdraws_the_tips_citing_its_final_and_keeps_their_numbers(
    store: SqlTranscriptStore,
) -> None:
    """The tips were made from the words the correction replaced: they leave exports and
    histories (and the dedup memory), and the next tip does not take one of their numbers."""
    catalog, tips = SqlMeetingCatalog(store.engine), TipStore(store.engine)
    for n in (1, 2, 3):
        await store.append_final("t1", "m1", NewFinal(f"final {n}", n, n + 1, "mic"))
    await tips.add("t1", "m1", NewTip("decision", "from one and two", (1, 2)), backend="rules")
    await tips.add("t1", "m1", NewTip("question", "from three", (3,)), backend="rules")
    await tips.add("t1", "m1", NewTip("summary", "from two", (2,)), backend="rules")
    await tips.add("t1", "m2", NewTip("summary", "other meeting", (2,)), backend="rules")

    unchanged = await catalog.correct_final("t1", "m1", 2, "final 2", editor="ed")
    assert unchanged is not None and unchanged.withdrawn_tips == ()  # the same words
    fixed = await catalog.correct_final("t1", "m1", 2, "[redacted]", editor="ed")
    assert fixed is not None and fixed.withdrawn_tips == (1, 3)

    left = [tip async for page in tips.pages_covering_after("t1", "m1", 0) for tip in page]
    assert [(tip.tip_no, tip.text) for tip in left] == [(2, "from three")]
    assert [tip.tip_no for tip in await tips.latest("t1", "m1", 10)] == [2]
    (other,) = [tip async for page in tips.pages_covering_after("t1", "m2", 0) for tip in page]
    assert other.text == "other meeting"
    after = await tips.add("t1", "m1", NewTip("decision", "next", (3,)), "rules")
    assert after is not None and after.tip_no == 4
    again = await catalog.correct_final("t1", "m1", 2, "[removed]", editor="ed")
    assert again is not None and again.withdrawn_tips == ()  # already withdrawn
    # A replica of the previous release (no withdrawn_at filter) reads them no more either.
    t = meeting_tips
    async with store.engine.connect() as conn:
        previous_release = await conn.execute(
            select(t.c.tip_no, t.c.text).where(
                t.c.tenant_id == "t1", t.c.meeting_id == "m1", t.c.segment_no_high > 0
            )
        )
        assert sorted(previous_release.all()) == [(2, "from three"), (4, "next")]
    # Withdrawing the tips of the highest final cited: a new follower still starts after it.
    last = await catalog.correct_final("t1", "m1", 3, "[removed]", editor="ed")
    assert last is not None and last.withdrawn_tips == (2, 4)
    assert await tips.covered_through("t1", "m1") == 3


async def test_a_correction_racing_a_tips_insert_still_withdraws_it(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, read committed: the tip checked its words, then a correction committed and
    looked for tips before the tip's insert was visible. The check's shared locks make the
    correction wait for the tip, then find it."""
    await upgrade(pg_url)
    store = await open_store(pg_url)
    catalog, tips = SqlMeetingCatalog(store.engine), TipStore(store.engine)
    checked, go_on = asyncio.Event(), asyncio.Event()
    check = store_tips._words_changed

    async def check_then_wait(*args: Any) -> bool:
        changed = await check(*args)
        checked.set()
        await go_on.wait()  # the correction runs now, between the check and the insert
        return changed

    monkeypatch.setattr(store_tips, "_words_changed", check_then_wait)
    try:
        await store.append_final("t1", "m1", NewFinal("final 1", 1, 2, "mic"))
        tip = NewTip("decision", "from one", (1,))
        adding = asyncio.create_task(tips.add("t1", "m1", tip, "rules", made_from={1: "final 1"}))
        await checked.wait()
        correcting = asyncio.create_task(
            catalog.correct_final("t1", "m1", 1, "[redacted]", editor="ed")
        )
        await eventually(
            lambda: sessions_waiting_on_locks(pg_url), what="the correction waiting for the tip"
        )
        go_on.set()
        stored = await adding
        fixed = await correcting
        assert stored is not None and fixed is not None
        assert fixed.withdrawn_tips == (stored.tip_no,)
        assert await tips.latest("t1", "m1", 10) == []
    finally:
        await store.aclose()


async def test_a_tip_made_from_words_corrected_meanwhile_is_not_stored(
    store: SqlTranscriptStore,
) -> None:
    """The correction committed while the tip was being made: it found no tip to withdraw, so
    the tip must not be stored from the words it replaced."""
    catalog, tips = SqlMeetingCatalog(store.engine), TipStore(store.engine)
    for n in (1, 2):
        await store.append_final("t1", "m1", NewFinal(f"final {n}", n, n + 1, "mic"))
    read = {1: "final 1", 2: "final 2"}  # the window, as the tip's maker read it
    assert await catalog.correct_final("t1", "m1", 2, "[redacted]", editor="ed") is not None
    late = NewTip("decision", "from two", (2,))
    assert await tips.add("t1", "m1", late, "rules", made_from=read) is None
    unaffected = await tips.add(
        "t1", "m1", NewTip("question", "one", (1,)), "rules", made_from=read
    )
    assert unaffected is not None and unaffected.tip_no == 1


async def test_two_corrections_of_one_tips_finals_withdraw_it_once(pg_url: str) -> None:
    """PostgreSQL: both read the tip as not withdrawn and then queue on its row; the second,
    checking its condition again, must leave it as the first withdrew it (negated twice, its
    cited high came back positive and readable by a replica of the previous release)."""
    await upgrade(pg_url)
    store = await open_store(pg_url)
    catalog, tips = SqlMeetingCatalog(store.engine), TipStore(store.engine)
    try:
        for n in (1, 2):
            await store.append_final("t1", "m1", NewFinal(f"final {n}", n, n + 1, "mic"))
        await tips.add("t1", "m1", NewTip("decision", "from both", (1, 2)), "rules")
        t = meeting_tips
        async with store.engine.connect() as holder:  # holds the tip's row meanwhile
            await holder.execute(update(t).where(t.c.tip_no == 1).values(kind=t.c.kind))
            corrections = [
                asyncio.create_task(catalog.correct_final("t1", "m1", n, "[x]", editor="ed"))
                for n in (1, 2)
            ]

            async def both_queued() -> bool:
                return await sessions_waiting_on_locks(pg_url) == 2

            await eventually(both_queued, what="both corrections waiting on the tip's row")
            await holder.commit()
        reported = [fixed.withdrawn_tips for fixed in await asyncio.gather(*corrections)]
        assert sorted(reported) == [(), (1,)]
        async with store.engine.connect() as conn:
            high = await conn.scalar(select(t.c.segment_no_high).where(t.c.tip_no == 1))
        assert high == -2
    finally:
        await store.aclose()


async def test_a_correction_waits_for_a_deletion_holding_its_meeting(pg_url: str) -> None:
    """A deletion takes the meeting's row, then its tips, then its finals; a correction took
    its final, then its tips: each could wait for the other (a deadlock, one of them aborted).
    The correction takes the meeting's row first now, so it waits for the deletion."""
    await upgrade(pg_url)
    store = await open_store(pg_url)
    catalog = SqlMeetingCatalog(store.engine)
    try:
        await store.append_final("t1", "m1", NewFinal("final 1", 1, 2, "mic"))
        m = meetings
        async with store.engine.connect() as deletion:  # its first step, held
            await deletion.execute(
                select(m.c.meeting_id).where(m.c.meeting_id == "m1").with_for_update()
            )
            correcting = asyncio.create_task(
                catalog.correct_final("t1", "m1", 1, "[x]", editor="ed")
            )

            async def waiting() -> bool:
                return await sessions_waiting_on_locks(pg_url) == 1

            await eventually(waiting, what="the correction waiting for the meeting's row")
            assert not correcting.done()
            await deletion.commit()
        assert (await correcting) is not None
    finally:
        await store.aclose()
