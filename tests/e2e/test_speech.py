"""Real speech through the whole path: ingest, local engine, numbering, store, fan-out, export."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from websockets.asyncio.client import connect

from gateway.client.audio import load_wav_pcm
from tests.e2e.harness import Gateway, KeyPair, expect_close, handshake, word_error_rate
from tests.e2e.speech import fixture, stream_fixture, watch

SRT_BLOCK = re.compile(
    r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.+?)(?:\n\n|\n?$)", re.S
)
VTT_TIME = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})$", re.M)


def _ms(stamp: str) -> int:
    hours, minutes, seconds = stamp.split(":")
    return round((int(hours) * 3600 + int(minutes) * 60 + float(seconds)) * 1000)


def _ended(source: str = "mic"):
    return lambda w: any(
        m["event"] == "stream.ended" and m["source"] == source for m in w.of_type("status")
    )


@pytest.mark.parametrize(
    "name",
    ["two_sentences_16k_mono.wav", "two_sentences_48k_mono.wav", "two_sentences_48k_stereo.wav"],
)
async def test_speech_reaches_two_subscribers_as_partials_and_numbered_finals(
    gateway: Gateway, keypair: KeyPair, meeting: str, name: str
) -> None:
    _, sentences = fixture(name)
    viewer = keypair.token(roles=["viewer"])
    first = await watch(gateway.subscribe_url(meeting, viewer))
    second = await watch(gateway.subscribe_url(meeting, viewer))

    summary = await stream_fixture(gateway, keypair.token(roles=["ingest"]), meeting, name)
    assert summary.close_code == 1000, summary.errors
    assert summary.ready["engine"] == "local"
    for watcher in (first, second):
        await watcher.wait_for(_ended())
        await watcher.close()

    finals = first.finals()
    assert [f["segment_no"] for f in finals] == [1, 2], finals  # one final per sentence
    assert second.finals() == finals  # identical bytes reached both
    for reference, final in zip(sentences, finals, strict=True):
        assert word_error_rate(reference, final["text"]) <= 0.34, (reference, final["text"])
        assert final["source"] == "mic" and final["meeting_id"] == meeting
        assert 0 <= final["start_ms"] < final["end_ms"]
    assert finals[0]["end_ms"] <= finals[1]["start_ms"]

    # Partials come while speaking, each numbered as the final it becomes, before that final.
    partials = first.partials()
    assert {p["segment_no"] for p in partials} == {1, 2}
    for final in finals:
        index_of_final = first.messages.index(final)
        assert any(
            first.messages.index(p) < index_of_final
            for p in partials
            if p["segment_no"] == final["segment_no"]
        )
    statuses = [m["event"] for m in first.of_type("status")]
    assert statuses == ["stream.started", "stream.ended"]

    # The store holds exactly what was delivered.
    stored = gateway.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()
    keys = ("segment_no", "text", "start_ms", "end_ms", "speaker", "confidence", "source")
    keys += ("stream_id",)
    assert stored["meeting_id"] == meeting
    assert [{k: s[k] for k in keys} for s in stored["segments"]] == [
        {k: f[k] for k in keys} for f in finals
    ]
    # One stream: the meeting's clock is the stream's.
    assert all(s["meeting_start_ms"] == s["start_ms"] for s in stored["segments"])


async def test_exports_are_valid_srt_vtt_and_text(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    summary = await stream_fixture(
        gateway, keypair.token(roles=["ingest"]), meeting, "two_sentences_16k_mono.wav"
    )
    assert summary.close_code == 1000
    viewer = keypair.token(roles=["viewer"])
    finals = gateway.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()["segments"]
    assert len(finals) == 2

    srt = gateway.get(f"/api/v1/meetings/{meeting}/transcript", viewer, format="srt")
    assert srt.status_code == 200 and "subrip" in srt.headers["content-type"]
    blocks = SRT_BLOCK.findall(srt.text.strip())
    assert [int(b[0]) for b in blocks] == [1, 2]
    assert [b[3].strip() for b in blocks] == [f["text"] for f in finals]
    assert all(b[1] < b[2] for b in blocks)

    vtt = gateway.get(f"/api/v1/meetings/{meeting}/transcript", viewer, format="vtt")
    assert vtt.status_code == 200 and vtt.headers["content-type"].startswith("text/vtt")
    assert vtt.text.startswith("WEBVTT\n")
    assert len(VTT_TIME.findall(vtt.text)) == 2

    txt = gateway.get(f"/api/v1/meetings/{meeting}/transcript", viewer, format="txt")
    assert txt.status_code == 200 and finals[0]["text"] in txt.text

    since = gateway.get(f"/api/v1/meetings/{meeting}/transcript", viewer, since=1).json()
    assert [s["segment_no"] for s in since["segments"]] == [2]
    bad = gateway.get(f"/api/v1/meetings/{meeting}/transcript", viewer, format="docx")
    assert bad.status_code == 400 and "srt" in bad.json()["error"]["message"]


async def test_numbering_continues_across_streams_and_sources_and_since_resumes(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    ingest = keypair.token(roles=["ingest"])
    for source in ("mic", "system"):
        summary = await stream_fixture(
            gateway, ingest, meeting, "two_sentences_16k_mono.wav", source=source, speed=6
        )
        assert summary.close_code == 1000
    viewer = keypair.token(roles=["viewer"])
    late = await watch(gateway.subscribe_url(meeting, viewer, since=2))
    await late.wait_for(lambda w: len(w.finals()) >= 2)
    await late.close()
    resumed = late.finals()
    assert [f["segment_no"] for f in resumed] == [3, 4]
    assert {f["source"] for f in resumed} == {"system"}
    stored = gateway.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()["segments"]
    assert [s["segment_no"] for s in stored] == [1, 2, 3, 4]
    assert [s["source"] for s in stored] == ["mic", "mic", "system", "system"]
    # Each stream's time starts at 0; subtitles place each on the meeting's clock, in order.
    vtt = gateway.get(f"/api/v1/meetings/{meeting}/transcript", viewer, format="vtt").text
    starts = [start for start, _ in VTT_TIME.findall(vtt)]
    assert len(starts) == 4 and starts == sorted(starts), vtt
    cue_ms = {int(no): _ms(at) for no, at in re.findall(r"^(\d+)\n(\S+) -->", vtt, re.M)}
    shift = [cue_ms[s["segment_no"]] - s["start_ms"] for s in stored]
    assert shift[0] == shift[1] == 0 and shift[2] == shift[3] > 0, (shift, vtt)
    # JSON says the same: each final's stream, and its place on the meeting's clock (whole, and
    # paged).
    assert [s["meeting_start_ms"] for s in stored] == [cue_ms[s["segment_no"]] for s in stored]
    assert stored[0]["stream_id"] and stored[0]["stream_id"] != stored[2]["stream_id"]
    paged = gateway.get(f"/api/v1/meetings/{meeting}/transcript", viewer, limit=4).json()
    assert paged["segments"] == stored
    # Two sources and no speakers: subtitles and text say which source each line is.
    assert [line.split("] ")[1].split(":")[0] for line in txt_lines(gateway, meeting, viewer)] == [
        *("mic", "mic", "system", "system")
    ]
    assert vtt.count("<v mic>") == 2 and vtt.count("<v system>") == 2, vtt


async def test_both_sources_stream_at_once_into_one_numbering(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    ingest = keypair.token(roles=["ingest"])
    viewer = keypair.token(roles=["viewer"])
    watcher = await watch(gateway.subscribe_url(meeting, viewer))
    results = await asyncio.gather(
        stream_fixture(gateway, ingest, meeting, "two_sentences_16k_mono.wav", source="mic"),
        stream_fixture(gateway, ingest, meeting, "two_sentences_48k_stereo.wav", source="system"),
    )
    assert [r.close_code for r in results] == [1000, 1000]
    await watcher.wait_for(lambda w: _ended("mic")(w) and _ended("system")(w))
    await watcher.close()
    numbers = [f["segment_no"] for f in watcher.finals()]
    assert sorted(numbers) == [1, 2, 3, 4] and numbers == sorted(numbers)


async def test_flush_on_rate_limit_keeps_accepted_audio(
    start_gateway, keypair: KeyPair, meeting: str
) -> None:
    """Frames accepted before the 4429 are transcribed, stored and published."""

    gw = start_gateway(INGEST_FRAMES_PER_S="20")  # burst 40 frames
    path, sentences = fixture("two_sentences_16k_mono.wav")
    pcm, rate, _ = load_wav_pcm(path)
    viewer = keypair.token(roles=["viewer"])
    watcher = await watch(gw.subscribe_url(meeting, viewer))
    frame = rate * 2 // 10  # 100 ms
    first_sentence = pcm[: rate * 2 * 33 // 10]  # 3.3 s: the first sentence and a pause
    async with connect(gw.ingest_url(meeting, keypair.token(roles=["ingest"]))) as ws:
        await ws.send(handshake(sample_rate=rate))
        assert json.loads(await ws.recv())["type"] == "ready"
        for start in range(0, len(first_sentence), frame):
            await ws.send(first_sentence[start : start + frame])  # 33 frames: within the burst
        for _ in range(60):  # then a flood
            await ws.send(b"\x00\x00" * 1600)
        code, messages = await expect_close(ws, timeout=60)
    assert code == 4429
    assert any(m["type"] == "error" and m["code"] == 4429 for m in messages)
    await watcher.wait_for(_ended())
    await watcher.close()
    finals = watcher.finals()
    assert finals and word_error_rate(sentences[0], finals[0]["text"]) <= 0.34
    stored = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()["segments"]
    assert [s["text"] for s in stored] == [f["text"] for f in finals]


async def test_client_vanishing_mid_stream_still_persists_accepted_audio(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:

    path, sentences = fixture("two_sentences_16k_mono.wav")
    pcm, rate, _ = load_wav_pcm(path)
    viewer = keypair.token(roles=["viewer"])
    watcher = await watch(gateway.subscribe_url(meeting, viewer))
    ws = await connect(gateway.ingest_url(meeting, keypair.token(roles=["ingest"])))
    await ws.send(handshake(sample_rate=rate))
    assert json.loads(await ws.recv())["type"] == "ready"
    frame = rate * 2 // 10
    for start in range(0, rate * 2 * 33 // 10, frame):
        await ws.send(pcm[start : start + frame])
    ws.transport.abort()  # no close frame: the client just disappears
    await watcher.wait_for(_ended())
    await watcher.close()
    finals = watcher.finals()
    assert len(finals) == 1 and word_error_rate(sentences[0], finals[0]["text"]) <= 0.34


async def test_tenant_isolation(gateway: Gateway, keypair: KeyPair, meeting: str) -> None:
    other = await watch(gateway.subscribe_url(meeting, keypair.token("globex", ["viewer"])))
    own = await watch(gateway.subscribe_url(meeting, keypair.token("acme", ["viewer"])))
    summary = await stream_fixture(
        gateway, keypair.token("acme", ["ingest"]), meeting, "two_sentences_16k_mono.wav", speed=6
    )
    assert summary.close_code == 1000
    await own.wait_for(_ended())
    # Prove the other tenant's socket is live and in order: a ping answered after the stream.
    await other.ws.send(json.dumps({"type": "ping"}))
    await other.wait_for(lambda w: len(w.messages) >= 1)
    await own.close()
    await other.close()
    assert [m["type"] for m in other.messages] == ["pong"]
    assert len(own.finals()) == 2
    globex = keypair.token("globex", ["viewer"])
    assert gateway.get(f"/api/v1/meetings/{meeting}/transcript", globex).status_code == 404
    acme = keypair.token("acme", ["viewer"])
    assert gateway.get(f"/api/v1/meetings/{meeting}/transcript", acme).status_code == 200


def test_logs_hold_no_tokens_or_transcript_text(gateway: Gateway, keypair: KeyPair) -> None:
    """Runs after the module's streams: INFO logs must not contain tokens or spoken words."""
    logs = gateway.logs()
    assert "ingest started" in logs  # the log is really being written
    assert "eyJ" not in logs  # no JWT (header starts with base64 '{"')
    assert "token=" not in logs
    for word in ("quick brown", "lazy dog", "afternoon"):
        assert word not in logs


def txt_lines(gateway: Gateway, meeting: str, token: str) -> list[str]:
    body = gateway.get(f"/api/v1/meetings/{meeting}/transcript", token, format="txt").text
    return body.splitlines()
