"""Which backend a meeting's tips use: the richest its streams asked for, kept to the end."""

from __future__ import annotations

from collections.abc import Sequence

from fanout.bus_memory import InProcessBus
from fanout.coordinator_local import LocalCoordinator
from fanout.topics import transcript_topic
from gateway.observability.metrics import Metrics
from gateway.pipeline.live_tips import LiveTips
from gateway.pipeline.stored_finals import final_message
from ingest.insights.base import FinalLine, Insight
from ingest.insights.rules import RulesInsights
from store.base import NewFinal
from store.catalog_sql import SqlMeetingCatalog
from store.migrate import open_store
from store.sql import SqlTranscriptStore
from store.tips import TipStore
from tests.util import eventually


def live_tips(
    bus: InProcessBus,
    store: SqlTranscriptStore,
    tips: TipStore,
    rules: RulesInsights,
    configured: RulesInsights,
) -> LiveTips:
    """Live tips on one process, a call as soon as a final is new (no interval)."""
    return LiveTips(
        bus=bus,
        coordinator=LocalCoordinator(),
        store=store,
        tips=tips,
        rules=rules,
        configured=configured,
        mode="handshake",
        min_interval_s=0,
        call_timeout_s=30,
        max_calls=1,
        holder="a",
        metrics=Metrics(),
    )


async def test_a_super_streams_tips_keep_its_backend_after_the_stream_ends() -> None:
    rules, configured = RulesInsights(), RulesInsights()  # two backends, told apart by identity
    configured.name = "configured"
    # No store: the choice of backend reads none.
    tips = live_tips(InProcessBus(), None, None, rules, configured)  # type: ignore[arg-type]
    key = ("acme", "m1")
    unwant_standard = tips.want(*key, "standard")
    unwant_super = tips.want(*key, "super")
    assert tips.backend_of(key) is configured
    unwant_super()  # the super stream ends; its follower makes the last tips
    assert tips.backend_of(key) is rules
    assert tips.backend_of(key, used=configured) is configured
    assert tips.backend_of(key, used=rules) is rules
    unwant_standard()


class RecordingRules(RulesInsights):
    """The offline rules, noting the context each call was given (what an LLM would be sent)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[str], list[str]]] = []  # (window texts, recent tip texts)

    async def tips(
        self, window: Sequence[FinalLine], recent: Sequence[Insight], language: str
    ) -> list[Insight]:
        self.calls.append(([line.text for line in window], [tip.text for tip in recent]))
        return await super().tips(window, recent, language)


async def test_a_withdrawn_tips_words_are_not_sent_to_the_backend_again(sqlite_url: str) -> None:
    store = await open_store(sqlite_url)
    bus, tip_store, backend = InProcessBus(), TipStore(store.engine), RecordingRules()
    catalog = SqlMeetingCatalog(store.engine)
    tips = live_tips(bus, store, tip_store, backend, backend)
    tips.start()
    unwant = tips.want("acme", "m1", "standard")
    try:

        async def say(text: str) -> None:
            stored = await store.append_final("acme", "m1", NewFinal(text, 0, 1, "mic"))
            await bus.publish(transcript_topic("acme", "m1"), final_message("m1", stored))

        await say("We decided to move the launch to Friday.")
        await eventually(lambda: len(backend.calls) >= 1, within=30, what="the first call")

        async def stored() -> bool:
            return bool(await tip_store.latest("acme", "m1", 10))

        await eventually(stored, within=30, what="the decision stored")
        fixed = await catalog.correct_final("acme", "m1", 1, "[redacted]", editor="ed")
        assert fixed is not None and fixed.withdrawn_tips == (1,)
        await say("John will send the numbers by Thursday.")
        await eventually(lambda: len(backend.calls) >= 2, within=30, what="the next call")
        window, recent = backend.calls[-1]
        assert not any("launch" in text for text in window + recent), backend.calls[-1]
    finally:
        unwant()
        await tips.aclose()
        await store.aclose()
