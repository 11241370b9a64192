"""Which backend a meeting's tips use: the richest its streams asked for, kept to the end."""

from __future__ import annotations

from fanout.bus_memory import InProcessBus
from fanout.coordinator_local import LocalCoordinator
from gateway.observability.metrics import Metrics
from gateway.pipeline.live_tips import LiveTips
from ingest.insights.rules import RulesInsights


async def test_a_super_streams_tips_keep_its_backend_after_the_stream_ends() -> None:
    rules, configured = RulesInsights(), RulesInsights()  # two backends, told apart by identity
    configured.name = "configured"
    tips = LiveTips(
        bus=InProcessBus(),
        coordinator=LocalCoordinator(),
        store=None,  # type: ignore[arg-type] - not read by the choice of backend
        tips=None,  # type: ignore[arg-type]
        rules=rules,
        configured=configured,
        mode="handshake",
        min_interval_s=1,
        call_timeout_s=1,
        max_calls=1,
        holder="a",
        metrics=Metrics(),
    )
    key = ("acme", "m1")
    unwant_standard = tips.want(*key, "standard")
    unwant_super = tips.want(*key, "super")
    assert tips.backend_of(key) is configured
    unwant_super()  # the super stream ends; its follower makes the last tips
    assert tips.backend_of(key) is rules
    assert tips.backend_of(key, used=configured) is configured
    assert tips.backend_of(key, used=rules) is rules
    unwant_standard()
