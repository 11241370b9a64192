"""Stored live tips, on SQLite and PostgreSQL: read back in pages past any cap, oldest first,
only those citing a final after the one asked for."""

from __future__ import annotations

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
