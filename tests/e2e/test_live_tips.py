"""Live tips (`ai.tip`) through real gateways: made from a meeting of real (synthesised) speech
by the rules backend (`ai_mode: standard`), numbered and stored, replayed with `since`, exported
in JSON, produced by exactly one of two replicas on Redis, and shown in the viewer's side panel
in Chromium."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from playwright.async_api import expect

from gateway.client.ingest import StreamSummary, stream_pcm
from gateway.client.urls import ingest_url
from store.migrate import upgrade
from tests.e2e.browser import chromium, collect_errors, wait_for_state
from tests.e2e.harness import Gateway, KeyPair
from tests.e2e.speech import Watcher, watch
from tests.e2e.test_observability import scrape, stream_silence
from tests.synth import espeak_pcm
from tests.util import eventually

DEADLINE_S = 180.0
# Each sentence is its own utterance (espeak_pcm ends it with a second of silence).
MEETING = (
    "Good morning everyone, thanks for joining.",
    "We decided to move the product launch to Friday.",
    "John will send the updated numbers by Thursday.",
)
TIP_INTERVAL = {"INSIGHTS_MIN_INTERVAL_S": "0"}  # no wait between tips in tests


async def speak(
    gw: Gateway, token: str, meeting: str, source: str = "mic", **kw: Any
) -> StreamSummary:
    pcm = b"".join(espeak_pcm(sentence) for sentence in MEETING)
    summary = await stream_pcm(
        ingest_url(gw.http, meeting),
        token,
        pcm,
        sample_rate=16000,
        channels=1,
        source=source,
        speed=4.0,
        close_timeout_s=DEADLINE_S,
        **kw,
    )
    assert summary.close_code == 1000, summary
    return summary


def tips_of(watcher: Watcher) -> list[dict[str, Any]]:
    return watcher.of_type("ai.tip")


def corrections(watcher: Watcher) -> list[dict[str, Any]]:
    return [m for m in watcher.of_type("status") if m.get("event") == "segment.corrected"]


def two_tips(watcher: Watcher) -> bool:
    return {t["kind"] for t in tips_of(watcher)} >= {"decision", "action_item"}


async def test_tips_are_published_stored_replayed_and_exported(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_gateway(None, **TIP_INTERVAL)
    viewer = keypair.token(roles=["viewer"])
    live = await watch(gw.subscribe_url(meeting, viewer))
    try:
        await speak(gw, keypair.token(roles=["ingest"]), meeting)
        await live.wait_for(two_tips, timeout=DEADLINE_S)
    finally:
        await live.close()
    tips = tips_of(live)
    finals = {m["segment_no"]: m["text"] for m in live.finals()}
    assert [t["tip_no"] for t in tips] == list(range(1, len(tips) + 1))
    decision = next(t for t in tips if t["kind"] == "decision")
    assert "decided" in decision["text"].lower() and decision["meeting_id"] == meeting
    (cited,) = decision["segment_nos"]
    assert finals[cited] == decision["text"]  # evidence: the final it comes from
    action = next(t for t in tips if t["kind"] == "action_item")
    assert action["owner"] == "John" and action["due"] == "thursday"
    assert not any("morning" in t["text"].lower() for t in tips)  # small talk is no tip

    # A viewer resuming with since= gets the finals it lacks, then the tips citing them,
    # counted as delivered as live ones are.
    def tips_delivered() -> float:
        return sum(
            value
            for (name, labels), value in scrape(gw).items()
            if name == "meeting_gateway_messages_delivered_total" and ("type", "ai.tip") in labels
        )

    before = tips_delivered()
    late = await watch(gw.subscribe_url(meeting, viewer, since=0))
    await late.close()
    assert [(t["tip_no"], t["text"]) for t in tips_of(late)] == [
        (t["tip_no"], t["text"]) for t in tips
    ]
    await eventually(lambda: tips_delivered() == before + len(tips), what="replayed tips counted")
    types = [m["type"] for m in late.messages if m["type"] in ("transcript.final", "ai.tip")]
    assert types == ["transcript.final"] * len(finals) + ["ai.tip"] * len(tips)
    # One that held every final still gets the tips made since its last finals: a tip made
    # while it was away may cite finals it had already.
    after_all = await watch(gw.subscribe_url(meeting, viewer, since=max(finals)))
    await after_all.close()
    assert [t["tip_no"] for t in tips_of(after_all)] == [t["tip_no"] for t in tips]

    exported = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer, format="json").json()
    assert [t["text"] for t in exported["tips"]] == [t["text"] for t in tips]
    assert exported["tips"][0]["segment_nos"] == tips[0]["segment_nos"]
    metrics = gw.get("/metrics").text
    assert 'meeting_gateway_tips_published_total{kind="decision"} 1.0' in metrics

    # Correcting the decision's final withdraws the decision (made from the words replaced):
    # viewers are told, and no export or history carries it any more.
    watching = await watch(gw.subscribe_url(meeting, viewer))
    try:
        editor = keypair.token(roles=["editor"])
        fixed = gw.patch(f"/api/v1/meetings/{meeting}/segments/{cited}", editor, text="[redacted]")
        assert fixed.status_code == 200, fixed.text
        await watching.wait_for(lambda w: corrections(w), timeout=30)
    finally:
        await watching.close()
    (correction,) = corrections(watching)
    assert correction["withdrawn_tips"] == [decision["tip_no"]]
    kept = [t for t in tips if t["tip_no"] != decision["tip_no"]]
    exported = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer, format="json").json()
    assert [t["text"] for t in exported["tips"]] == [t["text"] for t in kept]
    assert "decided" not in json.dumps(exported).lower()
    resumed = await watch(gw.subscribe_url(meeting, viewer, since=0))
    await resumed.close()
    assert [t["tip_no"] for t in tips_of(resumed)] == [t["tip_no"] for t in kept]


async def test_tips_off_and_exactly_one_replica_produces_a_meetings_tips(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    pg_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    await upgrade(pg_url)
    env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": redis_prefix, **TIP_INTERVAL}
    a, b = start_gateway(pg_url, **env), start_gateway(pg_url, **env)
    viewer, ingest = keypair.token(roles=["viewer"]), keypair.token(roles=["ingest"])
    watcher = await watch(a.subscribe_url(meeting, viewer))
    try:
        # The two sources of one meeting stream to different replicas at the same time.
        await asyncio.gather(speak(a, ingest, meeting, "mic"), speak(b, ingest, meeting, "system"))
        await watcher.wait_for(two_tips, timeout=DEADLINE_S)
    finally:
        await watcher.close()
    producers = [gw for gw in (a, b) if "following tips" in gw.logs()]
    assert len(producers) == 1
    tips = tips_of(watcher)
    numbers = [t["tip_no"] for t in tips]
    assert numbers == list(range(1, len(numbers) + 1))
    # Both sources said the same: each item once (near-duplicates dropped), never twice.
    assert sorted(t["kind"] for t in tips) == ["action_item", "decision"]

    # INSIGHTS_LIVE=off: no tips at all.
    off = start_gateway(None, INSIGHTS_LIVE="off", **TIP_INTERVAL)
    other = f"{meeting}-off"
    quiet = await watch(off.subscribe_url(other, viewer))
    try:
        summary = await speak(off, ingest, other)
        await quiet.wait_for(lambda w: len(w.finals()) >= summary.finals, timeout=DEADLINE_S)
    finally:
        await quiet.close()
    assert tips_of(quiet) == [] and "following tips" not in off.logs()


async def test_a_stream_that_says_nothing_starts_no_tips_follower(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """The leak tester's 900 silent streams left 900 followers (tasks, bus subscriptions and,
    on Redis, leases) for two minutes each: a meeting is followed once it has a final."""
    gw = start_gateway(None, **TIP_INTERVAL)
    ingest = keypair.token(roles=["ingest"])
    await stream_silence(gw, ingest, f"{meeting}-silent", frames=20)
    await speak(gw, ingest, meeting)  # followed, after the silent one

    def following() -> list[str]:
        lines = [json.loads(line) for line in gw.logs().splitlines() if "following tips" in line]
        return [line["meeting_id"] for line in lines]

    await eventually(lambda: meeting in following(), within=DEADLINE_S, what="the spoken one")
    assert f"{meeting}-silent" not in following()


async def test_the_viewer_shows_tips_in_a_collapsible_side_panel(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    gw = start_gateway(None, **TIP_INTERVAL)
    viewer = keypair.token(roles=["viewer"])
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1100, "height": 600})
        errors = collect_errors(page)
        await page.goto(f"{gw.http}/viewer?meeting={meeting}#token={viewer}")
        await wait_for_state(page, "live")
        panel = page.locator("aside#tips")
        await expect(panel).to_be_hidden()  # no tip yet: no empty panel
        await speak(gw, keypair.token(roles=["ingest"]), meeting)
        cards = page.locator("#tips-list li.tip")
        await expect(cards).to_have_count(2, timeout=DEADLINE_S * 1000)
        await expect(panel).to_be_visible()
        assert await panel.get_attribute("aria-labelledby") == "tips-heading"
        assert await page.locator("#tips-heading").inner_text() == "Insights (2)"
        kinds = await cards.locator(".tip-kind").all_text_contents()
        assert kinds == ["Decision", "Action item"]
        assert await cards.nth(1).locator(".tip-meta").inner_text() == "Owner: John · Due: thursday"
        # Apart from the transcript: no tip inside the transcript's log.
        assert await page.locator("#finals .tip").count() == 0
        # Collapsible with the keyboard (a native <details>).
        await page.locator("#tips-panel summary").focus()
        await page.keyboard.press("Enter")
        await expect(cards.first).to_be_hidden()
        await page.keyboard.press("Enter")
        await expect(cards.first).to_be_visible()
        # A reload resumes with since=0: the same two tips, once each.
        await page.reload()
        await wait_for_state(page, "live")
        await expect(cards).to_have_count(2, timeout=DEADLINE_S * 1000)
        # Correcting the decision's final withdraws the decision card at once.
        (decision,) = await page.locator("#tips-list li.tip[data-kind=decision]").all()
        tip_no = await decision.get_attribute("data-tip-no")
        (stored,) = [t for t in _tips(gw, meeting, viewer) if str(t["tip_no"]) == tip_no]
        editor = keypair.token(roles=["editor"])
        path = f"/api/v1/meetings/{meeting}/segments/{stored['segment_nos'][0]}"
        assert gw.patch(path, editor, text="[redacted]").status_code == 200
        await expect(cards).to_have_count(1, timeout=30_000)
        assert await cards.locator(".tip-kind").all_text_contents() == ["Action item"]
        assert await page.locator("#tips-heading").inner_text() == "Insights (1)"
        assert errors == []


def _tips(gw: Gateway, meeting: str, token: str) -> list[dict[str, Any]]:
    return gw.get(f"/api/v1/meetings/{meeting}/transcript", token, format="json").json()["tips"]
