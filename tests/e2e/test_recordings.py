"""Recordings through a real gateway process: upload -> durable job -> progress over SSE ->
finals in the meeting -> SRT export; the upload's refusals; tenant isolation; cancel."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.harness import Gateway, KeyPair, word_error_rate
from tests.files.media import (
    OVERLAP_RIGHT,
    encode,
    matroska_duration,
    overlapping_stereo,
    speech,
    speech_text,
)
from tests.openapi_check import assert_answer_matches
from tests.util import eventually, wait_until

DEADLINE_S = 600.0  # a loaded 2-core machine transcribing 30 s of speech with tiny.en


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(
    gw: Gateway,
    token: str,
    meeting: str,
    path: Path,
    *,
    raw_type: str | None = None,
    headers: dict[str, str] | None = None,
    **params: str,
) -> httpx.Response:
    url = f"{gw.http}/api/v1/meetings/{meeting}/recordings"
    h = {**_auth(token), **(headers or {})}
    if raw_type is not None:
        return httpx.post(
            url,
            content=path.read_bytes(),
            headers={**h, "Content-Type": raw_type},
            params=params,
            timeout=60,
            verify=gw.verify,
        )
    with path.open("rb") as f:
        return httpx.post(
            url,
            files={"file": (path.name, f)},
            data=params,
            headers=h,
            timeout=60,
            verify=gw.verify,
        )


class HeldUpload:
    """An upload whose body stops after its first KiB until `finish()`: the gateway is past the
    upload's first checks and writing its file meanwhile."""

    def __init__(self, gw: Gateway, token: str, meeting: str, body: bytes, **headers: str) -> None:
        self._release = threading.Event()
        self._answer: httpx.Response | None = None

        def held_body() -> Iterator[bytes]:
            yield body[:1024]
            self._release.wait(DEADLINE_S)
            yield body[1024:]

        def send() -> None:
            self._answer = httpx.post(
                f"{gw.http}/api/v1/meetings/{meeting}/recordings",
                content=held_body(),
                headers={**_auth(token), "Content-Type": "audio/flac", **headers},
                timeout=60,
                verify=gw.verify,
            )

        self._thread = threading.Thread(target=send)
        self._thread.start()

    def finish(self) -> httpx.Response:
        self._release.set()
        self._thread.join()
        assert self._answer is not None
        return self._answer


