"""The live viewer page (`/viewer`) in real headless Chromium against real gateway processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from playwright.async_api import Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from store.base import NewFinal
from store.catalog_sql import SqlMeetingCatalog
from store.sql import SqlTranscriptStore
from tests.e2e.browser import (
    LOW_CONTRAST_JS,
    PARTIAL_BELOW_FINAL_JS,
    WATCH_PARTIALS_JS,
    chromium,
    collect_errors,
    final_numbers,
    wait_for_finals,
    wait_for_state,
)
from tests.e2e.harness import REPO, Gateway, KeyPair, gateway_env, word_error_rate
from tests.e2e.speech import fixture, stream_fixture, watch
from tests.e2e.test_quickstart import cli

# `make screenshot` sets this to docs/viewer.png, the README's picture of the viewer.
SCREENSHOT_PATH = os.environ.get("VIEWER_SCREENSHOT")
SAMPLE = "two_sentences_16k_mono.wav"


async def stream_sample(gw: Gateway, token: str, meeting: str, speed: float = 4) -> None:
    summary = await stream_fixture(gw, token, meeting, SAMPLE, speed=speed)
    assert summary.close_code == 1000, summary


def viewer_url(gw: Gateway, meeting: str, token: str) -> str:
    return f"{gw.http}/viewer?meeting={meeting}#token={token}"


def banner_viewer_url(gw: Gateway, keypair: KeyPair, meeting: str, tmp_path: Path) -> str:
    """The browser URL `make run` prints (dev-banner), with its freshly minted viewer token."""
    key = tmp_path / "jwt.key"
    key.write_bytes(keypair.private_pem)
    banner = cli("dev-banner", "--port", str(gw.port), "--key", str(key), "--meeting", meeting)
    assert banner.returncode == 0, banner.stderr
    urls = re.findall(r"http://\S+/viewer\?\S+", banner.stdout)
    assert len(urls) == 1, banner.stdout
    return urls[0]


async def test_streamed_meeting_appears_live_with_partials_replaced_in_place(
    gateway: Gateway, keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    url = banner_viewer_url(gateway, keypair, meeting, tmp_path)
    _, sentences = fixture(SAMPLE)
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 960, "height": 560})
        errors = collect_errors(page)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await page.goto(url)
        await wait_for_state(page, "live")
        await page.evaluate(WATCH_PARTIALS_JS)

        ingest = keypair.token(tenant="dev", roles=["ingest"])  # the banner's tenant
        await stream_sample(gateway, ingest, meeting, speed=2)
        await wait_for_finals(page, 2)
        await expect(page.locator("#partials .partial")).to_have_count(0)

        assert await final_numbers(page) == [1, 2]
        finals = await page.locator("#finals li.final .text").all_text_contents()
        for sentence, text in zip(sentences, finals, strict=True):
            assert word_error_rate(sentence, text) <= 0.34, (sentence, text)
        who = await page.locator("#finals li.final .who").all_text_contents()
        assert who == ["Mic", "Mic"]
        times = await page.locator("#finals li.final time").all_text_contents()
        assert all(re.fullmatch(r"\d\d:\d\d:\d\d", t) for t in times), times
        # The finals are in the aria-live log; the provisional partials are not.
        log = page.locator('[aria-live="polite"]')
        assert await log.locator("li.final").count() == 2
        assert await log.locator(".partial").count() == 0

        partials = await page.evaluate("window.partialLog")
        assert partials["added"], "no partial was ever shown"
        assert set(partials["added"].values()) == {1}, partials  # one element per key...
        # ...whose text changed in place
        assert any(len(set(texts)) >= 2 for texts in partials["texts"].values()), partials
        assert partials["maxPerSource"] == 1, partials
        status = await page.locator("#finals .status-line").all_text_contents()
        assert any("Mic started streaming" in s for s in status), status
        assert any("Mic stream ended" in s for s in status), status
        assert [parse_qs(urlsplit(u).query)["since"] for u in sockets] == [["0"]]
        assert errors == []
        # The token travelled in the fragment and the WebSocket query, never in a page request.
        assert "token=" not in "".join(gateway.logs().splitlines()[-200:])


async def test_provisional_partial_is_shown_while_someone_talks(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """A partial is visibly provisional (italic, marked) and sits below the finals."""
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 960, "height": 400})
        await page.goto(viewer_url(gateway, meeting, keypair.token(meetings=[meeting])))
        await wait_for_state(page, "live")
        ingest = keypair.token(roles=["ingest"])
        streaming = asyncio.create_task(stream_sample(gateway, ingest, meeting, speed=1))
        try:
            # The second sentence in progress below the first one's final, looked at in one go
            # (the partial lives only as long as the sentence).
            seen = await page.wait_for_function(
                PARTIAL_BELOW_FINAL_JS,
                timeout=60_000,
            )
            if SCREENSHOT_PATH:  # best effort: a few words into the sentence
                with contextlib.suppress(PlaywrightTimeoutError):
                    await page.wait_for_function(
                        "() => document.querySelector('#partials .partial .text')"
                        "?.textContent.split(' ').length >= 3",
                        timeout=5_000,
                    )
                await page.screenshot(path=str(REPO / SCREENSHOT_PATH))
            partial = await seen.json_value()
            assert partial["fontStyle"] == "italic"
            assert partial["text"].lower().startswith("provisional")
            assert partial["inLiveRegion"] is False
            assert partial["lowContrast"] == []
        finally:
            await streaming
        await wait_for_finals(page, 2)


async def test_two_sources_talking_at_once_keep_one_partial_each(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(viewer_url(gateway, meeting, keypair.token(meetings=[meeting])))
        await wait_for_state(page, "live")
        await page.evaluate(WATCH_PARTIALS_JS)
        ingest = keypair.token(roles=["ingest"])
        await asyncio.gather(
            *(
                stream_fixture(gateway, ingest, meeting, SAMPLE, source=source, speed=2)
                for source in ("mic", "system")
            )
        )
        await wait_for_finals(page, 4)
        await expect(page.locator("#partials .partial")).to_have_count(0)
        assert await final_numbers(page) == [1, 2, 3, 4]
        who = await page.locator("#finals li.final .who").all_text_contents()
        assert sorted(who) == ["Mic", "Mic", "System", "System"]
        partials = await page.evaluate("window.partialLog")
        assert partials["maxPerSource"] == 1, partials
        assert partials["maxSources"] == 2, partials  # both in flight at once, side by side
        keys = {key.split(":")[0] for key in partials["added"]}
        assert keys == {"mic", "system"}, partials


async def test_subscriber_limit_is_retried_until_a_slot_frees(
    start_gateway, keypair: KeyPair, meeting: str
) -> None:
    gw = start_gateway(None, MAX_WS_CLIENTS_PER_MEETING="1")
    token = keypair.token(meetings=[meeting])
    occupant = await watch(gw.subscribe_url(meeting, token))
    try:
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(viewer_url(gw, meeting, token))
            await wait_for_state(page, "reconnecting")  # 4429 is "later", not "never"
            await expect(page.locator("#connection")).to_contain_text("rate limited")
            await occupant.close()
            await wait_for_state(page, "live")
    finally:
        await occupant.close()


async def test_survives_gateway_restart_and_resumes_without_duplicates(
    keys_dir: Path, keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    env = gateway_env(keys_dir, f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    first = Gateway(env, tmp_path / "first.log").start()
    second: Gateway | None = None
    try:
        async with chromium() as browser:
            # Short enough that four finals and the status lines overflow and scroll.
            page = await browser.new_page(viewport={"width": 480, "height": 260})
            sockets: list[str] = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            await page.goto(viewer_url(first, meeting, keypair.token(meetings=[meeting])))
            await wait_for_state(page, "live")
            ingest = keypair.token(roles=["ingest"])
            await stream_sample(first, ingest, meeting)
            await wait_for_finals(page, 2)
            await page.evaluate("window.sameDocument = true")

            first.stop()  # SIGTERM: viewers are closed 1012 and told to come back
            await wait_for_state(page, "reconnecting")
            await expect(page.locator("#connection")).to_contain_text("restarting")
            # Edits made while the page is away send it no message: it reads them on rejoining.
            store = SqlTranscriptStore(env["DATABASE_URL"])
            try:
                catalog = SqlMeetingCatalog(store.engine)
                assert await catalog.edit_meeting("acme", meeting, title="Weekly sync")
                fixed = await catalog.correct_final("acme", meeting, 1, "Fixed away.", editor="ed")
                assert fixed is not None
            finally:
                await store.aclose()

            # The reader scrolls up to reread: new finals must not drag the view down.
            scroller = page.locator("#scroller")
            await scroller.hover()
            await page.mouse.wheel(0, -2000)
            await page.wait_for_function("() => document.getElementById('scroller').scrollTop == 0")
            second = Gateway(env, tmp_path / "second.log", port=first.port).start()
            await wait_for_state(page, "live", timeout_s=90)
            await stream_sample(second, ingest, meeting)
            await wait_for_finals(page, 4)

            assert await final_numbers(page) == [1, 2, 3, 4]
            assert await page.evaluate("window.sameDocument") is True  # no reload
            await expect(page.locator("#seg-1 .text")).to_have_text("Fixed away.", timeout=60_000)
            await expect(page.locator("#seg-1")).to_have_class(re.compile(r"\bcorrected\b"))
            await expect(page.locator("#meeting-name")).to_contain_text(
                "Weekly sync", timeout=60_000
            )
            since = [parse_qs(urlsplit(u).query)["since"][0] for u in sockets]
            assert since[0] == "0" and set(since[1:]) == {"2"}, since

            assert await scroller.evaluate("e => e.scrollHeight > e.clientHeight")
            assert await scroller.evaluate("e => e.scrollTop") == 0
            jump = page.locator("#jump")
            await expect(jump).to_be_visible()
            await jump.click()
            await expect(jump).to_be_hidden()
            assert await scroller.evaluate(
                "e => e.scrollTop + e.clientHeight >= e.scrollHeight - 2"
            )
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_a_meeting_deleted_and_made_again_while_away_is_shown_anew(
    keys_dir: Path, keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    """The page resumes with since=2 a meeting that was deleted while it was away and made
    again under its id (one final now): told so (since.beyond), it drops the old lines and
    shows the new meeting from its first final, instead of the old lines as if current."""
    env = gateway_env(keys_dir, f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    first = Gateway(env, tmp_path / "first.log").start()
    second: Gateway | None = None
    try:
        async with chromium() as browser:
            page = await browser.new_page()
            failures: list[str] = []  # uncaught script errors (a failed reconnect logs too)
            page.on("pageerror", lambda e: failures.append(str(e)))
            await page.goto(viewer_url(first, meeting, keypair.token(meetings=[meeting])))
            await wait_for_state(page, "live")
            await stream_sample(first, keypair.token(roles=["ingest"]), meeting)
            await wait_for_finals(page, 2)
            first.stop()
            await wait_for_state(page, "reconnecting")
            store = SqlTranscriptStore(env["DATABASE_URL"])
            try:
                assert await SqlMeetingCatalog(store.engine).delete_meeting("acme", meeting)
                await store.append_final("acme", meeting, NewFinal("A new meeting.", 0, 900, "mic"))
            finally:
                await store.aclose()
            second = Gateway(env, tmp_path / "second.log", port=first.port).start()
            await wait_for_state(page, "live", timeout_s=90)
            await expect(page.locator("#seg-1 .text")).to_have_text(
                "A new meeting.", timeout=60_000
            )
            assert await final_numbers(page) == [1]
            await expect(page.locator("#notice")).to_contain_text("deleted and its id used again")
            assert failures == []
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_a_keyboard_reader_scrolls_back_while_someone_speaks(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """The accessibility tester: an arrow key's step stayed within reach of the bottom, and the
    next partial pulled the view back, so only PageUp or Home left the live edge. The history
    loads as one (aria-busy) instead of being read out line by line."""
    store = SqlTranscriptStore(gateway.env["DATABASE_URL"])
    try:
        for n in range(40):
            await store.append_final("acme", meeting, NewFinal(f"Earlier line {n}.", 0, 900, "mic"))
    finally:
        await store.aclose()
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 480, "height": 320})
        await page.goto(viewer_url(gateway, meeting, keypair.token(meetings=[meeting])))
        await wait_for_state(page, "live")
        await wait_for_finals(page, 40)
        assert await page.locator("#finals").get_attribute("aria-busy") is None
        await expect(page.locator("#connection-detail")).to_have_text("40 earlier lines loaded")
        # Said once, in a status region (the detail beside the state is not announced).
        await expect(page.locator("#history-status")).to_have_text("40 earlier lines loaded")
        assert await page.locator("#connection-text").inner_text() == "live"
        assert await page.locator("#recordings").evaluate("e => getComputedStyle(e).display") == (
            "none"
        )
        scroller = page.locator("#scroller")
        await scroller.focus()
        await page.keyboard.press("ArrowUp")
        await expect(page.locator("#jump")).to_be_visible()
        await stream_sample(gateway, keypair.token(roles=["ingest"]), meeting)
        await wait_for_finals(page, 42)
        assert await scroller.evaluate("e => e.scrollTop + e.clientHeight < e.scrollHeight - 8"), (
            "the view went back to the live edge"
        )
        await expect(page.locator("#jump")).to_contain_text("(2 new)")


async def test_a_token_about_to_expire_is_said_and_renewed_without_a_gap(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """The accessibility tester: the captions stopped without warning when the token expired.
    Two minutes before, the page says so; a new token pasted resumes where the page is."""
    async with chromium() as browser:
        page = await browser.new_page()
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await page.goto(viewer_url(gateway, meeting, keypair.token(meetings=[meeting], ttl=100)))
        await wait_for_state(page, "live")
        await stream_sample(gateway, keypair.token(roles=["ingest"]), meeting)
        await wait_for_finals(page, 2)
        expiry = page.locator("#expiry")
        await expect(expiry).to_be_visible()
        await expect(page.locator("#expiry-text")).to_contain_text("expires in 2 min")
        await page.locator("#scroller").focus()
        await page.locator("#expiry-renew").click()
        assert await page.evaluate("document.activeElement.id") == "join-token"
        await wait_for_state(page, "live")  # nothing interrupted meanwhile
        await page.locator("#join-token").fill(keypair.token(meetings=[meeting], ttl=3600))
        await page.locator("#join-token").press("Enter")
        await wait_for_state(page, "live")
        await expect(expiry).to_be_hidden()
        assert await final_numbers(page) == [1, 2]
        since = [parse_qs(urlsplit(u).query)["since"][0] for u in sockets]
        assert since == ["0", "2"], since  # resumed after what it holds


async def _stopped_with(page: Page, code: str) -> str:
    await wait_for_state(page, "stopped")
    notice = await page.locator("#notice").inner_text()
    assert code in notice, notice
    return notice


async def test_bad_token_shows_the_reason_and_stops_reconnecting(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await page.clock.install()  # lets the test run the page's timers forward
        await page.goto(viewer_url(gateway, meeting, "not-a-jwt"))
        notice = await _stopped_with(page, "4401")
        assert "refused the token" in notice
        await expect(page.locator("#join")).to_be_visible()  # and asks for another token
        # The gateway's reason is shown once, in the form, not also in the notice above it.
        asked = await page.locator("#join-reason").inner_text()
        assert asked.startswith(notice.rstrip(".") + ": ") and "Paste another token" in asked
        # Announced once: the notice is shown, not an alert; the token field is the one at fault.
        assert await page.locator("#notice").get_attribute("role") is None
        token_field = page.locator("#join-token")
        assert await token_field.get_attribute("aria-invalid") == "true"
        assert await token_field.get_attribute("aria-describedby") == "join-reason"
        await page.clock.run_for(10 * 60 * 1000)  # ten minutes of backoff timers
        await page.evaluate("1")  # a round trip: a socket opened by a timer has been reported
        assert len(sockets) == 1, sockets

        # A valid token for another meeting: 4403, also final.
        other = keypair.token(meetings=["some-other-meeting"])
        await page.locator("#join-token").fill(other)
        await page.locator("#join button").click()
        notice = await _stopped_with(page, "4403")
        await page.clock.run_for(10 * 60 * 1000)
        await page.evaluate("1")
        assert len(sockets) == 2, sockets


async def test_export_link_downloads_the_srt(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    await stream_sample(gateway, keypair.token(roles=["ingest"]), meeting)
    token = keypair.token(meetings=[meeting])
    expected = gateway.get(f"/api/v1/meetings/{meeting}/transcript", token, format="srt").text
    assert expected.startswith("1\n")
    async with chromium() as browser:
        # Phone width: everything reachable, nothing wider than the screen.
        page = await browser.new_page(viewport={"width": 375, "height": 700})
        errors = collect_errors(page)
        await page.goto(viewer_url(gateway, meeting, token))
        await wait_for_state(page, "live")
        await wait_for_finals(page, 2)
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert await page.evaluate(LOW_CONTRAST_JS) == []

        focused: list[str] = []
        for _ in range(8):
            await page.keyboard.press("Tab")
            focused.append(await page.evaluate("document.activeElement.textContent.trim()"))
        assert {"SRT", "WebVTT", "Text", "JSON"} <= set(focused), focused

        async with page.expect_download() as download_info:
            await page.get_by_role("link", name="SRT").click()
        download = await download_info.value
        assert download.suggested_filename == f"{meeting}.srt"
        saved = await download.path()
        assert await asyncio.to_thread(saved.read_text) == expected
        assert errors == []


async def test_page_without_meeting_or_token_asks_for_them(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{gateway.http}/viewer")
        await expect(page.locator("#join")).to_be_visible()
        await page.get_by_label("Meeting id").fill(meeting)
        await page.get_by_label("Viewer token (JWT)").fill(keypair.token(meetings=[meeting]))
        await page.get_by_label("Viewer token (JWT)").press("Enter")
        await wait_for_state(page, "live")
        await expect(page.locator("#join")).to_be_hidden()
        assert page.url.startswith(f"{gateway.http}/viewer?meeting={meeting}#token=")
        # Focus went from the hidden form to the transcript, not to the page.
        assert await page.evaluate("document.activeElement.id") == "scroller"
        # The meeting id's rule is there before a mistake, and says which field it is about.
        await page.goto(f"{gateway.http}/viewer")
        field = page.get_by_label("Meeting id")
        hint = await page.locator("#join-meeting-hint").inner_text()
        assert hint.startswith("A meeting id is 1-128 characters")
        assert await field.get_attribute("aria-describedby") == "join-meeting-hint"
        await field.fill("bad/id")
        await page.get_by_label("Viewer token (JWT)").fill("x")
        await page.locator("#join button").click()
        assert await field.get_attribute("aria-invalid") == "true"
        await field.fill("good")
        assert await field.get_attribute("aria-invalid") is None


def test_page_headers_and_bad_meeting_id(gateway: Gateway) -> None:
    page = httpx.get(
        f"{gateway.http}/viewer", params={"meeting": "m1"}, timeout=10, verify=gateway.verify
    )
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script src=" in page.text and "<script>" not in page.text
    script = httpx.get(f"{gateway.http}/viewer/static/viewer.js", timeout=10, verify=gateway.verify)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert (
        httpx.get(
            f"{gateway.http}/viewer/static/nope.js", timeout=10, verify=gateway.verify
        ).status_code
        == 404
    )
    bad = httpx.get(
        f"{gateway.http}/viewer", params={"meeting": "a:b"}, timeout=10, verify=gateway.verify
    )
    assert bad.status_code == 400 and "meeting must be" in bad.text


async def edit(gateway: Gateway, keypair: KeyPair, path: str, body: dict) -> None:
    """PATCH `path` as an editor: a title, names or a corrected final."""
    editor = keypair.token(roles=["editor"])
    async with httpx.AsyncClient() as http:
        answer = await http.patch(
            f"{gateway.http}{path}", headers={"Authorization": f"Bearer {editor}"}, json=body
        )
    assert answer.status_code == 200, answer.text


async def test_joining_another_meeting_leaves_nothing_of_the_first(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """The join form's new meeting starts clean (no lines, tips, recordings or names of the
    one left), and an id the gateway would not take is refused in the form, not retried."""
    await stream_sample(gateway, keypair.token(roles=["ingest"]), meeting)
    await edit(gateway, keypair, f"/api/v1/meetings/{meeting}", {"title": "First meeting"})
    async with chromium() as browser:
        page = await browser.new_page()
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await page.goto(viewer_url(gateway, meeting, keypair.token(meetings=[meeting])))
        await wait_for_finals(page, 2)
        await expect(page.locator("#meeting-name")).to_contain_text("First meeting")
        await page.evaluate("""() => {
            const list = document.getElementById("tips-list");
            list.append(document.createElement("li"));
            document.getElementById("tips").hidden = false;
        }""")  # as a tip of the first meeting would have left it
        await page.evaluate("() => document.getElementById('join').hidden = false")

        await page.get_by_label("Meeting id").fill("a/b")
        await page.get_by_label("Viewer token (JWT)").fill(keypair.token())
        await page.get_by_label("Viewer token (JWT)").press("Enter")
        await expect(page.locator("#join-reason")).to_contain_text("A meeting id is 1-128")
        assert len(sockets) == 1, sockets  # no socket to an id that cannot exist

        second = f"{meeting}-2"
        await page.get_by_label("Meeting id").fill(second)
        await page.get_by_label("Viewer token (JWT)").fill(keypair.token(meetings=[second]))
        await page.get_by_label("Viewer token (JWT)").press("Enter")
        await wait_for_state(page, "live")
        assert await final_numbers(page) == []
        assert await page.locator("#tips-list li").count() == 0
        await expect(page.locator("#tips")).to_be_hidden()
        await expect(page.locator("#meeting-name")).not_to_contain_text("First meeting")


async def test_a_token_pasted_after_expiry_shows_the_edits_made_meanwhile(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """The token expired (4401); a final was corrected before the reader pasted a new one: the
    page reads it on rejoining, as after an outage."""
    gateway = start_gateway(JWT_LEEWAY_S="0")
    await stream_sample(gateway, keypair.token(roles=["ingest"]), meeting)
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(viewer_url(gateway, meeting, keypair.token(meetings=[meeting], ttl=20)))
        await wait_for_finals(page, 2)
        await _stopped_with(page, "4401")
        fixed = {"text": "Corrected while the token was out."}
        await edit(gateway, keypair, f"/api/v1/meetings/{meeting}/segments/1", fixed)
        await page.get_by_label("Viewer token (JWT)").fill(keypair.token(meetings=[meeting]))
        await page.get_by_label("Viewer token (JWT)").press("Enter")
        await wait_for_state(page, "live")
        await expect(page.locator("#seg-1 .text")).to_have_text(
            "Corrected while the token was out.", timeout=60_000
        )


async def test_a_number_handed_out_twice_is_corrected_to_the_stored_final(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """The gateway's correction of a number handed out twice (`edited_by` "gateway") is the
    whole final the store keeps: it replaces the line's words, speaker and source, and a page
    that does not hold the number yet shows it as that final."""
    import json

    import redis.asyncio as aredis

    from fanout.messages import SegmentCorrectedMessage
    from fanout.topics import status_topic

    gw = start_gateway(REDIS_URL=redis_url, REDIS_KEY_PREFIX=redis_prefix)
    async with chromium() as browser:
        page = await browser.new_page()
        errors = collect_errors(page)
        await page.goto(viewer_url(gw, meeting, keypair.token(meetings=[meeting])))
        await wait_for_state(page, "live")
        await stream_sample(gw, keypair.token(roles=["ingest"]), meeting)
        await wait_for_finals(page, 2)

        client = aredis.Redis.from_url(redis_url)
        try:
            for number, text in ((2, "The recording's own words."), (5, "A final not held yet.")):
                correction = SegmentCorrectedMessage(
                    meeting_id=meeting,
                    segment_no=number,
                    text=text,
                    start_ms=1000 * number,
                    end_ms=1000 * number + 500,
                    speaker="Speaker 2",
                    source="recording",
                    edited_by="gateway",
                )
                channel = redis_prefix + status_topic("acme", meeting)
                await client.publish(channel, correction.encode())
        finally:
            await client.aclose()
        await wait_for_finals(page, 3)
        assert await final_numbers(page) == [1, 2, 5]
        texts = await page.locator("#finals li.final .text").all_text_contents()
        assert texts[1:] == ["The recording's own words.", "A final not held yet."]
        who = await page.locator("#finals li.final .who").all_text_contents()
        assert who == ["Mic", "Speaker 2", "Speaker 2"]
        assert errors == [], json.dumps(errors)


async def test_right_to_left_lines_and_titles_read_right_to_left(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """Every line was laid out left to right: a Hebrew question's "?" stood after its first
    word instead of at its end (the multilingual tester)."""
    await stream_sample(gateway, keypair.token(roles=["ingest"]), meeting)
    await edit(gateway, keypair, f"/api/v1/meetings/{meeting}/segments/1", {"text": "מה השעה?"})
    await edit(gateway, keypair, f"/api/v1/meetings/{meeting}", {"title": "اجتماع الميزانية"})
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(viewer_url(gateway, meeting, keypair.token(meetings=[meeting])))
        await wait_for_finals(page, 2)
        await expect(page.locator("#seg-1 .text")).to_have_text("מה השעה?")

        def direction(selector: str) -> str:
            return f"getComputedStyle(document.querySelector({selector!r})).direction"

        assert await page.evaluate(direction("#seg-1 .text")) == "rtl"
        assert await page.evaluate(direction("#seg-2 .text")) == "ltr"
        title = page.locator("#meeting-name bdi")
        await expect(title).to_have_text("اجتماع الميزانية")
        await expect(page.locator("#meeting-name")).to_have_text(f"اجتماع الميزانية ({meeting})")
