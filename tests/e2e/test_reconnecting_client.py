"""The desktop-side client survives a gateway restart mid-stream: every word arrives, numbering
continues, and a resuming viewer ends with exactly the stored finals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from gateway.client.audio import load_wav_pcm
from gateway.client.reconnect import ReconnectSummary, stream_pcm_reconnecting
from gateway.client.resume import Backoff, follow
from gateway.client.urls import ingest_url, subscribe_url
from tests.e2e.harness import REPO, Gateway, KeyPair, word_error_rate
from tests.e2e.speech import fixture, watch
from tests.e2e.test_resilience import _engine_workers
from tests.util import eventually

FAST = Backoff(base_s=0.2, cap_s=1.0, max_attempts=200)


def resuming(
    gw: Gateway, meeting: str, token: str, audio: tuple[bytes, int, int], **options: Any
) -> Coroutine[Any, Any, ReconnectSummary]:
    """The reconnecting client's session (fast backoff) streaming `audio` (pcm, rate,
    channels), its view of the meeting on `view` (a link to the gateway) or the gateway."""
    view = options.pop("view", gw.http)
    pcm, rate, channels = audio
    return stream_pcm_reconnecting(
        ingest_url(gw.http, meeting),
        subscribe_url(view, meeting),
        token,
        pcm,
        sample_rate=rate,
        channels=channels,
        **{"backoff": FAST, "close_timeout_s": 120, **options},
    )


@pytest.mark.parametrize(("how", "close_code"), [("drain", 1012), ("crash", 1006)])
async def test_ingest_and_viewer_survive_a_restart_mid_stream(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, how: str, close_code: int
) -> None:
    """Restarted gracefully (SIGTERM: drain, 1012) or after a crash (SIGKILL: the sockets just
    drop and the audio the gateway had not finalized is lost with it)."""
    gw = start_gateway(DRAIN_TIMEOUT_S="15", LOCAL_ENGINE_WORKERS="1")
    path, sentences = fixture("two_sentences_16k_mono.wav")
    pcm, rate, channels = load_wav_pcm(path)
    pcm = pcm * 2  # four sentences: the restart falls in the middle of them
    token = keypair.token(roles=["ingest", "viewer"], meetings=[meeting], ttl=3600)

    viewer_finals: list[dict] = []
    stop_viewer = asyncio.Event()
    viewer_closes: list[int] = []
    viewer = asyncio.create_task(
        follow(
            subscribe_url(gw.http, meeting),
            keypair.token(),
            since=0,
            on_message=lambda m: (
                viewer_finals.append(m) if m["type"] == "transcript.final" else None
            ),
            backoff=FAST,
            stop=stop_viewer,
            on_reconnect=lambda closed, _delay: viewer_closes.append(closed.code),
        )
    )
    seen: list[dict] = []
    ingest_closes: list[int] = []
    ingest = asyncio.create_task(
        resuming(
            gw,
            meeting,
            token,
            (pcm, rate, channels),
            speed=1.5,
            on_transcript=seen.append,
            on_reconnect=lambda what, code, _delay: ingest_closes.append(code),
        )
    )

    # Restart once the first sentence is final and the second one is under way.
    await eventually(
        lambda: any(m["type"] == "transcript.partial" and m["segment_no"] == 2 for m in seen),
        within=60,
        what="the second sentence in progress",
    )
    # Blocking calls go to a thread: the clients on this loop must keep reading meanwhile.
    if how == "drain":
        assert await asyncio.to_thread(gw.stop, signal.SIGTERM, 60) == 0
    else:
        workers = _engine_workers(gw.process.pid)
        assert await asyncio.to_thread(gw.stop, signal.SIGKILL, 30) == -signal.SIGKILL
        for pid in workers:  # orphaned by the crash
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    restarted = await asyncio.to_thread(Gateway(gw.env, gw.log_path, port=gw.port).start)
    try:
        summary = await asyncio.wait_for(ingest, 180)
        assert summary.ok, summary.runs
        assert summary.reconnects >= 1 and close_code in ingest_closes, (
            summary.runs,
            ingest_closes,
        )

        stored = restarted.get(
            f"/api/v1/meetings/{meeting}/transcript", keypair.token(), format="json"
        ).json()["segments"]
        numbers = [s["segment_no"] for s in stored]
        assert numbers == list(range(1, len(stored) + 1))  # numbering continued, no gap
        # Each stream resumed where its audio began (`resumes`): every final is on the meeting's
        # clock where it lies in the audio, not later by the time the client was away.
        readies = [m for m in summary.messages if m["type"] == "ready"]
        assert [m.get("resumed") for m in readies][1:] == [True] * (len(readies) - 1)
        began_ms = {
            run.stream_id: run.offset * 1000 // (2 * channels * rate) for run in summary.runs
        }
        placed = [(s["meeting_start_ms"], began_ms[s["stream_id"]] + s["start_ms"]) for s in stored]
        assert all(abs(at - spoken) <= 2 for at, spoken in placed), placed
        transcript = " ".join(s["text"] for s in stored)
        assert word_error_rate(" ".join(sentences * 2), transcript) <= 0.34, transcript

        # The viewer resumed with since= and has exactly the stored finals, in order, once.
        expected = [(s["segment_no"], s["text"]) for s in stored]
        await eventually(
            lambda: len(viewer_finals) >= len(expected), within=90, what="viewer caught up"
        )
        assert [(f["segment_no"], f["text"]) for f in viewer_finals] == expected
        assert close_code in viewer_closes
    finally:
        stop_viewer.set()
        await asyncio.wait_for(viewer, 60)
        await asyncio.to_thread(restarted.stop)


def words(text: str) -> str:
    return re.sub(r"[^\w\s']", "", text).lower()


async def test_a_sentence_a_drain_cut_is_transcribed_whole_after_the_resume(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """The drain falls mid-sentence. Its flush used to store the sentence's first words and the
    resumed stream the rest: one sentence in two finals, the word at the cut split in halves
    heard as other words. The drain keeps no final reaching into the cut, so the client re-sends
    the sentence and its next stream stores it whole."""
    gw = start_gateway(DRAIN_TIMEOUT_S="15", LOCAL_ENGINE_WORKERS="1")
    path, sentences = fixture("two_sentences_16k_mono.wav")
    pcm, rate, channels = load_wav_pcm(path)
    pcm, sentences = pcm * 2, sentences * 2
    token = keypair.token(roles=["ingest", "viewer"], meetings=[meeting], ttl=3600)
    seen: list[dict] = []
    ingest = asyncio.create_task(
        resuming(
            gw,
            meeting,
            token,
            (pcm, rate, channels),
            speed=1.0,  # the second sentence lasts 2 s: the drain falls inside it
            on_transcript=seen.append,
        )
    )
    restarted: Gateway | None = None
    try:
        await eventually(
            lambda: any(m["type"] == "transcript.partial" and m["segment_no"] == 2 for m in seen),
            within=60,
            what="the second sentence in progress",
        )
        assert not any(m["type"] == "transcript.final" and m["segment_no"] == 2 for m in seen)
        assert await asyncio.to_thread(gw.stop, signal.SIGTERM, 60) == 0
        restarted = await asyncio.to_thread(Gateway(gw.env, gw.log_path, port=gw.port).start)
        summary = await asyncio.wait_for(ingest, 180)
        assert summary.ok and summary.reconnects >= 1, summary.runs

        stored = restarted.get(
            f"/api/v1/meetings/{meeting}/transcript", keypair.token(), format="json"
        ).json()["segments"]
        said = [words(s["text"]) for s in stored]
        assert len(said) == len(sentences), said  # one final per sentence: none split
        for sentence, text in zip(sentences, said, strict=True):
            assert word_error_rate(sentence, text) <= 0.2, said
    finally:
        if not ingest.done():
            ingest.cancel()
            await asyncio.gather(ingest, return_exceptions=True)
        if restarted is not None:
            await asyncio.to_thread(restarted.stop)


async def test_a_stream_closed_4429_comes_back_later_and_the_meeting_is_whole(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """4429 means "later" (docs/protocol.md): the client reconnects after a longer wait and
    re-sends what no final covers, rather than ending the session with the rest unsent. Here
    its 20 ms frames at 50/s are over a 40/s limit: the stream is refused once the burst is
    spent, about 8 s in."""
    gw = start_gateway(INGEST_FRAMES_PER_S="40")
    path, sentences = fixture("two_sentences_16k_mono.wav")
    pcm, rate, channels = load_wav_pcm(path)
    token = keypair.token(roles=["ingest", "viewer"], meetings=[meeting], ttl=3600)
    closes: list[int] = []
    summary = await asyncio.wait_for(
        resuming(
            gw,
            meeting,
            token,
            (pcm * 2, rate, channels),
            frame_ms=20,
            max_fps=50,
            on_reconnect=lambda what, code, _delay: closes.append(code),
        ),
        180,
    )
    assert summary.ok and 4429 in closes, (summary.runs, closes)
    stored = gw.get(
        f"/api/v1/meetings/{meeting}/transcript", keypair.token(), format="json"
    ).json()["segments"]
    said = " ".join(words(s["text"]) for s in stored)
    assert word_error_rate(" ".join(sentences * 2), said) <= 0.2, said


async def test_streams_refused_4429_before_any_final_end_the_session(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """At 5 frames/s (burst 10) every stream is refused 200 ms in, before a final: the client
    gives up when its attempts are spent (it used to count again from 0 at each `ready`, and
    re-sent the same seconds forever)."""
    gw = start_gateway(INGEST_FRAMES_PER_S="5")
    pcm, rate, channels = load_wav_pcm(fixture("two_sentences_16k_mono.wav")[0])
    token = keypair.token(roles=["ingest", "viewer"], meetings=[meeting], ttl=3600)
    summary = await asyncio.wait_for(
        resuming(
            gw,
            meeting,
            token,
            (pcm, rate, channels),
            frame_ms=20,
            max_fps=50,
            backoff=Backoff(base_s=0.2, cap_s=1.0, max_attempts=2),
        ),
        120,
    )
    assert not summary.ok and [run.close_code for run in summary.runs] == [4429] * 3


async def test_send_script_in_reconnect_mode_streams_and_shows_the_transcript(
    gateway: Gateway, keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    key = tmp_path / "jwt.key"
    key.write_bytes(keypair.private_pem)
    path, _ = fixture("two_sentences_16k_mono.wav")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "scripts" / "dev_send_pcm.py"),
        *("--meeting", meeting, "--url", gateway.http, "--key", str(key)),
        *("--wav", str(path), "--speed", "4", "--reconnect"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    finals = [line.split()[0] for line in lines if line.startswith("#")]
    assert finals == ["#1", "#2"], lines  # the meeting's finals, as the viewer side saw them
    assert lines[-1].startswith("closed code=1000 streams=1 reconnects=0"), lines


class HeldLink:
    """A TCP relay to the gateway that can hold back everything the gateway sends (and new
    connections): a client behind it does not learn what happened until it is released."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        await self.flowing.wait()
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        for task in (
            asyncio.create_task(self._pump(client_r, up_w, held=False)),
            asyncio.create_task(self._pump(up_r, client_w, held=True)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, held: bool
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                if held:
                    await self.flowing.wait()
                writer.write(data)
                await writer.drain()
            if held:
                await self.flowing.wait()
        writer.close()

    async def close(self) -> None:
        self.flowing.set()
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def last_final_end_ms(view: list[dict], stream_id: str | None) -> int:
    """Where (ms into the stream) the last final of `stream_id` in the meeting's messages ends."""
    current, end = None, 0
    for message in view:
        if message["type"] == "status" and message.get("event") == "stream.started":
            current = message["stream_id"]
        elif message["type"] == "transcript.final" and current == stream_id:
            end = max(end, message["end_ms"])
    return end


async def test_a_drain_final_the_client_has_not_seen_is_not_stored_twice_on_resume(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """The drained stream's last final is stored, but the client's meeting view (behind a held
    link) has not seen it when the restarted gateway takes the reconnect. Resuming from the last
    final it had seen re-sent the audio the unseen final covered, and the new stream stored those
    words a second time (issue 19)."""
    gw = start_gateway(DRAIN_TIMEOUT_S="15", LOCAL_ENGINE_WORKERS="1")
    path, sentences = fixture("two_sentences_16k_mono.wav")
    pcm, rate, channels = load_wav_pcm(path)
    pcm, sentences = pcm * 2, sentences * 2  # the drain falls after the second of four
    token = keypair.token(roles=["ingest", "viewer"], meetings=[meeting], ttl=3600)
    link = HeldLink(gw.port)

    def stored_finals() -> int:
        transcript = gw.get(
            f"/api/v1/meetings/{meeting}/transcript", keypair.token(), format="json"
        )
        return len(transcript.json()["segments"])

    link_http = await link.start()

    seen: list[dict] = []
    ingest_messages: list[dict] = []
    ingest = asyncio.create_task(
        resuming(
            gw,
            meeting,
            token,
            (pcm, rate, channels),
            view=link_http,
            speed=1.5,
            on_message=ingest_messages.append,
            on_transcript=seen.append,
        )
    )

    def readies() -> int:
        return sum(1 for m in ingest_messages if m.get("type") == "ready")

    restarted: Gateway | None = None
    try:
        # The view learns nothing from the second sentence on; the drain comes once that
        # sentence's final is stored (a final running into the drain's cut is not kept).
        await eventually(
            lambda: any(m["type"] == "transcript.partial" and m["segment_no"] == 2 for m in seen),
            within=60,
            what="the second sentence in progress",
        )
        link.flowing.clear()
        await eventually(
            lambda: asyncio.to_thread(lambda: stored_finals() >= 2),
            within=60,
            interval=0.05,
            what="the second final stored",
        )
        assert await asyncio.to_thread(gw.stop, signal.SIGTERM, 30) == 0
        restarted = await asyncio.to_thread(Gateway(gw.env, gw.log_path, port=gw.port).start)
        # Hold the view back until the client resumes or for 20 s, four times longer than the
        # client used to wait for it; then let it catch up.
        with contextlib.suppress(AssertionError):
            await eventually(lambda: readies() >= 2, within=20, what="a resumed stream")
        link.flowing.set()

        summary = await asyncio.wait_for(ingest, 180)
        assert summary.ok, summary.runs
        assert summary.reconnects >= 1, summary.runs
        stored = restarted.get(
            f"/api/v1/meetings/{meeting}/transcript", keypair.token(), format="json"
        ).json()["segments"]
        assert [s["segment_no"] for s in stored] == list(range(1, len(stored) + 1))
        said = " ".join(s["text"] for s in stored)
        reference = " ".join(sentences)
        assert word_error_rate(reference, said) <= 0.34, said
        # No stretch was sent (and stored) twice: the resumed stream starts where the drained
        # stream's last final ends, not where the last final the client had seen ends. (Words
        # cannot tell: the drain cuts a word, and its two halves may be heard as three words.)
        first = summary.runs[0]
        resumed = next(run for run in summary.runs[1:] if run.stream_id is not None)
        drained_end_ms = last_final_end_ms(seen, first.stream_id)
        assert drained_end_ms > 0, "the meeting's messages held no final of the drained stream"
        covered = min(drained_end_ms * rate // 1000 * 2 * channels, first.bytes_sent)
        assert resumed.offset >= first.offset + covered, (resumed, first, drained_end_ms)
    finally:
        if not ingest.done():
            ingest.cancel()
            await asyncio.gather(ingest, return_exceptions=True)
        await link.close()
        if restarted is not None:
            await asyncio.to_thread(restarted.stop)


async def test_a_subscription_refused_until_the_deadline_says_why(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    """The meeting is full (4429): the client gives up naming the close, not a bare timeout."""
    gw = start_gateway(MAX_WS_CLIENTS_PER_MEETING="1")
    occupant = await watch(gw.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    try:
        pcm, rate, channels = load_wav_pcm(fixture("two_sentences_16k_mono.wav")[0])
        with pytest.raises(TimeoutError, match="last closed 4429: meeting subscriber limit"):
            await stream_pcm_reconnecting(
                ingest_url(gw.http, meeting),
                subscribe_url(gw.http, meeting),
                keypair.token(roles=["ingest", "viewer"]),
                pcm,
                sample_rate=rate,
                channels=channels,
                backoff=FAST,
                ready_timeout_s=5,
            )
    finally:
        await occupant.close()


def test_after_4429_the_client_comes_back_later_not_at_once() -> None:
    # "A limit: come back later", as the viewer page reads it (5 s base); a lost connection
    # is tried again within the client's own base.
    assert all(2.5 <= FAST.delay(0, 4429) <= 5.0 for _ in range(50))
    assert all(FAST.delay(0, 1006) <= 0.2 for _ in range(50))
    assert FAST.delay(10, 4429) <= 5.0