def sse_events(gw: Gateway, token: str, job_id: str, **headers: str) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs until the `end` event."""
    with httpx.stream(
        "GET",
        f"{gw.http}/api/v1/recordings/{job_id}/events",
        headers={**_auth(token), **headers},
        timeout=httpx.Timeout(DEADLINE_S, connect=10),
        verify=gw.verify,
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        event, data, event_id = None, None, None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):  # docs/protocol.md: f<last final>-p<audio ms>
                assert re.fullmatch(r"f\d+-p\d+", line[4:]), line
                event_id = line[4:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and event is not None:
                assert event_id is not None, f"{event} {data}: every event has an id"
                yield event, data or {}
                if event == "end":
                    return
                event, data, event_id = None, None, None


def wait_job(gw: Gateway, token: str, job_id: str, done: Callable[[dict], bool]) -> dict:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        job = gw.get(f"/api/v1/recordings/{job_id}", token).json()
        if done(job):
            return job
        time.sleep(0.2)
    raise TimeoutError(job)


@pytest.fixture(scope="module")
def speech_samples():
    return speech()


@pytest.fixture
def rec_gateway(start_gateway: Callable[..., Gateway], tmp_path: Path) -> Gateway:
    return start_gateway(RECORDINGS_DIR=str(tmp_path / "recordings"))


@pytest.mark.timeout(DEADLINE_S * 2)
@pytest.mark.parametrize("fmt", ["flac", "mp3", "ogg-opus", "webm-opus", "m4a-aac"])
def test_recording_lands_in_the_meeting(
    rec_gateway: Gateway,
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
    speech_samples,
    fmt: str,
) -> None:
    gw = rec_gateway
    ingest = keypair.token(roles=["ingest"])
    viewer = keypair.token(roles=["viewer"])
    path = encode(speech_samples, tmp_path / f"speech.{fmt}", fmt)
    response = upload(gw, ingest, meeting, path, language="en", label="phone")
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["meeting_id"] == meeting
    assert 29 <= job["audio_seconds_total"] <= 31
    assert job["links"]["events"] == f"/api/v1/recordings/{job['id']}/events"

    progress: list[float] = []
    finals: list[int] = []
    end = None
    events = list(sse_events(gw, viewer, job["id"]))
    # The job's last stage comes after its last final and progress, just before `end`.
    assert events[-2] == ("stage", {"status": "succeeded", "stage": "succeeded"}), events[-4:]
    for event, data in events:
        if event == "progress":
            progress.append(data["progress"])
        elif event == "final":
            finals.append(data["segment_no"])
        elif event == "end":
            end = data
    assert end is not None and end["status"] == "succeeded", end
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert finals and finals == sorted(finals) and len(set(finals)) == len(finals)
    # Resuming skips the finals seen; an id this server could not have sent (a number beyond
    # any segment's) replays from the start rather than failing.
    ahead = f"f{finals[-1] + 1}-p0"  # a number past the job's last final: not one it sent
    for last_id, expected in (
        (f"f{finals[0]}-p0", finals[1:]),
        ("f" + "9" * 20 + "-p0", finals),
        (ahead, finals),
    ):
        resumed = sse_events(gw, viewer, job["id"], **{"Last-Event-ID": last_id})
        assert [data["segment_no"] for event, data in resumed if event == "final"] == expected

    stored = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()
    segments = stored["segments"] if isinstance(stored, dict) else stored
    assert [s["segment_no"] for s in segments] == finals
    assert {s["source"] for s in segments} == {"phone"}
    text = " ".join(s["text"] for s in segments)
    assert word_error_rate(speech_text(), text) < 0.35, text
    srt = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer, format="srt")
    assert srt.status_code == 200 and "-->" in srt.text
    # The uploaded file is gone once the job ended (RECORDING_KEEP_AUDIO unset).
    assert not any((Path(gw.env["RECORDINGS_DIR"])).glob("*.upload"))
    listed = gw.get(f"/api/v1/meetings/{meeting}/recordings", viewer).json()["recordings"]
    assert [j["id"] for j in listed] == [job["id"]]
    # A recording-only meeting names the engine that transcribed it, as a streamed one does.
    assert gw.get(f"/api/v1/meetings/{meeting}", viewer).json()["engines"] == ["local"]


@pytest.mark.timeout(DEADLINE_S * 2)
def test_split_channels_transcribes_each_side_of_a_stereo_recording(
    rec_gateway: Gateway, keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    """Two people, one per side, talking at once: split, both are kept, each side's finals
    with its channel as the speaker (mixed, the right side's sentences are lost)."""
    gw = rec_gateway
    ingest = keypair.token(roles=["ingest"])
    path = overlapping_stereo(tmp_path / "stereo.flac")
    response = upload(gw, ingest, meeting, path, split_channels="true", label="desk")
    assert response.status_code == 202, response.text
    assert response.json()["split_channels"] is True
    job = wait_job(gw, ingest, response.json()["id"], lambda j: j["finished_at"] is not None)
    assert job["status"] == "succeeded", job
    # Each side was transcribed: twice the recording's seconds.
    assert job["engines"] == {"local": pytest.approx(2 * job["audio_seconds_total"], abs=0.1)}
    viewer = keypair.token(roles=["viewer"])
    stored = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()
    segments = stored["segments"] if isinstance(stored, dict) else stored
    assert {s["speaker"] for s in segments} == {"ch1", "ch2"}
    assert {s["source"] for s in segments} == {"desk"}
    sides = {
        speaker: " ".join(s["text"] for s in segments if s["speaker"] == speaker)
        for speaker in ("ch1", "ch2")
    }
    assert word_error_rate(OVERLAP_RIGHT, sides["ch2"]) < 0.35, sides
    assert "dashwood" in sides["ch1"].lower() and "thursday" not in sides["ch1"].lower(), sides
    # Refused: a value that is not a flag, and more channels than are transcribed apart.
    r = upload(gw, ingest, meeting, path, split_channels="left")
    assert r.status_code == 400 and "split_channels" in r.json()["error"]["message"]
    many = tmp_path / "nine.wav"
    with wave.open(str(many), "wb") as nine:
        nine.setnchannels(9)
        nine.setsampwidth(2)
        nine.setframerate(16000)
        nine.writeframes(bytes(9 * 2 * 16000))
    r = upload(gw, ingest, meeting, many, split_channels="yes")
    assert r.status_code == 422 and "9 channels" in r.json()["error"]["message"], r.text
    assert upload(gw, ingest, f"{meeting}-9", many).status_code == 202  # mixed: accepted


def test_upload_refusals(
    rec_gateway: Gateway, keypair: KeyPair, meeting: str, tmp_path: Path, speech_samples
) -> None:
    gw = rec_gateway
    ingest = keypair.token(roles=["ingest"])
    text = tmp_path / "notes.txt"
    text.write_text("this is not audio at all " * 200)
    r = upload(gw, ingest, meeting, text)
    assert r.status_code in (415, 422) and r.json()["error"]["message"]
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    r = upload(gw, ingest, meeting, empty, raw_type="audio/wav")
    assert r.status_code == 422 and "empty" in r.json()["error"]["message"]
    wav = encode(speech_samples[:16000], tmp_path / "a.wav", "wav")
    r = upload(gw, ingest, meeting, wav, raw_type="text/plain")
    assert r.status_code == 415
    r = upload(gw, keypair.token(roles=["viewer"]), meeting, wav, raw_type="audio/wav")
    assert r.status_code == 403
    r = upload(gw, ingest, meeting, wav, language="not a language")
    assert r.status_code == 400
    r = upload(gw, ingest, meeting, wav, label="a\x1b[2Jb")  # every final's source
    assert r.status_code == 400 and "control" in r.json()["error"]["message"]
    r = upload(gw, ingest, meeting, wav, raw_type="audio/wav", label="\u202eevil")  # bidi
    assert r.status_code == 400 and "bidi" in r.json()["error"]["message"]
    r = httpx.post(  # a query value that is not UTF-8 (Starlette would make it U+FFFD)
        f"{gw.http}/api/v1/meetings/{meeting}/recordings?label=%FF",
        content=wav.read_bytes(),
        headers={**_auth(ingest), "Content-Type": "audio/wav"},
        timeout=60,
        verify=gw.verify,
    )
    assert r.status_code == 400 and "label is not UTF-8" in r.text, r.text
    r = upload(gw, ingest, f"{meeting}-l", wav, label="会議\u3000録音 👨\u200d👩\u200d👧 \ufffd")
    assert r.status_code == 202, r.text  # separators and joiners are text, not controls
    assert "ignored_options" not in r.json()
    assert r.json()["diarize"] is False  # unasked, and the local engine cannot
    r = upload(gw, ingest, f"{meeting}-d", wav, diarize="true")
    assert r.status_code == 202 and r.json()["diarize"] is False  # asked: still cannot
    r = upload(gw, ingest, f"{meeting}-n", wav, note="x" * 5000)  # not an option: ignored
    assert r.status_code == 202, r.text
    assert r.json()["ignored_options"] == ["note"]  # and named: a typo does not go unseen
    r = upload(gw, ingest, f"{meeting}-s", wav, raw_type="audio/wav", split_chanels="true")
    assert r.status_code == 202 and r.json()["ignored_options"] == ["split_chanels"], r.text
    assert r.json()["split_channels"] is False
    r = upload(gw, ingest, meeting, wav, label=["one", "two"])  # type: ignore[arg-type]
    assert r.status_code == 400 and "more than once" in r.json()["error"]["message"]
    r = upload(gw, ingest, meeting, wav, language="de")  # as the handshake: served or refused
    assert r.status_code == 400
    assert "no engine here transcribes 'de'" in r.json()["error"]["message"]
    # A multipart body cut before its closing boundary: the file may be a part of one.
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode() + wav.read_bytes()
    r = httpx.post(
        f"{gw.http}/api/v1/meetings/{meeting}/recordings",
        content=body,
        headers={**_auth(ingest), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
        verify=gw.verify,
    )
    assert r.status_code == 400 and "closing boundary" in r.json()["error"]["message"], r.text
    # A preamble and an epilogue (RFC 2046) are ignored, as receivers do.
    r = httpx.post(
        f"{gw.http}/api/v1/meetings/{meeting}-p/recordings",
        content=b"This is a multi-part message in MIME format.\r\n"
        + body
        + f"\r\n--{boundary}--\r\nepilogue\r\n".encode(),
        headers={**_auth(ingest), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
        verify=gw.verify,
    )
    assert r.status_code == 202, r.text
    # No job was created by any of them (nor the meeting: its recordings are 404).
    listed = gw.get(f"/api/v1/meetings/{meeting}/recordings", ingest)
    assert listed.status_code == 404, listed.text
    # Just after the meeting's deletion, an upload is refused (not accepted, then cancelled).
    admin = {"Authorization": f"Bearer {keypair.token(roles=['admin'])}"}
    deleted = httpx.delete(
        f"{gw.http}/api/v1/meetings/{meeting}", headers=admin, timeout=60, verify=gw.verify
    )
    assert deleted.status_code == 204
    r = upload(gw, ingest, meeting, wav, raw_type="audio/wav")
    assert r.status_code == 409 and "deleted" in r.json()["error"]["message"]
    assert 0 < int(r.headers["Retry-After"]) <= 120  # what is left of the refusal
    assert f"used again in {r.headers['Retry-After']} s" in r.json()["error"]["message"]


def test_over_size_is_413(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
    speech_samples,
) -> None:
    gw = start_gateway(
        RECORDINGS_DIR=str(tmp_path / "rec"),
        RECORDING_MAX_BYTES="300000",
        RECORDING_MAX_SECONDS="5",
    )
    ingest = keypair.token(roles=["ingest"])
    big = encode(speech_samples, tmp_path / "big.wav", "wav")  # ~950 kB
    r = upload(gw, ingest, meeting, big, raw_type="audio/wav")
    assert r.status_code == 413
    r = upload(gw, ingest, meeting, big)  # multipart: the cap holds while streaming
    assert r.status_code == 413
    long = encode(speech_samples, tmp_path / "long.mp3", "mp3")  # small, but 30 s > 5 s
    assert long.stat().st_size < 300000
    r = upload(gw, ingest, meeting, long, raw_type="audio/mpeg")
    message = r.json()["error"]["message"]
    assert r.status_code == 413 and "more than 5 s (RECORDING_MAX_SECONDS)" in message
    assert re.search(r"lasts \d+\.\d s", message), message  # not rounded to look within
    assert not any((tmp_path / "rec").glob("*.upload"))


def test_idempotency_key_tenant_isolation_and_cancel(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
    speech_samples,
) -> None:
    # No runner here: the job stays queued, so cancelling it is deterministic.
    gw = start_gateway(RECORDINGS_DIR=str(tmp_path / "rec"), RECORDING_WORKERS="0")
    ingest = keypair.token(roles=["ingest"])
    path = encode(speech_samples, tmp_path / "s.flac", "flac")
    first = upload(gw, ingest, meeting, path, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 202
    again = upload(gw, ingest, meeting, path, headers={"Idempotency-Key": "abc"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert "ignored_options" not in again.json()
    typo = upload(
        gw,
        ingest,
        meeting,
        path,
        raw_type="audio/flac",
        headers={"Idempotency-Key": "abc"},
        lable="x",
    )
    assert typo.status_code == 200 and typo.json()["ignored_options"] == ["lable"], typo.text
    job_id = first.json()["id"]
    # The answers fit the served OpenAPI document, as a generated client reads them.
    spec = gw.get("/api/v1/openapi.json").json()
    uploaded = "/api/v1/meetings/{meeting_id}/recordings"
    assert_answer_matches(spec, "POST", uploaded, first.json(), 202)
    assert_answer_matches(spec, "POST", uploaded, typo.json(), 200)
    listed = gw.get(f"/api/v1/meetings/{meeting}/recordings", ingest).json()
    assert_answer_matches(spec, "GET", uploaded, listed)
    one = gw.get(f"/api/v1/recordings/{job_id}", ingest).json()
    assert_answer_matches(spec, "GET", "/api/v1/recordings/{job_id}", one)
    # Two keys: which one did the client mean? (Taken as one, it found another's job or none.)
    two = httpx.post(
        f"{gw.http}/api/v1/meetings/{meeting}/recordings",
        content=path.read_bytes(),
        headers=[
            ("Authorization", f"Bearer {ingest}"),
            ("Content-Type", "audio/flac"),
            ("Idempotency-Key", "abc"),
            ("Idempotency-Key", "xyz"),
        ],
        timeout=60,
        verify=gw.verify,
    )
    assert two.status_code == 400
    assert "more than one Idempotency-Key" in two.json()["error"]["message"]
    # A control character in it (clients refuse to send one; a raw request can).
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as raw:
        raw.sendall(
            f"POST /api/v1/meetings/{meeting}/recordings HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {ingest}\r\nContent-Type: audio/flac\r\n"
            "Idempotency-Key: a\x01b\r\nContent-Length: 4\r\nConnection: close\r\n\r\nfLaC".encode()
        )
        answer = b"".join(iter(lambda: raw.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 400") and b"none a control" in answer, answer

    other = keypair.token(tenant="other", roles=["ingest", "viewer"])
    for method, suffix in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
        r = httpx.request(
            method,
            f"{gw.http}/api/v1/recordings/{job_id}{suffix}",
            headers=_auth(other),
            verify=gw.verify,
        )
        assert r.status_code == 404, (method, suffix)
    r = gw.get(f"/api/v1/meetings/{meeting}/recordings", other)
    assert r.status_code == 404  # as a meeting the tenant does not have
    # Another tenant's same key is its own job.
    theirs = upload(gw, other, meeting, path, headers={"Idempotency-Key": "abc"})
    assert theirs.status_code == 202 and theirs.json()["id"] != job_id
    assert gw.get(f"/api/v1/recordings/{job_id}").status_code == 401

    uploads = tmp_path / "rec"
    assert len(list(uploads.glob("*.upload"))) == 2  # ours and theirs
    r = httpx.delete(
        f"{gw.http}/api/v1/recordings/{job_id}", headers=_auth(ingest), verify=gw.verify
    )
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # Ended while queued: no runner will remove its file, so the cancel did (theirs stays).
    assert len(list(uploads.glob("*.upload"))) == 1
    # ... nor count it: the cancel did (the metric missed every queued job cancelled).
    assert 'meeting_gateway_recording_jobs_total{state="cancelled"} 1.0' in gw.get("/metrics").text


def test_idempotency_key_raced_by_another_meeting_is_409(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    tmp_path: Path,
    speech_samples,
) -> None:
    """Two uploads with one key for two meetings, both past the key check before either job
    exists: the one that loses the race is 409, never a 200 with the other meeting's job."""
    import uuid

    recordings = tmp_path / "rec"
    gw = start_gateway(RECORDINGS_DIR=str(recordings), RECORDING_WORKERS="0")
    ingest = keypair.token(roles=["ingest"])
    body = encode(speech_samples, tmp_path / "s.flac", "flac").read_bytes()
    first, second = (f"m-{uuid.uuid4().hex[:10]}" for _ in range(2))
    slow = HeldUpload(gw, ingest, first, body, **{"Idempotency-Key": "k1"})
    try:  # its body is being written: it is past the key check
        wait_until(lambda: any(recordings.glob("*.upload")), "the first upload under way")
        fast = httpx.post(
            f"{gw.http}/api/v1/meetings/{second}/recordings",
            content=body,
            headers={**_auth(ingest), "Content-Type": "audio/flac", "Idempotency-Key": "k1"},
            timeout=60,
            verify=gw.verify,
        )
        assert fast.status_code == 202, fast.text
    finally:
        late = slow.finish()
    assert late.status_code == 409, late.text
    assert "another meeting" in late.json()["error"]["message"]
    viewer = keypair.token(roles=["viewer"])
    assert gw.get(f"/api/v1/meetings/{first}/recordings", viewer).json()["recordings"] == []
    wait_until(lambda: len(list(recordings.glob("*.upload"))) == 1, "the loser's file removed")


def test_a_meeting_deleted_while_a_recording_uploads_stays_deleted(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    tmp_path: Path,
    speech_samples,
) -> None:
    """An upload whose body was still coming when its meeting was deleted is 409 when it ends:
    a job then would bring the meeting back after the deletion's sweeps are over."""
    import uuid

    recordings = tmp_path / "rec"
    gw = start_gateway(RECORDINGS_DIR=str(recordings), RECORDING_WORKERS="0")
    ingest = keypair.token(roles=["ingest"])
    body = encode(speech_samples, tmp_path / "s.flac", "flac").read_bytes()
    meeting = f"m-{uuid.uuid4().hex[:10]}"
    slow = HeldUpload(gw, ingest, meeting, body)
    try:
        wait_until(lambda: any(recordings.glob("*.upload")), "the upload under way")
        admin = keypair.token(roles=["admin"])
        deleted = httpx.delete(
            f"{gw.http}/api/v1/meetings/{meeting}", headers=_auth(admin), verify=gw.verify
        )
        assert deleted.status_code == 204, deleted.text
    finally:
        late = slow.finish()
    assert late.status_code == 409, late.text
    assert "deleted while" in late.json()["error"]["message"]
    viewer = keypair.token(roles=["viewer"])
    assert gw.get(f"/api/v1/meetings/{meeting}", viewer).status_code == 404
    wait_until(lambda: not any(recordings.glob("*.upload")), "the refused upload's file removed")


def test_disk_budget_is_507_with_retry_after_before_and_after_the_body(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
    speech_samples,
) -> None:
    """Refused on Content-Length before the body is read, or on the bytes received when the
    body is chunked: both 507 with Retry-After, and the refused body is not kept."""
    recordings = tmp_path / "rec"
    path = encode(speech_samples[: 16000 * 5], tmp_path / "s.wav", "wav")
    size = path.stat().st_size
    gw = start_gateway(
        RECORDINGS_DIR=str(recordings),
        RECORDING_WORKERS="0",
        RECORDING_DISK_BUDGET_BYTES=str(size + size // 2),
        RECORDING_DISK_TENANT_SHARE="1",  # one tenant: the whole budget
    )
    ingest = keypair.token(roles=["ingest"])
    first = upload(gw, ingest, meeting, path, raw_type="audio/wav")
    assert first.status_code == 202
    declared = upload(gw, ingest, meeting, path, raw_type="audio/wav")
    chunked = httpx.post(
        f"{gw.http}/api/v1/meetings/{meeting}/recordings",
        content=iter([path.read_bytes()]),  # no Content-Length: counted as it arrives
        headers={**_auth(ingest), "Content-Type": "audio/wav"},
        timeout=60,
        verify=gw.verify,
    )
    for refused in (declared, chunked):
        assert refused.status_code == 507, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert "disk budget" in refused.json()["error"]["message"]
    assert len(list(recordings.glob("*.upload"))) == 1
    # An upload under way when a job ends gets the room it freed: the budget is read again
    # before refusing, not only at the upload's start.
    held = HeldUpload(gw, ingest, meeting, path.read_bytes(), **{"Content-Type": "audio/wav"})
    wait_until(lambda: len(list(recordings.glob("*.upload"))) == 2, "the upload under way")
    cancel = httpx.delete(
        f"{gw.http}/api/v1/recordings/{first.json()['id']}", headers=_auth(ingest), timeout=60
    )
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    answer = held.finish()
    assert answer.status_code == 202, answer.text


def test_one_tenant_holds_at_most_its_share_of_the_disk_budget(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
    speech_samples,
) -> None:
    """Room for four recordings, a share of half: a tenant's third is refused 507 (naming the
    share) before its body, and another tenant's upload is still taken."""
    recordings = tmp_path / "rec"
    path = encode(speech_samples[: 16000 * 5], tmp_path / "s.wav", "wav")
    gw = start_gateway(
        RECORDINGS_DIR=str(recordings),
        RECORDING_WORKERS="0",
        RECORDING_DISK_BUDGET_BYTES=str(path.stat().st_size * 4),
    )
    hog, other = (keypair.token(tenant=t, roles=["ingest"]) for t in ("hog", "acme"))
    for _ in range(2):
        assert upload(gw, hog, meeting, path, raw_type="audio/wav").status_code == 202
    third = upload(gw, hog, meeting, path, raw_type="audio/wav")
    assert third.status_code == 507 and int(third.headers["Retry-After"]) > 0
    assert "RECORDING_DISK_TENANT_SHARE" in third.json()["error"]["message"]
    assert upload(gw, other, meeting, path, raw_type="audio/wav").status_code == 202
    assert len(list(recordings.glob("*.upload"))) == 3


async def test_uploads_in_progress_count_against_the_disk_budget_and_per_tenant(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
    speech_samples,
) -> None:
    """Two chunked uploads, each within the budget alone, not together: the one still coming
    counts (uploads counted only once their job existed filled the volume together). With
    RECORDING_UPLOADS_PER_TENANT=1 the second is refused 429 before its body."""
    recordings = tmp_path / "rec"
    data = encode(speech_samples[: 16000 * 5], tmp_path / "s.wav", "wav").read_bytes()
    half = len(data) // 2
    budget = len(data) + half // 2  # room for one, not for one and a half
    ingest = keypair.token(roles=["ingest"])
    url_path = f"/api/v1/meetings/{meeting}/recordings"
    headers = {**_auth(ingest), "Content-Type": "audio/wav"}

    async def hold_half_way(gw: Gateway, client: httpx.AsyncClient) -> tuple[Any, Any]:
        go_on = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield data[:half]
            await go_on.wait()
            yield data[half:]

        first = asyncio.create_task(
            client.post(gw.http + url_path, content=body(), headers=headers)
        )
        await eventually(
            lambda: any(p.stat().st_size >= half for p in recordings.glob("*.upload")),
            within=60,
            what="the first upload half received",
        )
        return first, go_on

    gw = start_gateway(
        RECORDINGS_DIR=str(recordings),
        RECORDING_WORKERS="0",
        RECORDING_DISK_BUDGET_BYTES=str(budget),
        RECORDING_DISK_TENANT_SHARE="1",  # one tenant: the whole budget
    )
    async with httpx.AsyncClient(timeout=60, verify=gw.verify) as client:
        first, go_on = await hold_half_way(gw, client)

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield data

        second = await client.post(gw.http + url_path, content=chunked(), headers=headers)
        assert second.status_code == 507, second.text
        assert "disk budget" in second.json()["error"]["message"]
        go_on.set()
        assert (await first).status_code == 202
    gw.stop()

    recordings = tmp_path / "rec2"
    gw = start_gateway(
        RECORDINGS_DIR=str(recordings), RECORDING_WORKERS="0", RECORDING_UPLOADS_PER_TENANT="1"
    )
    async with httpx.AsyncClient(timeout=60, verify=gw.verify) as client:
        first, go_on = await hold_half_way(gw, client)
        second = await client.post(gw.http + url_path, content=data, headers=headers)
        assert second.status_code == 429, second.text
        assert int(second.headers["Retry-After"]) > 0
        # What a request says of itself is answered as such, places taken or not (a bad option
        # or a too-large body was 429 while another upload held the place).
        bad = await client.post(
            gw.http + url_path, content=data, headers=headers, params={"diarize": "maybe"}
        )
        assert bad.status_code == 400, bad.text
        go_on.set()
        assert (await first).status_code == 202
        third = await client.post(gw.http + url_path, content=data, headers=headers)
        assert third.status_code == 202, third.text  # the first one's place is free again


@pytest.mark.timeout(DEADLINE_S * 2)
def test_killed_replica_resumes_on_another_without_losing_or_repeating(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
    speech_samples,
    pg_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """PostgreSQL + Redis, two replicas sharing RECORDINGS_DIR: replica A is SIGKILLed after
    its first checkpoint; B claims the job once A's lease lapses and finishes it from there."""
    import signal

    import numpy as np

    from tests.e2e.test_scale_out import db_upgrade

    assert db_upgrade(pg_url).returncode == 0
    env = {
        "RECORDINGS_DIR": str(tmp_path / "shared"),
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "RECORDING_LEASE_S": "3",
        "RECORDING_POLL_S": "0.5",
    }
    a = start_gateway(pg_url, **env)
    ingest = keypair.token(roles=["ingest"])
    viewer = keypair.token(roles=["viewer"])
    long = np.concatenate([speech_samples] * 4)  # 2 minutes: 6 or more chunks
    path = encode(long, tmp_path / "long.mp3", "mp3")
    job = upload(a, ingest, meeting, path, language="en").json()
    first = wait_job(
        a,
        viewer,
        job["id"],
        lambda j: j["audio_seconds_done"] > 0 or j["status"] not in ("queued", "running"),
    )
    assert first["status"] == "running", first
    a.stop(signal.SIGKILL)
    checkpoint_ms = _audio_ms_done(pg_url, job["id"])  # A is dead: this is where B must resume
    b = start_gateway(pg_url, **env)
    done = wait_job(b, viewer, job["id"], lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2 and done["progress"] == 1.0
    # No chunk transcribed twice: B sent the engine exactly the audio after A's checkpoint.
    transcribed_by_b = _metric(b, 'meeting_gateway_recording_audio_seconds_total{engine="local"}')
    assert transcribed_by_b == pytest.approx(
        done["audio_seconds_total"] - checkpoint_ms / 1000, abs=0.1
    )
    assert sum(done["engines"].values()) == pytest.approx(done["audio_seconds_total"], abs=0.1)
    segments = b.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()
    segments = segments["segments"] if isinstance(segments, dict) else segments
    numbers = [s["segment_no"] for s in segments]
    assert numbers == list(range(1, len(numbers) + 1))  # none missing, none repeated
    starts = [s["start_ms"] for s in segments]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # no audio twice
    assert done["finals"] == len(segments)
    text = " ".join(s["text"] for s in segments)
    assert word_error_rate(" ".join([speech_text()] * 4), text) < 0.35, text


@pytest.mark.timeout(DEADLINE_S * 2)
def test_truncated_silent_and_cancelled_jobs(
    rec_gateway: Gateway, keypair: KeyPair, meeting: str, tmp_path: Path, speech_samples
) -> None:
    import numpy as np

    gw = rec_gateway
    ingest = keypair.token(roles=["ingest"])
    viewer = keypair.token(roles=["viewer"])

    # Truncated mid-way: accepted (its header is intact), fails with the reason, keeps the
    # finals of the audio before the damage.
    whole = encode(np.concatenate([speech_samples] * 2), tmp_path / "two.mp3", "mp3")
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    job = upload(gw, ingest, meeting, cut).json()
    done = wait_job(gw, viewer, job["id"], lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "failed", done
    assert "damaged" in done["error"] or "truncated" in done["error"]
    segments = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()
    segments = segments["segments"] if isinstance(segments, dict) else segments
    assert segments and done["finals"] == len(segments)
    assert max(s["end_ms"] for s in segments) <= 32_000
    kept = len(segments)

    # Silence: succeeds with no finals.
    quiet = encode(np.zeros(16000 * 8, np.float32), tmp_path / "quiet.flac", "flac")
    job = upload(gw, ingest, meeting, quiet).json()
    done = wait_job(gw, viewer, job["id"], lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded" and done["finals"] == 0, done

    # Cancel while running: ends within seconds, finals already stored stay.
    long = encode(np.concatenate([speech_samples] * 4), tmp_path / "long.flac", "flac")
    job = upload(gw, ingest, meeting, long).json()
    wait_job(gw, viewer, job["id"], lambda j: j["audio_seconds_done"] > 0)
    r = httpx.delete(
        f"{gw.http}/api/v1/recordings/{job['id']}", headers=_auth(ingest), verify=gw.verify
    )
    assert r.status_code in (200, 202)
    done = wait_job(gw, viewer, job["id"], lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "cancelled", done
    # Stopped part-way (how fast is a machine's matter: on an idle one, within seconds).
    assert 0 < done["audio_seconds_done"] < done["audio_seconds_total"]
    segments = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()
    segments = segments["segments"] if isinstance(segments, dict) else segments
    assert len(segments) == kept + done["finals"]
    assert not any(Path(gw.env["RECORDINGS_DIR"]).glob("*.upload"))


@pytest.mark.timeout(DEADLINE_S * 2)
def test_a_webm_without_a_length_is_transcribed_and_held_to_the_length_limit(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
    speech_samples,
) -> None:
    """MediaRecorder's WebM has no Duration: accepted (length 0 = unknown), transcribed to its
    real length; RECORDING_MAX_SECONDS, which the upload could not check, holds while decoding."""
    import numpy as np

    gw = start_gateway(RECORDINGS_DIR=str(tmp_path / "rec"), RECORDING_MAX_SECONDS="25")
    ingest = keypair.token(roles=["ingest"])
    viewer = keypair.token(roles=["viewer"])
    short = speech_samples[: 16000 * 10]
    path = matroska_duration(encode(short, tmp_path / "short.webm", "webm-opus"), None)
    r = upload(gw, ingest, meeting, path, raw_type="video/webm")
    assert r.status_code == 202, r.text
    assert r.json()["audio_seconds_total"] == 0 and r.json()["progress"] == 0
    done = wait_job(gw, viewer, r.json()["id"], lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded", done
    assert done["audio_seconds_total"] == pytest.approx(10, abs=0.5), done
    assert done["finals"] > 0

    long = np.concatenate([speech_samples] * 2)  # a minute: past 25 s while decoding
    path = matroska_duration(encode(long, tmp_path / "long.webm", "webm-opus"), None)
    r = upload(gw, ingest, meeting, path, raw_type="video/webm")
    assert r.status_code == 202, r.text
    failed = wait_job(
        gw, viewer, r.json()["id"], lambda j: j["status"] not in ("queued", "running")
    )
    assert failed["status"] == "failed" and "more than 25 s" in failed["error"], failed
    # Nothing past the limit (and its 2 s margin for estimated lengths) reached an engine.
    assert sum(failed["engines"].values()) <= 27, failed
    assert _metric(gw, 'meeting_gateway_recording_failures_total{reason="too_long"}') == 1


def test_cli_upload_wait_status_and_cancel(
    rec_gateway: Gateway, keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    """`meeting-gateway recordings upload FILE --meeting ID --wait` streams the file (chunked,
    no Content-Length), draws the progress bar from the SSE stream and exits 0 when done."""
    import subprocess
    import sys

    from tests.files.media import SPEECH

    gw = rec_gateway
    token = keypair.token(roles=["ingest", "viewer"])
    base = [sys.executable, "-m", "gateway.cli", "recordings"]
    common = ["--url", gw.http, "--token", token]
    done = subprocess.run(
        # A mono file: split_channels changes nothing but is kept on the job.
        [*base, "upload", str(SPEECH), "--meeting", meeting, "--wait", "--split-channels", *common],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "100.0%" in done.stdout and "done:" in done.stdout
    assert done.stdout.count("100.0%") == 1  # the end event repeats the last bar: drawn once
    job_id = done.stdout.split()[1]
    job = gw.get(f"/api/v1/recordings/{job_id}", token).json()
    assert job["split_channels"] is True and job["finals"] > 0
    status = subprocess.run(
        [*base, "status", job_id, *common], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0 and "succeeded" in status.stdout
    other = keypair.token(tenant="other", roles=["ingest", "viewer"])
    refused = subprocess.run(
        [*base, "cancel", job_id, "--url", gw.http, "--token", other],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "no such recording" in refused.stderr


@pytest.mark.timeout(DEADLINE_S * 2)
def test_drain_hands_back_and_max_attempts_stops_a_poison_job(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    tmp_path: Path,
    speech_samples,
) -> None:
    """SIGTERM: the running job goes back to the queue at its checkpoint (not an attempt) and the
    next process finishes it. A job whose runner dies RECORDING_MAX_ATTEMPTS times fails.

    The file's header understates its length (15 s of 2 minutes, as VBR MP3 without a Xing
    header and rewritten WebM do): the checkpoint is where decoding got to, not the header's
    length, so the resumed job neither transcribes audio twice nor reports itself done early."""
    import signal
    import uuid

    import numpy as np

    db = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    env = {"RECORDINGS_DIR": str(tmp_path / "rec"), "RECORDING_LEASE_S": "2"}
    ingest = keypair.token(roles=["ingest"])
    viewer = keypair.token(roles=["viewer"])
    samples = np.concatenate([speech_samples] * 4)
    long = matroska_duration(encode(samples, tmp_path / "long.webm", "webm-opus"), 15.0)
    length_s = len(samples) / 16000

    meeting = f"m-{uuid.uuid4().hex[:10]}"
    a = start_gateway(db, **env)
    job = upload(a, ingest, meeting, long).json()
    assert job["audio_seconds_total"] == 15.0  # what the header says, for now
    first = wait_job(a, viewer, job["id"], lambda j: j["audio_seconds_done"] > 0)
    assert first["progress"] < 1, first
    assert a.stop(signal.SIGTERM) == 0
    b = start_gateway(db, **{**env, "RECORDING_WORKERS": "0"})
    back = b.get(f"/api/v1/recordings/{job['id']}", viewer).json()
    assert back["status"] == "queued" and back["attempts"] == 0, back
    assert back["audio_seconds_done"] > 0  # the checkpoint stayed
    b.stop()
    c = start_gateway(db, **env)
    done = wait_job(c, viewer, job["id"], lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert done["audio_seconds_total"] == pytest.approx(length_s, abs=0.5), done
    assert done["audio_seconds_done"] == done["audio_seconds_total"]
    # Each second of audio went to an engine once, across both runs.
    assert sum(done["engines"].values()) == pytest.approx(length_s, abs=0.5), done
    segments = c.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()["segments"]
    assert [s["segment_no"] for s in segments] == list(range(1, len(segments) + 1))
    starts = [s["start_ms"] for s in segments]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # no audio twice
    c.stop()

    poisoned = f"m-{uuid.uuid4().hex[:10]}"
    d = start_gateway(db, **{**env, "RECORDING_MAX_ATTEMPTS": "1"})
    job = upload(d, ingest, poisoned, long).json()
    wait_job(d, viewer, job["id"], lambda j: j["status"] == "running")
    d.stop(signal.SIGKILL)
    e = start_gateway(db, **{**env, "RECORDING_MAX_ATTEMPTS": "1"})
    failed = wait_job(e, viewer, job["id"], lambda j: j["status"] not in ("queued", "running"))
    assert failed["status"] == "failed" and "or the gateway was killed" in failed["error"], failed
    # The upload goes once the job's end is stored (just after it: a loaded run looked between).
    wait_until(lambda: not any((tmp_path / "rec").glob("*.upload")), "the upload removed")


def test_uploads_orphaned_by_a_dead_replica_are_swept_at_startup(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
    speech_samples,
) -> None:
    """A replica killed mid-upload leaves a file no job names: the next start removes it once
    nothing has written to it for an hour. A queued job's file, an upload still arriving and
    files that are not uploads stay."""
    import os

    recordings = tmp_path / "rec"
    db = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    env = {"RECORDINGS_DIR": str(recordings), "RECORDING_WORKERS": "0"}
    a = start_gateway(db, **env)
    ingest = keypair.token(roles=["ingest"])
    path = encode(speech_samples[: 16000 * 3], tmp_path / "s.wav", "wav")
    assert upload(a, ingest, meeting, path, raw_type="audio/wav").status_code == 202
    a.stop()
    (queued,) = recordings.glob("*.upload")
    dead, arriving, other = (recordings / n for n in ("dead.upload", "new.upload", "keep.txt"))
    for file in (dead, arriving, other):
        file.write_bytes(b"RIFF")
    two_hours_ago = time.time() - 7200
    for file in (queued, dead, other):
        os.utime(file, (two_hours_ago, two_hours_ago))
    start_gateway(db, **env)
    wait_until(lambda: not dead.exists(), "the orphaned upload removed")
    assert queued.exists() and arriving.exists() and other.exists()


def test_queue_limit_is_429_with_retry_after(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
    speech_samples,
) -> None:
    gw = start_gateway(
        RECORDINGS_DIR=str(tmp_path / "rec"), RECORDING_WORKERS="0", RECORDING_QUEUE_MAX="1"
    )
    ingest = keypair.token(roles=["ingest"])
    path = encode(speech_samples[: 16000 * 3], tmp_path / "s.wav", "wav")
    assert upload(gw, ingest, meeting, path, raw_type="audio/wav").status_code == 202
    r = upload(gw, ingest, meeting, path, raw_type="audio/wav")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    other = keypair.token(tenant="other", roles=["ingest"])
    assert upload(gw, other, meeting, path, raw_type="audio/wav").status_code == 202


def _audio_ms_done(pg_url: str, job_id: str) -> int:
    """The job's checkpoint as stored, read from PostgreSQL directly (no replica is running)."""
    import asyncpg

    async def read() -> int:
        conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            value = await conn.fetchval(
                "SELECT audio_ms_done FROM recording_jobs WHERE job_id = $1", job_id
            )
        finally:
            await conn.close()
        return int(value)

    return asyncio.run(read())


def _metric(gw: Gateway, sample: str) -> float:
    """One sample's value from the gateway's `/metrics` (0 when it was never counted)."""
    text = httpx.get(f"{gw.http}/metrics", timeout=30, verify=gw.verify).text
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_bad_query_option_is_refused_before_the_body_is_read(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    # A 100 MB upload announced, none of it sent: the answer must not wait for the body.
    gw = start_gateway(HTTP_BODY_IDLE_TIMEOUT_S="600", RECORDING_WORKERS="0")
    token = keypair.token(roles=["ingest"])
    with socket.create_connection(("127.0.0.1", gw.port), timeout=60) as sock:
        sock.sendall(
            f"POST /api/v1/meetings/{meeting}/recordings?diarize=maybe HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: audio/wav\r\nContent-Length: 100000000\r\n\r\n".encode()
        )
        answer = b""
        while b"}" not in answer and (chunk := sock.recv(65536)):  # head and JSON body
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"diarize must be true or false" in answer


def test_a_drain_answers_uploads_503_and_ends_event_streams_for_a_reconnect(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    gw = start_gateway(RECORDINGS_DIR=str(tmp_path / "rec"), RECORDING_WORKERS="0")
    ingest = keypair.token(roles=["ingest", "viewer"])
    queued = upload(gw, ingest, meeting, encode(speech()[:32000], tmp_path / "a.wav", "wav"))
    assert queued.status_code == 202
    events: list[str] = []
    answer: dict[str, httpx.Response | Exception] = {}
    sending = threading.Event()

    def slow_body() -> Iterator[bytes]:
        while True:  # a client uploading slowly, until the server answers
            sending.set()
            yield b"\0" * 4096
            time.sleep(0.05)

    def upload_slowly() -> None:
        try:  # httpx reads an early answer even if the rest of the body cannot be written
            answer["r"] = httpx.post(
                f"{gw.http}/api/v1/meetings/{meeting}/recordings",
                content=slow_body(),
                headers={**_auth(ingest), "Content-Type": "audio/wav"},
                timeout=DEADLINE_S,
                verify=gw.verify,
            )
        except Exception as exc:  # reported below, not lost with the thread
            answer["r"] = exc

    def watch() -> None:
        with httpx.stream(
            "GET",
            f"{gw.http}/api/v1/recordings/{queued.json()['id']}/events",
            headers=_auth(ingest),
            timeout=DEADLINE_S,
            verify=gw.verify,
        ) as response:
            events.extend(response.iter_lines())  # until the server ends the stream

    threads = [threading.Thread(target=f) for f in (upload_slowly, watch)]
    for thread in threads:
        thread.start()
    assert sending.wait(DEADLINE_S)
    wait_until(lambda: "event: stage" in events, "the event stream's first event")
    uploads = tmp_path / "rec"
    wait_until(lambda: len(list(uploads.glob("*.upload"))) == 2, "the slow upload's file")
    assert gw.stop(signal.SIGTERM) == 0
    for thread in threads:
        thread.join(DEADLINE_S)
    refused = answer["r"]
    assert isinstance(refused, httpx.Response), refused
    assert refused.status_code == 503, refused.text
    assert "upload again" in refused.json()["error"]["message"]
    assert ": server restarting, reconnect" in events
    assert len(list((tmp_path / "rec").glob("*.upload"))) == 1  # the queued job's file only


def test_an_event_stream_ends_with_its_token_and_its_meeting(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    gw = start_gateway(
        RECORDINGS_DIR=str(tmp_path / "rec"), RECORDING_WORKERS="0", JWT_LEEWAY_S="0"
    )
    ingest = keypair.token(roles=["ingest"])
    path = encode(speech()[:32000], tmp_path / "a.wav", "wav")
    job = upload(gw, ingest, meeting, path).json()
    short = keypair.token(roles=["viewer"], ttl=10)
    seen = list(sse_events(gw, short, job["id"]))
    assert seen[-1] == ("error", {"message": "token expired"}), seen
    # The job goes with its meeting: the stream says so and ends.
    viewer = keypair.token(roles=["viewer"])
    ended: list[tuple[str, dict]] = []
    watcher = threading.Thread(target=lambda: ended.extend(sse_events(gw, viewer, job["id"])))
    watcher.start()
    wait_until(lambda: ended, "the event stream's first event")
    assert httpx.delete(
        f"{gw.http}/api/v1/meetings/{meeting}",
        headers=_auth(keypair.token(roles=["admin"])),
        verify=gw.verify,
    ).is_success
    watcher.join(DEADLINE_S)
    assert ended[-1] == ("end", {"id": job["id"], "status": "deleted"}), ended


def test_a_recording_takes_no_number_a_live_final_already_carries(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
    speech_samples,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """Live finals are numbered before they are stored (during a database outage they wait in
    the outbox, numbered): a recording of the same meeting numbers its finals above them, or
    the live ones would be renumbered after viewers saw them."""
    import redis

    gw = start_gateway(
        RECORDINGS_DIR=str(tmp_path / "recordings"),
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=redis_prefix,
    )
    # The meeting's live counter as five live finals still on their way to the store leave it.
    with redis.Redis.from_url(redis_url) as client:
        client.set(f"{redis_prefix}segno:acme:{meeting}", 5)
    path = encode(speech_samples, tmp_path / "speech.flac", "flac")
    job = upload(gw, keypair.token(roles=["ingest"]), meeting, path, language="en").json()
    viewer = keypair.token(roles=["viewer"])
    done = wait_job(gw, viewer, job["id"], lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded" and done["finals"] > 0, done
    segments = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()["segments"]
    assert [s["segment_no"] for s in segments] == list(range(6, 6 + done["finals"]))


def test_a_running_job_deleted_with_its_meeting_stops_without_a_warning(
    rec_gateway: Gateway, keypair: KeyPair, meeting: str, tmp_path: Path, speech_samples
) -> None:
    """The deletion is what the operator asked for: the job stops within a watch round and says
    so at INFO ("lost its lease", a warning, made it look like a replica fault)."""
    gw = rec_gateway
    long = np.concatenate([speech_samples] * 4)  # 2 minutes: still running at the DELETE
    path = encode(long, tmp_path / "speech.wav", "wav")
    job = upload(gw, keypair.token(roles=["ingest"]), meeting, path).json()
    viewer = keypair.token(roles=["viewer"])
    wait_job(gw, viewer, job["id"], lambda j: j["status"] == "running")
    assert httpx.delete(
        f"{gw.http}/api/v1/meetings/{meeting}",
        headers=_auth(keypair.token(roles=["admin"])),
        verify=gw.verify,
    ).is_success
    wait_until(lambda: "its meeting was deleted" in gw.logs(), "the job's end logged")
    assert "lost its lease" not in gw.logs()
