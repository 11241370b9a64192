"""Viewer delivery through a real gateway: late join (history plus the in-flight partial),
a reconnect storm of `since=` viewers, and messages published by another replica through Redis."""

from __future__ import annotations

import asyncio
import json

from store.base import NewFinal
from store.migrate import open_store
from tests.e2e.harness import Gateway, KeyPair
from tests.e2e.speech import stream_fixture, watch


def partial_message(meeting: str, segment_no: int, text: str, source: str = "mic") -> bytes:
    return json.dumps(
        {
            "type": "transcript.partial",
            "meeting_id": meeting,
            "segment_no": segment_no,
            "text": text,
            "start_ms": 0,
            "end_ms": 100,
            "speaker": None,
            "confidence": None,
            "source": source,
            "ts": "2026-01-01T00:00:00.000Z",
        },
        separators=(",", ":"),
    ).encode()


def final_message(meeting: str, segment_no: int, text: str, source: str = "mic") -> bytes:
    data = json.loads(partial_message(meeting, segment_no, text, source))
    data["type"] = "transcript.final"
    return json.dumps(data, separators=(",", ":")).encode()


async def sqlite_with_three_finals(tmp_path, meeting: str) -> str:
    """A SQLite store holding finals "stored 1".."stored 3" of `meeting` (tenant acme); its URL."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    store = await open_store(url)
    try:
        await store.claim_meeting("acme", meeting)
        for n in range(1, 4):
            stored = NewFinal(text=f"stored {n}", start_ms=n, end_ms=n + 1, source="mic")
            await store.append_final("acme", meeting, stored)
    finally:
        await store.aclose()
    return url


async def test_late_joiners_get_history_then_the_in_flight_partial_and_storms_complete(
    start_gateway, keypair: KeyPair, meeting: str, private_redis, tmp_path
) -> None:
    url = await sqlite_with_three_finals(tmp_path, meeting)
    gw = start_gateway(url, REDIS_URL=private_redis.url, MAX_WS_CLIENTS_PER_MEETING="100")
    viewer = keypair.token(roles=["viewer"])
    topic = f"meeting:acme:{meeting}:transcript"
    publisher = private_redis.client()
    watchers = []
    try:
        first = await watch(gw.subscribe_url(meeting, viewer))
        watchers.append(first)
        # Another replica's ingest publishes the sentence under way.
        await publisher.publish(topic, partial_message(meeting, 4, "hel"))
        await publisher.publish(topic, partial_message(meeting, 4, "hello wor"))
        await first.wait_for(lambda w: len(w.partials()) == 2, timeout=60)

        # A reconnect storm: many viewers ask for the whole meeting at once.
        storm = await asyncio.gather(
            *(watch(gw.subscribe_url(meeting, viewer, since=0)) for _ in range(40))
        )
        watchers.extend(storm)
        for late in storm:
            assert [f["segment_no"] for f in late.finals()] == [1, 2, 3]
            await late.wait_for(lambda w: len(w.partials()) == 1, timeout=60)
            assert late.partials()[0]["text"] == "hello wor"
            types = [m["type"] for m in late.messages]
            assert types.index("transcript.partial") > types.index("transcript.final")

        await publisher.publish(topic, final_message(meeting, 4, "hello world"))
        for watcher in watchers:
            await watcher.wait_for(lambda w: any(f["segment_no"] == 4 for f in w.finals()), 60)
            assert [f["segment_no"] for f in watcher.finals()][-1] == 4
        # The final cleared the in-flight partial: a viewer joining now gets none. This test
        # publishes final 4 without storing it: the history from 3 waits for the store to have
        # it (as for an outbox catching up, HISTORY_CATCH_UP_S), then goes on without it.
        after = await watch(gw.subscribe_url(meeting, viewer, since=3))
        watchers.append(after)
        await publisher.publish(topic, final_message(meeting, 5, "next"))
        await after.wait_for(lambda w: len(w.finals()) == 1, timeout=60)
        assert [f["segment_no"] for f in after.finals()] == [5] and after.partials() == []
    finally:
        await publisher.aclose()
        for watcher in watchers:
            await watcher.close()


async def test_finals_name_their_stream_live_and_from_the_store(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    """A reconnecting client credits each final to the stream whose audio it covers: a viewer
    that resubscribed across a restart gets the new stream's finals from the store without
    that stream's `stream.started` (docs/protocol.md, `transcript.final`)."""
    viewer = keypair.token(roles=["viewer"])
    live = await watch(gateway.subscribe_url(meeting, viewer))
    try:
        summary = await stream_fixture(
            gateway, keypair.token(roles=["ingest"]), meeting, "two_sentences_16k_mono.wav"
        )
        stream_id = summary.ready["stream_id"]
        await live.wait_for(lambda w: len(w.finals()) == 2, timeout=120)
        assert [f["stream_id"] for f in live.finals()] == [stream_id] * 2
        assert all("stream_id" not in p for p in live.partials())  # finals only
    finally:
        await live.close()
    history = await watch(gateway.subscribe_url(meeting, viewer, since=0))
    try:
        await history.wait_for(lambda w: len(w.finals()) == 2, timeout=120)
        assert [f["stream_id"] for f in history.finals()] == [stream_id] * 2
    finally:
        await history.close()
