"""Stored live tips, on SQLite and PostgreSQL: read back in pages past any cap, oldest first,
only those citing a final after the one asked for."""

from __future__ import annotations

from store.base import NewFinal
from store.catalog_sql import SqlMeetingCatalog
from store.sql import SqlTranscriptStore
from store.tips import NewTip, TipStore


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
    assert (await tips.add("t1", "m1", NewTip("decision", "next", (3,)), "rules")).tip_no == 4
    again = await catalog.correct_final("t1", "m1", 2, "[removed]", editor="ed")
    assert again is not None and again.withdrawn_tips == ()  # already withdrawn
