"""The meetings API through a real gateway, over SQLite and PostgreSQL: the list with its pages,
one meeting, the transcript page by page and streamed whole, search, and isolation of tenants and
of a token's `meetings` on every route."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect

from store.base import NewFinal
from store.exports import render
from store.migrate import upgrade
from store.sql import SqlTranscriptStore
from tests.e2e.harness import Gateway, KeyPair
from tests.openapi_check import assert_answer_matches


@pytest.fixture
async def seeded(
    database_url: str, start_gateway: Callable[..., Gateway]
) -> AsyncIterator[tuple[Gateway, SqlTranscriptStore]]:
    await upgrade(database_url)
    store = SqlTranscriptStore(database_url)
    gateway = start_gateway(database_url)
    yield gateway, store
    await store.aclose()


async def say(store: SqlTranscriptStore, tenant: str, meeting: str, *texts: str, **kw: Any) -> None:
    for text in texts:
        n = await store.last_segment_no(tenant, meeting) + 1
        final = NewFinal(text=text, start_ms=n * 1000, end_ms=n * 1000 + 800, source="mic", **kw)
        await store.store_numbered_final(tenant, meeting, n, final, datetime.now(UTC))


def follow(gateway: Gateway, path: str, token: str, key: str, **params: Any) -> list[dict]:
    """Every item of a paginated list, following `next` links."""
    items: list[dict] = []
    response = gateway.get(path, token, **params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body[key])
        if body["next"] is None:
            return items
        response = gateway.get(body["next"], token)


async def test_list_pages_and_isolation(
    seeded: tuple[Gateway, SqlTranscriptStore], keypair: KeyPair
) -> None:
    gateway, store = seeded
    for n in range(7):
        await say(store, "acme", f"m{n}", f"meeting {n} said hello")
    await say(store, "other", "m3", "another tenant, same meeting id")
    viewer = keypair.token(roles=["viewer"])

    listed = follow(gateway, "/api/v1/meetings", viewer, "meetings", limit=3)
    assert [m["id"] for m in listed] == [f"m{n}" for n in reversed(range(7))]
    m3 = next(m for m in listed if m["id"] == "m3")
    assert m3["final_count"] == 1 and m3["sources"] == ["mic"] and m3["live"] is False
    assert m3["links"]["transcript"] == "/api/v1/meetings/m3/transcript"

    ops = keypair.token(roles=["ops"])
    assert len(follow(gateway, "/api/v1/meetings", ops, "meetings")) == 7
    # An empty value is as the parameter left out (docs/protocol.md), a cursor's too.
    first = gateway.get("/api/v1/meetings", viewer, limit=3, cursor="")
    assert first.status_code == 200 and [m["id"] for m in first.json()["meetings"]] == [
        "m6",
        "m5",
        "m4",
    ]
    found = gateway.get("/api/v1/search", viewer, q="hello", cursor="")
    assert found.status_code == 200 and found.json()["results"], found.text
    claimed = keypair.token(roles=["viewer"], meetings=["m1", "m5", "nope"])
    assert [m["id"] for m in follow(gateway, "/api/v1/meetings", claimed, "meetings")] == [
        "m5",
        "m1",
    ]
    other = keypair.token(tenant="other", roles=["viewer"])
    (only,) = follow(gateway, "/api/v1/meetings", other, "meetings")
    assert only["id"] == "m3" and only["final_count"] == 1
    # A list cursor is tied to its tenant, as a search cursor is: another tenant's went on
    # below this tenant's meeting's creation time, telling roughly when it was made.
    taken = gateway.get(first.json()["next"], other)
    assert taken.status_code == 400, taken.text
    assert "another tenant's listing" in taken.json()["error"]["message"]

    one = gateway.get("/api/v1/meetings/m3", viewer).json()
    assert one["id"] == "m3" and one["streams"] == []
    assert gateway.get("/api/v1/meetings/m3", claimed).status_code == 403
    assert gateway.get("/api/v1/meetings/missing", viewer).status_code == 404
    assert gateway.get("/api/v1/meetings/m6", other).status_code == 404
    ingest_only = keypair.token(roles=["ingest"])
    assert gateway.get("/api/v1/meetings", ingest_only).status_code == 403
    assert gateway.get("/api/v1/meetings").status_code == 401
    spec = gateway.get("/api/v1/openapi.json")  # no token needed
    assert spec.status_code == 200 and "/api/v1/meetings" in spec.json()["paths"]


async def test_answers_fit_the_served_openapi_document(
    seeded: tuple[Gateway, SqlTranscriptStore], keypair: KeyPair
) -> None:
    """What a client generated from /api/v1/openapi.json reads: every field the document
    requires is there, with its type (nullable ones null where nothing is known yet)."""
    gateway, store = seeded
    spec = gateway.get("/api/v1/openapi.json").json()
    await store.open_stream(
        "acme", "oa", stream_id="s-oa", source="mic", engine="local", sample_rate=16000, channels=1
    )
    await say(store, "acme", "oa", "the budget for next quarter", "and the budget after it")
    await say(store, "acme", "oa", "said by someone", speaker="Speaker 1")
    token = keypair.token(roles=["viewer", "ops", "editor"])
    for method, template, path, params in [
        ("GET", "/api/v1/meetings", "/api/v1/meetings", {}),
        ("GET", "/api/v1/meetings/{meeting_id}", "/api/v1/meetings/oa", {}),
        (
            "GET",
            "/api/v1/meetings/{meeting_id}/transcript",
            "/api/v1/meetings/oa/transcript",
            {"limit": 2},
        ),
        (
            "GET",
            "/api/v1/meetings/{meeting_id}/transcript",
            "/api/v1/meetings/oa/transcript",
            {"format": "json"},
        ),
        ("GET", "/api/v1/search", "/api/v1/search", {"q": "budget"}),
        ("GET", "/api/v1/meetings/{meeting_id}/notes", "/api/v1/meetings/oa/notes", {}),
        ("GET", "/api/v1/meetings/{meeting_id}/recordings", "/api/v1/meetings/oa/recordings", {}),
    ]:
        answer = gateway.get(path, token, **params)
        assert answer.status_code == 200, (path, answer.text)
        assert_answer_matches(spec, method, template, answer.json())
    one = gateway.get("/api/v1/meetings/oa", token).json()
    assert one["streams"] and one["streams"][0]["ended_at"] is None  # a nullable field, null
    async with httpx.AsyncClient(timeout=10, verify=gateway.verify) as client:
        edited = await client.patch(
            f"{gateway.http}/api/v1/meetings/oa/segments/1",
            json={"text": "the budget for the next quarter"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert edited.status_code == 200, edited.text
    template = "/api/v1/meetings/{meeting_id}/segments/{segment_no}"
    assert_answer_matches(spec, "PATCH", template, edited.json())


BAD_LIST_QUERIES = [
    ("limit=0", "limit must be an integer from 1 to 200"),
    ("limit=abc", "limit must be an integer"),
    ("limit=1&limit=2", "query parameter 'limit' is repeated; give it at most once"),
    ("cursor=not-a-cursor", "cursor is not one this server issued"),
    # A cursor made by hand (they held plain base64 JSON) is not one this deployment sealed.
    (
        "cursor=eyJjIjoiMjAyNi0xMi0wMVQwODowMDowMCswMDowMCIsIm0iOiJtMSJ9",
        "cursor is not one this server issued",
    ),
    ("since=yesterday", "since must be an ISO 8601 time"),
    ("since=0001-01-01T00:00:00%2B01:00", "since must be an ISO 8601 time"),  # before year 1 UTC
    ("active=maybe", "active must be true or false"),
]


async def test_bad_list_parameters_are_400_with_the_rule(
    seeded: tuple[Gateway, SqlTranscriptStore], keypair: KeyPair
) -> None:
    gateway, _ = seeded
    for query, rule in BAD_LIST_QUERIES:
        response = gateway.get(f"/api/v1/meetings?{query}", keypair.token(roles=["viewer"]))
        assert response.status_code == 400, query
        assert rule in response.json()["error"]["message"]


async def test_transcript_pages_and_streamed_exports(
    seeded: tuple[Gateway, SqlTranscriptStore], keypair: KeyPair
) -> None:
    gateway, store = seeded
    texts = [f"line {n}, with words" for n in range(1, 1203)]
    await say(store, "acme", "long", *texts, speaker="Speaker 1")
    viewer = keypair.token(roles=["viewer"])
    path = "/api/v1/meetings/long/transcript"

    paged = follow(gateway, path, viewer, "segments", limit=400, after=100)
    assert [s["segment_no"] for s in paged] == list(range(101, 1203))
    all_finals = await store.finals_after("acme", "long")
    for fmt in ("json", "srt", "vtt", "txt"):
        response = gateway.get(path, viewer, format=fmt)
        assert response.status_code == 200
        assert response.text == render(fmt, "long", all_finals)[0], fmt
        # Transcripts are not kept by a browser's or a proxy's cache.
        assert response.headers["cache-control"] == "no-store", fmt
    assert gateway.get("/api/v1/meetings", viewer).headers["cache-control"] == "no-store"
    slash = gateway.get("/api/v1/meetings/", viewer)  # was a 307 with an empty body
    assert slash.status_code == 404 and slash.json()["error"]["status"] == 404
    assert "cache-control" not in gateway.get("/healthz").headers
    # Meetings are read by viewers and ops alike (search shows ops the same text).
    ops = keypair.token(roles=["ops"])
    assert gateway.get(path, ops, format="txt").text == render("txt", "long", all_finals)[0]
    assert gateway.get(path, keypair.token(roles=["ingest"])).status_code == 403
    assert gateway.get(path, viewer, since=1200).json()["segments"][0]["segment_no"] == 1201

    for params, rule in [
        ({"limit": 10, "format": "srt"}, "limit pages the json format only"),
        ({"after": 2**31}, "after must be an integer from 0 to 2147483647"),
        ({"after": -1}, "after must be an integer"),
        ({"format": "pdf"}, "unknown export format"),
    ]:
        response = gateway.get(path, viewer, **params)
        assert response.status_code == 400 and rule in response.json()["error"]["message"]
    twice = gateway.get(f"{path}?format=json&format=srt", viewer)
    assert twice.status_code == 400
    other = keypair.token(tenant="other", roles=["viewer"])
    assert gateway.get(path, other).status_code == 404


async def test_subtitles_of_a_live_stream_and_a_recording_keep_each_final_at_its_time(
    seeded: tuple[Gateway, SqlTranscriptStore], keypair: KeyPair
) -> None:
    """A recording's finals are numbered after the live ones and start at 0 (their own time):
    the SRT and WebVTT exports place each at its time, in start order, none squeezed."""
    gateway, store = seeded
    await store.open_stream(
        "acme", "mixed", stream_id="s-live", source="mic", engine="local",
        sample_rate=16000, channels=1,
    )  # fmt: skip
    spans = []
    for n in range(1, 101):
        start = 3000 * n
        final = NewFinal(f"live {n}", start, start + 2000, "mic", stream_id="s-live")
        await store.store_numbered_final("acme", "mixed", n, final, datetime.now(UTC))
        spans.append((start, start + 2000))
    for n in range(1, 21):
        start = 2900 * n
        final = NewFinal(f"recorded {n}", start, start + 1000, "mic", stream_id="rec:job-1")
        await store.store_numbered_final("acme", "mixed", 100 + n, final, datetime.now(UTC))
        spans.append((start, start + 1000))
    viewer = keypair.token(roles=["viewer"])
    path = "/api/v1/meetings/mixed/transcript"
    for fmt, timing in (("srt", " --> "), ("vtt", " --> ")):
        body = gateway.get(path, viewer, format=fmt).text
        times = [line.split(timing) for line in body.splitlines() if timing in line]
        cues = [(_clock_ms(a), _clock_ms(b)) for a, b in times]
        assert cues == sorted(spans), fmt
    after = gateway.get(path, viewer, format="srt", after=110)
    assert after.text.count(" --> ") == 10 and "recorded 11" in after.text
    assert "live" not in after.text
    assert after.headers["content-disposition"] == 'inline; filename="mixed.srt"'
    page = gateway.get(path, viewer, limit=5)
    assert "content-disposition" not in page.headers


def _clock_ms(stamp: str) -> int:
    hours, minutes, seconds = stamp.replace(",", ".").split(":")
    return round((int(hours) * 3600 + int(minutes) * 60 + float(seconds)) * 1000)


async def test_search_across_meetings(
    seeded: tuple[Gateway, SqlTranscriptStore], keypair: KeyPair
) -> None:
    gateway, store = seeded
    await say(store, "acme", "q3", "Where did we decide the Q3 budget?", speaker="Speaker 1")
    await say(store, "acme", "q3", "We decided the Q3 budget on Thursday.", speaker="Speaker 2")
    await say(store, "acme", "ist", "İSTANBUL ofisi bütçeyi onayladı.", speaker="Ayşe")
    await say(store, "acme", "ist", "Irmak kenarında buluşuruz.")
    for n in range(30):
        await say(store, "acme", "many", f"budget item number {n}")
    await say(store, "other", "q3", "The Q3 budget of another tenant")
    viewer = keypair.token(roles=["viewer"])

    response = gateway.get("/api/v1/search", viewer, q='"q3 budget" decided')
    assert response.status_code == 200
    (hit,) = response.json()["results"]
    assert (hit["meeting_id"], hit["segment_no"], hit["speaker"]) == ("q3", 2, "Speaker 2")
    marked = [hit["snippet"][a:b] for a, b in hit["highlights"]]
    assert marked == ["decided", "Q3", "budget"]
    assert "<mark>Q3</mark>" in hit["snippet_html"]

    for q, expected in [("istanbul", ("ist", 1)), ("ırmak", ("ist", 2)), ("IRMAK", ("ist", 2))]:
        (hit,) = gateway.get("/api/v1/search", viewer, q=q).json()["results"]
        assert (hit["meeting_id"], hit["segment_no"]) == expected, q
    # A correction typed with separate combining accents (NFD, as macOS input gives them) is
    # found by the word, however the query spells it.
    editor = keypair.token(roles=["editor"])
    decomposed = "Cafe\u0301 bu\u0308tc\u0327esi Irmak kenarında."
    fixed = patch(gateway, "/api/v1/meetings/ist/segments/2", editor, {"text": decomposed})
    assert fixed.status_code == 200 and fixed.json()["text"].startswith("Café bütçesi")
    for q in ("café", "cafe\u0301", "bu\u0308tc\u0327esi", "bütçes*"):
        (hit,) = gateway.get("/api/v1/search", viewer, q=q).json()["results"]
        assert (hit["meeting_id"], hit["segment_no"]) == ("ist", 2), q

    everything = follow(gateway, "/api/v1/search", viewer, "results", q="budget", limit=7)
    keys = [(h["meeting_id"], h["segment_no"]) for h in everything]
    assert len(keys) == len(set(keys)) == 32  # two in q3, thirty in many; none of the other tenant
    only_q3 = gateway.get("/api/v1/search", viewer, q="budget", meeting="q3").json()["results"]
    assert {h["meeting_id"] for h in only_q3} == {"q3"}
    by_speaker = gateway.get("/api/v1/search", viewer, q="budget", speaker="Speaker 1").json()
    assert [h["segment_no"] for h in by_speaker["results"]] == [1]
    # Blank fields, as an HTML form sends them: as if left out.
    blank = gateway.get("/api/v1/search", viewer, q="budget", speaker="", meeting="", limit=50)
    assert len(blank.json()["results"]) == 32, blank.text
    claimed = keypair.token(roles=["viewer"], meetings=["ist"])
    assert gateway.get("/api/v1/search", claimed, q="budget").json()["results"] == []
    assert gateway.get("/api/v1/search", claimed, q="budget", meeting="q3").status_code == 403
    beyond = gateway.get("/api/v1/search", viewer, q="budget", until="9999-12-31T23:59:59-01:00")
    assert beyond.status_code == 400 and "until must be" in beyond.json()["error"]["message"]

    first = gateway.get("/api/v1/search", viewer, q="budget", limit=5).json()
    cursor = dict(parse_qsl(urlsplit(first["next"]).query))["cursor"]
    replayed = gateway.get("/api/v1/search", viewer, q="item", cursor=cursor)
    assert replayed.status_code == 400
    assert "another search" in replayed.json()["error"]["message"]
    # Sealed: it shows nothing (its row numbers told how many finals other tenants stored),
    # and an altered one, or another endpoint's, is refused.
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    with pytest.raises(ValueError):  # no longer base64 of JSON: nothing to read in it
        json.loads(raw)
    flipped = bytearray(raw)
    for at in (0, len(raw) // 2, len(raw) - 1):
        flipped[at] ^= 1
        forged = base64.urlsafe_b64encode(bytes(flipped)).rstrip(b"=").decode()
        flipped[at] ^= 1
        response = gateway.get("/api/v1/search", viewer, q="budget", cursor=forged)
        assert response.status_code == 400, response.text
    elsewhere = gateway.get("/api/v1/meetings", viewer, cursor=cursor)
    assert elsewhere.status_code == 400
    assert "not one this server issued" in elsewhere.json()["error"]["message"]
    for params in ({}, {"q": ""}, {"q": "x" * 300}):
        assert gateway.get("/api/v1/search", viewer, **params).status_code == 400
    # One limit, said the same however long the query (past 1,024 it said 1,024).
    for q in ("x" * 300, "x" * 2000):
        refused = gateway.get("/api/v1/search", viewer, q=q).json()["error"]["message"]
        assert refused == "q is limited to 256 characters", refused


@pytest.mark.parametrize(
    "correction",
    [
        "Sorry, to be precise: the budget was not the only thing discussed in this long call",
        "budget budget budget budget budget",
    ],
)
async def test_a_correction_between_pages_moves_no_result_of_the_later_pages(
    seeded: tuple[Gateway, SqlTranscriptStore], keypair: KeyPair, correction: str
) -> None:
    """The search tester corrected the last result of a page: its new score moved where the
    next page started, and nine results of twelve were never returned (a lower score), or the
    first page came again (a higher one)."""
    gateway, store = seeded
    for meeting in ("k1", "k2"):
        for n in range(6):
            await say(store, "acme", meeting, f"the budget review part {n} " + "words " * n)
    viewer, editor = keypair.token(roles=["viewer"]), keypair.token(roles=["editor"])
    whole = follow(gateway, "/api/v1/search", viewer, "results", q="budget", limit=50)
    assert len(whole) == 12
    first = gateway.get("/api/v1/search", viewer, q="budget", limit=3).json()
    last = first["results"][-1]
    path = f"/api/v1/meetings/{last['meeting_id']}/segments/{last['segment_no']}"
    assert patch(gateway, path, editor, {"text": correction}).status_code == 200
    rest = follow(gateway, first["next"], viewer, "results")
    keys = [(h["meeting_id"], h["segment_no"]) for h in first["results"] + rest]
    assert sorted(keys) == sorted((h["meeting_id"], h["segment_no"]) for h in whole), keys


def patch(
    gateway: Gateway, path: str, token: str, body: Any, content_type: str = "text/plain"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if isinstance(body, bytes):  # sent as is, not as JSON
        headers["Content-Type"] = content_type
        return httpx.patch(
            f"{gateway.http}{path}",
            headers=headers,
            content=body,
            timeout=10,
            verify=gateway.verify,
        )
    return httpx.patch(
        f"{gateway.http}{path}", headers=headers, json=body, timeout=10, verify=gateway.verify
    )


async def test_renames_and_corrections_reach_viewers_exports_and_search(
    seeded: tuple[Gateway, SqlTranscriptStore], keypair: KeyPair
) -> None:
    gateway, store = seeded
    await say(store, "acme", "m1", "the budge review is friday", speaker="Speaker 1")
    await say(store, "acme", "m1", "agreed", speaker="Speaker 2")
    editor = keypair.token(roles=["editor"])
    viewer = keypair.token(roles=["viewer"])
    url = f"{gateway.ws}/api/v1/ws/meetings/m1?token={viewer}"
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        while json.loads(await ws.recv())["type"] != "pong":
            pass  # the history comes first

        renamed = patch(
            gateway,
            "/api/v1/meetings/m1",
            editor,
            {"title": "Budget", "speakers": {"Speaker 1": "Ayşe"}},
        )
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["speaker_names"] == {"Speaker 1": "Ayşe"}
        assert renamed.json()["title"] == "Budget"
        update = json.loads(await ws.recv())
        assert update["type"] == "status" and update["event"] == "meeting.updated"
        assert update["speaker_names"] == {"Speaker 1": "Ayşe"}

        fixed = patch(
            gateway,
            "/api/v1/meetings/m1/segments/1",
            editor,
            {"text": "The budget review is Friday"},
        )
        assert fixed.status_code == 200, fixed.text
        assert fixed.json()["original_text"] == "the budge review is friday"
        correction = json.loads(await ws.recv())
        assert correction["event"] == "segment.corrected" and correction["segment_no"] == 1
        assert correction["text"] == "The budget review is Friday"
        # A second editor's correction made from the engine's text, sent with it: refused.
        stale = {
            "text": "The budget review is on Friday",
            "previous_text": "the budge review is friday",
        }
        late_edit = patch(gateway, "/api/v1/meetings/m1/segments/1", editor, stale)
        assert late_edit.status_code == 409, late_edit.text
        assert "corrected by user-1" in late_edit.json()["error"]["message"]
    # A viewer joining later gets the corrected final marked so (it saw no correction).
    async with connect(f"{url}&since=0") as late:
        first, second = json.loads(await late.recv()), json.loads(await late.recv())
    assert (first["segment_no"], first["text"]) == (1, "The budget review is Friday")
    assert first["edited_by"] == "user-1" and "edited_by" not in second

    srt = gateway.get("/api/v1/meetings/m1/transcript", viewer, format="srt").text
    assert "Ayşe: The budget review is Friday" in srt and "Speaker 2: agreed" in srt
    # The audit lines name the tenant (meeting ids repeat across tenants), never the text.
    audit = [json.loads(line) for line in gateway.logs().splitlines() if '"event"' in line]
    edits = [r for r in audit if r["event"] in ("meeting edited", "final corrected")]
    assert {r["event"] for r in edits} == {"meeting edited", "final corrected"}
    assert all(r["tenant"] == "acme" and r["by"] == "user-1" for r in edits), edits
    assert "budget review" not in gateway.logs().lower()
    (hit,) = gateway.get("/api/v1/search", viewer, q="budget").json()["results"]
    assert (hit["speaker"], hit["speaker_label"]) == ("Ayşe", "Speaker 1")
    assert gateway.get("/api/v1/meetings/m1", viewer).json()["title"] == "Budget"

    # Who may edit, and what is refused.
    ingest = keypair.token(roles=["ingest"])
    assert patch(gateway, "/api/v1/meetings/m1", ingest, {"title": "ok"}).status_code == 200
    assert patch(gateway, "/api/v1/meetings/m1", viewer, {"title": "no"}).status_code == 403
    other = keypair.token(tenant="other", roles=["editor"])
    assert patch(gateway, "/api/v1/meetings/m1", other, {"title": "no"}).status_code == 404
    claimed = keypair.token(roles=["editor"], meetings=["m2"])
    assert patch(gateway, "/api/v1/meetings/m1", claimed, {"title": "no"}).status_code == 403
    for body, status in [
        ({}, 400),
        ({"colour": "red"}, 400),
        ({"title": "x" * 201}, 400),
        ({"speakers": ["Speaker 1"]}, 400),
        ({"speakers": {"Speaker 1": 7}}, 400),
    ]:
        assert patch(gateway, "/api/v1/meetings/m1", editor, body).status_code == status, body
    # A meeting holds at most 100 names in all, not only 100 per call.
    names = gateway.get("/api/v1/meetings/m1", viewer).json()["speaker_names"]
    fill = {f"Guest {n}": f"Name {n}" for n in range(100 - len(names))}
    assert patch(gateway, "/api/v1/meetings/m1", editor, {"speakers": fill}).status_code == 200
    over = patch(gateway, "/api/v1/meetings/m1", editor, {"title": "no", "speakers": {"X": "x"}})
    assert over.status_code == 400
    assert "at most 100 speaker names" in over.json()["error"]["message"]
    swap = {"Guest 0": None, "X": "x"}  # one removed, one added: still 100
    assert patch(gateway, "/api/v1/meetings/m1", editor, {"speakers": swap}).status_code == 200
    after = gateway.get("/api/v1/meetings/m1", viewer).json()
    assert len(after["speaker_names"]) == 100 and after["title"] != "no"
    for path, body, status in [
        ("/api/v1/meetings/m1/segments/9", {"text": "x"}, 404),
        ("/api/v1/meetings/m1/segments/0", {"text": "x"}, 400),
        ("/api/v1/meetings/m1/segments/abc", {"text": "x"}, 400),
        ("/api/v1/meetings/m1/segments/1", {"text": ""}, 400),
        # Nothing visible: the final vanished from the SRT, WebVTT and text exports.
        ("/api/v1/meetings/m1/segments/1", {"text": "\u200b"}, 400),
        ("/api/v1/meetings/m1/segments/1", {"text": "\ufeff \u202e"}, 400),
        ("/api/v1/meetings/m1", {"title": "\u200b"}, 400),
        ("/api/v1/meetings/m1/segments/1", {"text": "x", "speaker": "y"}, 400),
    ]:
        assert patch(gateway, path, editor, body).status_code == status, path
    assert patch(gateway, "/api/v1/meetings/m1", editor, b"title=x").status_code == 415
    # Media types are case-insensitive.
    cased = patch(gateway, "/api/v1/meetings/m1", editor, b'{"title": "C"}', "Application/JSON")
    assert cased.status_code == 200, cased.text


async def test_the_viewer_page_relabels_speakers_and_corrects_lines_in_place(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, tmp_path: Path
) -> None:
    from tests.e2e.browser import chromium, collect_errors, wait_for_finals, wait_for_state

    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    await upgrade(url)
    store = SqlTranscriptStore(url)
    try:
        await say(store, "acme", "m1", "hello from the first speaker", speaker="Speaker 1")
        await say(store, "acme", "m1", "and hello from the second", speaker="Speaker 2")
    finally:
        await store.aclose()
    gateway = start_gateway(url)
    editor = keypair.token(roles=["editor"])
    assert patch(
        gateway, "/api/v1/meetings/m1", editor, {"speakers": {"Speaker 2": "Bob"}}
    ).is_success

    async with chromium() as browser:
        page = await browser.new_page()
        errors = collect_errors(page)
        token = keypair.token(meetings=["m1"])
        await page.goto(f"{gateway.http}/viewer?meeting=m1#token={token}")
        await wait_for_state(page, "live")
        await wait_for_finals(page, 2)
        who = page.locator("#finals li.final .who")
        # Names given before the page opened come with its first load.
        await page.wait_for_function(
            "() => [...document.querySelectorAll('#finals .who')].map(w => w.textContent)"
            ".join('|') === 'Speaker 1|Bob'",
            timeout=60_000,
        )

        # A rename while watching relabels every line of that speaker, and the title shows.
        renamed = patch(
            gateway,
            "/api/v1/meetings/m1",
            editor,
            {"title": "Weekly sync", "speakers": {"Speaker 1": "Ayşe"}},
        )
        assert renamed.is_success
        await page.wait_for_function(
            "() => document.querySelector('#finals .who').textContent === 'Ayşe'",
            timeout=60_000,
        )
        assert await who.all_text_contents() == ["Ayşe", "Bob"]
        assert "Weekly sync" in await page.locator("#meeting-name").text_content()

        fixed = patch(gateway, "/api/v1/meetings/m1/segments/2", editor, {"text": "Hi, Bob here."})
        assert fixed.is_success
        line = page.locator("#seg-2")
        await page.wait_for_function(
            "() => document.querySelector('#seg-2 .text').textContent === 'Hi, Bob here.'",
            timeout=60_000,
        )
        assert "corrected" in (await line.get_attribute("class") or "")
        # Opened afresh (another viewer, or this one reloaded): still marked, only that line.
        await page.reload()
        await wait_for_state(page, "live")
        await wait_for_finals(page, 2)
        assert "corrected" in (await page.locator("#seg-2").get_attribute("class") or "")
        assert "corrected" not in (await page.locator("#seg-1").get_attribute("class") or "")
        assert errors == []


async def delete(gateway: Gateway, path: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60, verify=gateway.verify) as http:
        return await http.delete(
            f"{gateway.http}{path}", headers={"Authorization": f"Bearer {token}"}
        )


@pytest.mark.timeout(600)
async def test_deleting_a_live_meeting_on_another_replica_leaves_nothing(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    pg_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    import asyncio

    import redis.asyncio as aredis

    from tests.e2e.harness import close_code_of, expect_close, handshake
    from tests.e2e.speech import stream_fixture, watch
    from tests.util import eventually

    await upgrade(pg_url)
    env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": redis_prefix}
    a, b = start_gateway(pg_url, **env), start_gateway(pg_url, **env)
    meeting = "doomed"
    viewer = await watch(b.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    talking = asyncio.create_task(
        stream_fixture(
            b, keypair.token(roles=["ingest"]), meeting, "librivox_austen_16k_mono.wav", speed=1
        )
    )
    await viewer.wait_for(lambda w: len(w.finals()) >= 1, timeout=120)

    admin = keypair.token(roles=["admin"])
    assert (
        patch(a, f"/api/v1/meetings/{meeting}", keypair.token(roles=["viewer"]), {}).status_code
        == 403
    )
    refused = await delete(a, f"/api/v1/meetings/{meeting}", keypair.token(roles=["editor"]))
    assert refused.status_code == 403
    deleted = await delete(a, f"/api/v1/meetings/{meeting}", admin)
    assert deleted.status_code == 204

    await viewer.wait_for(lambda w: w.close_code is not None, timeout=60)
    assert viewer.close_code == 4404
    summary = await asyncio.wait_for(talking, 120)
    assert summary.close_code == 4404
    # New connections to it are refused on every replica for a while.
    for replica in (a, b):
        assert await close_code_of(replica.subscribe_url(meeting, keypair.token())) == 4404
        # An ingest is refused before it takes a lease, opens an engine or writes a row.
        async with connect(replica.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
            await ws.send(handshake())
            code, messages = await expect_close(ws, timeout=60)
        assert code == 4404 and [m["type"] for m in messages] == ["error"], messages

    store = SqlTranscriptStore(pg_url)
    client = aredis.Redis.from_url(redis_url)
    try:

        async def nothing_left() -> bool:
            rows = await store.meeting_exists("acme", meeting) or await store.finals_after(
                "acme", meeting
            )
            keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*{meeting}*")]
            return not rows and not keys

        await eventually(nothing_left, within=90, interval=0.5, what="meeting gone everywhere")
        # And nothing comes back: no lease renewal (ingest's or live tips', every 2 s) takes a
        # deleted key again. Watched for three renewal periods.
        watch_until = asyncio.get_running_loop().time() + 6
        while asyncio.get_running_loop().time() < watch_until:
            assert await nothing_left(), "a key or row of the deleted meeting came back"
            await asyncio.sleep(0.5)
    finally:
        await store.aclose()
        await client.aclose()
    again = await delete(a, f"/api/v1/meetings/{meeting}", admin)
    assert again.status_code == 204  # idempotent
    assert a.get(f"/api/v1/meetings/{meeting}", keypair.token()).status_code == 404


async def test_a_restarted_gateway_still_refuses_a_meeting_it_deleted_lately(
    start_gateway: Callable[..., Gateway], keypair: KeyPair
) -> None:
    """The 2-minute refusal outlives the process (a replica that starts after the deletion's
    notices reads it from the database)."""
    from tests.e2e.harness import close_code_of, expect_close, handshake

    gateway = start_gateway()
    meeting = "deleted-then-restarted"
    admin = keypair.token(roles=["admin"])
    assert (await delete(gateway, f"/api/v1/meetings/{meeting}", admin)).status_code == 204
    gateway.stop()
    gateway.start()
    assert await close_code_of(gateway.subscribe_url(meeting, keypair.token())) == 4404
    async with connect(gateway.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
        await ws.send(handshake())
        code, messages = await expect_close(ws, timeout=60)
    assert code == 4404 and [m["type"] for m in messages] == ["error"], messages
    # It says when the id can be used again (a meeting id that recurs, purged by retention).
    left = re.fullmatch(
        r"meeting deleted; its id can be used again in (\d+) s", messages[0]["message"]
    )
    assert left is not None and 1 <= int(left[1]) <= 120, messages


async def test_a_deleted_meetings_words_leave_the_embedded_databases_files(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, tmp_path: Path
) -> None:
    """The privacy tester found a deleted meeting's words in SQLite's search index (deleted
    entries stay until its segments merge) and in its write-ahead log, all tables empty."""
    from tests.util import eventually

    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    await upgrade(url)
    store = SqlTranscriptStore(url)
    try:
        for meeting in ("secret", "kept"):
            for n in range(1, 30):
                text = f"quixotic zebracorn {n}" if meeting == "secret" else f"ordinary {n}"
                await store.append_final("acme", meeting, NewFinal(text, n, n + 1, "mic"))
    finally:
        await store.aclose()
    gateway = start_gateway(url)
    viewer = keypair.token(roles=["viewer"])
    assert gateway.get("/api/v1/search", viewer, q="zebracorn").json()["results"]
    admin = keypair.token(roles=["admin"])
    assert (await delete(gateway, "/api/v1/meetings/secret", admin)).status_code == 204

    def files_holding_the_words() -> list[str]:
        files = tmp_path.glob("gateway.db*")
        return [f.name for f in files if b"zebracorn" in f.read_bytes()]

    await eventually(lambda: not files_holding_the_words(), within=60, what="words gone")
    assert gateway.get("/api/v1/search", viewer, q="ordinary").json()["results"]  # the rest stays


async def test_retention_purges_meetings_inactive_for_longer(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, tmp_path: Path
) -> None:
    from datetime import timedelta

    from store.tables import meetings as meetings_table
    from tests.util import eventually

    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    await upgrade(url)
    store = SqlTranscriptStore(url)
    try:
        long_ago = datetime.now(UTC) - timedelta(days=3)
        for meeting in ("old", "recent"):
            n = 1
            final = NewFinal(text=f"{meeting} words", start_ms=0, end_ms=900, source="mic")
            at = long_ago if meeting == "old" else datetime.now(UTC)
            async with store.engine.begin() as conn:
                await conn.execute(
                    meetings_table.insert().values(
                        tenant_id="acme", meeting_id=meeting, created_at=at, last_segment_no=0
                    )
                )
            await store.store_numbered_final("acme", meeting, n, final, at)
        gateway = start_gateway(url, TRANSCRIPT_RETENTION_DAYS="1", RETENTION_INTERVAL_S="0.5")
        viewer = keypair.token(roles=["viewer"])

        def listed() -> list[str]:
            return [m["id"] for m in gateway.get("/api/v1/meetings", viewer).json()["meetings"]]

        await eventually(lambda: listed() == ["recent"], within=60, interval=0.2, what="purged")
        assert await store.finals_after("acme", "old") == []
        assert [f.text for f in await store.finals_after("acme", "recent")] == ["recent words"]
    finally:
        await store.aclose()


async def test_notes_over_the_stored_transcript_with_speaker_names(
    seeded: tuple[Gateway, SqlTranscriptStore], keypair: KeyPair
) -> None:
    gateway, store = seeded
    await say(store, "acme", "weekly", "Good morning everyone.", speaker="Speaker 1")
    await say(
        store,
        "acme",
        "weekly",
        "The quarterly numbers came in below the forecast again this time.",
        "We decided to cut the travel budget by twenty percent.",
        "I'll send the revised forecast by Friday.",
        speaker="Speaker 2",
    )
    await say(store, "other", "weekly", "We decided to close the office.", speaker="Speaker 1")
    editor = keypair.token(roles=["editor"])
    renamed = patch(gateway, "/api/v1/meetings/weekly", editor, {"speakers": {"Speaker 2": "Ayşe"}})
    assert renamed.status_code == 200, renamed.text
    viewer = keypair.token(roles=["viewer"])
    notes = gateway.get("/api/v1/meetings/weekly/notes", viewer)
    assert notes.status_code == 200, notes.text
    body = notes.json()
    assert body["finals"] == 4 and body["backend"] == "rules"
    assert body["summary"].startswith("The quarterly numbers came in below the forecast")
    assert body["decisions"] == ["We decided to cut the travel budget by twenty percent."]
    assert body["action_items"] == [
        {"text": "I'll send the revised forecast by Friday.", "owner": "Ayşe", "due": "friday"}
    ]
    assert body["questions"] == []
    # Tenant and meeting-claim isolation; a meeting that does not exist.
    other = gateway.get("/api/v1/meetings/weekly/notes", keypair.token(tenant="other")).json()
    assert (other["finals"], other["decisions"]) == (1, ["We decided to close the office."])
    stranger = keypair.token(tenant="beta", roles=["viewer"])
    assert gateway.get("/api/v1/meetings/weekly/notes", stranger).status_code == 404
    claimed = keypair.token(roles=["viewer"], meetings=["standup"])
    assert gateway.get("/api/v1/meetings/weekly/notes", claimed).status_code == 403
    assert gateway.get("/api/v1/meetings/nothing/notes", viewer).status_code == 404
    assert gateway.get("/api/v1/meetings/weekly/notes", "").status_code == 401


async def test_notes_that_could_not_be_made_again_keep_the_last_ones_made(
    database_url: str, start_gateway: Callable[..., Gateway], keypair: KeyPair
) -> None:
    """Notes were made; asked again, the backend failed every attempt: GET answers the notes
    made before (with `state: failed` and the error), not a preview that hides them."""
    from store.notes import NotesStore

    await upgrade(database_url)
    store = SqlTranscriptStore(database_url)
    notes = NotesStore(store.engine)
    body = {"summary": "Shipping Monday.", "decisions": ["Ship on Monday."]}
    try:
        await say(store, "acme", "review", "We decided to ship on Monday.")
        await notes.request("acme", "review", "request")
        claim = await notes.claim("elsewhere", lease_s=60)
        assert claim is not None
        made = {**body, "action_items": [], "questions": []}
        assert await notes.save(claim, "elsewhere", backend="llm", body=made, finals=1)
        await notes.request("acme", "review", "request")
        again = await notes.claim("elsewhere", lease_s=60)
        assert again is not None
        error = "InsightsUnavailable: the backend is down"
        await notes.attempt_failed(again, "elsewhere", error, retry_in_s=0, max_attempts=1)
    finally:
        await store.aclose()
    gateway = start_gateway(database_url)
    got = gateway.get("/api/v1/meetings/review/notes", keypair.token(roles=["viewer"])).json()
    assert (got["state"], got["error"], got["backend"]) == ("failed", error, "llm")
    assert got["summary"] == body["summary"] and got["decisions"] == body["decisions"]
    assert got["generated_at"] is not None and got["finals"] == 1


async def test_a_tenants_meetings_and_webhook_endpoints_are_purged_from_the_command_line(
    start_gateway: Callable[..., Gateway], database_url: str, keypair: KeyPair
) -> None:
    """`meeting-gateway meetings purge`: a tenant leaving, or asking for erasure, had each of
    its meetings and endpoints to delete one by one. Another tenant's stay."""
    from tests.e2e.test_quickstart import cli

    await upgrade(database_url)
    gateway = start_gateway(database_url, WEBHOOKS_ALLOW_PRIVATE="true")
    store = SqlTranscriptStore(database_url)
    try:
        for meeting in ("p1", "p2", "p3"):
            await say(store, "acme", meeting, f"words of {meeting}")
        await say(store, "other", "p1", "another tenant's words")
    finally:
        await store.aclose()
    admin = keypair.token(roles=["admin"])
    async with httpx.AsyncClient(timeout=30, verify=gateway.verify) as client:
        created = await client.post(
            f"{gateway.http}/api/v1/webhooks",
            json={"url": "http://127.0.0.1:9/hook"},
            headers={"Authorization": f"Bearer {admin}"},
        )
    assert created.status_code == 201, created.text
    token = keypair.token(roles=["ops", "admin"])
    args = ["meetings", "purge", "--url", gateway.http, "--token", token]
    dry = cli(*args)
    assert dry.returncode == 0, dry.stderr
    assert "would delete 3 meetings and 1 webhook endpoints" in dry.stdout
    assert len(gateway.get("/api/v1/meetings", token).json()["meetings"]) == 3
    done = cli(*args, "--yes")
    assert done.returncode == 0, done.stderr
    assert "deleted 3 meetings and 1 webhook endpoints" in done.stdout
    assert gateway.get("/api/v1/meetings", token).json()["meetings"] == []
    assert gateway.get("/api/v1/webhooks", token).json()["webhooks"] == []
    theirs = keypair.token(tenant="other", roles=["viewer"])
    assert [m["id"] for m in gateway.get("/api/v1/meetings", theirs).json()["meetings"]] == ["p1"]
    # A token that cannot delete is told so in one line, and nothing is deleted.
    viewer_only = cli("meetings", "purge", "--url", gateway.http, "--yes", "--token", theirs)
    assert viewer_only.returncode == 1 and "Traceback" not in viewer_only.stderr
    assert "403" in viewer_only.stderr, viewer_only.stderr
