"""Recordings through a real gateway process on the vendors' batch APIs (their fakes, driven by
the official SDKs): real human speech uploaded as MP3 lands in the meeting with speakers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import Gateway, KeyPair, word_error_rate
from tests.e2e.test_observability import scrape
from tests.e2e.test_recordings import DEADLINE_S, upload, wait_job
from tests.engines.batch_script import TimedScript
from tests.engines.fake_deepgram_batch import FakeDeepgramBatch
from tests.engines.fake_google_batch import FakeGoogleBatch
from tests.files.media import SPEECH, encode, speech, speech_text
from tests.files.vendor_fakes import API_KEY

pytestmark = pytest.mark.timeout(DEADLINE_S)


def _land(
    gw: Gateway, keypair: KeyPair, meeting: str, tmp_path: Path, **options: str
) -> tuple[dict, list[dict]]:
    path = encode(speech(), tmp_path / "meeting.mp3", "mp3")
    token = keypair.token(roles=["ingest"])
    answer = upload(gw, token, meeting, path, language="en", **options)
    assert answer.status_code == 202, answer.text
    viewer = keypair.token(roles=["viewer"])
    job = wait_job(
        gw, viewer, answer.json()["id"], lambda j: j["status"] not in ("queued", "running")
    )
    transcript = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()
    return job, transcript["segments"] if isinstance(transcript, dict) else transcript


def _check_diarized(job: dict, segments: list[dict], engine: str) -> None:
    assert job["status"] == "succeeded", job
    assert set(job["engines"]) == {engine}
    assert [s["segment_no"] for s in segments] == list(range(1, len(segments) + 1))
    assert {s["source"] for s in segments} == {"recording"}
    # The script gives sentences to two speakers in turn: both come through, as labels.
    speakers = [s["speaker"] for s in segments]
    assert None not in speakers and len(set(speakers)) == 2, speakers
    text = " ".join(s["text"] for s in segments)
    assert word_error_rate(speech_text(), text) < 0.1, text


def _on_deepgram(
    start_gateway: Callable[..., Gateway], fake: FakeDeepgramBatch, tmp_path: Path, **env: str
) -> Gateway:
    return start_gateway(
        ASR_ENGINE="deepgram",
        DEEPGRAM_URL=fake.url.replace("http://", "ws://"),
        DEEPGRAM_API_KEY=API_KEY,
        RECORDINGS_DIR=str(tmp_path / "recordings"),
        **env,
    )


# A mono file with split_channels is transcribed as without it: whole, diarized.
@pytest.mark.parametrize("options", [{}, {"split_channels": "true"}])
async def test_deepgram_prerecorded_through_the_gateway(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    tmp_path: Path,
    options: dict[str, str],
) -> None:
    fake = await FakeDeepgramBatch(
        api_key=API_KEY, script=TimedScript.from_fixture(SPEECH.name)
    ).start()
    try:
        gw = _on_deepgram(start_gateway, fake, tmp_path)
        # The fake serves in this event loop: the blocking HTTP client runs in a thread.
        job, segments = await asyncio.to_thread(_land, gw, keypair, meeting, tmp_path, **options)
        _check_diarized(job, segments, "deepgram")
        (request,) = fake.requests  # the original file, once (not decoded chunks)
        assert request.body_bytes == (tmp_path / "meeting.mp3").stat().st_size
        assert request.query["diarize"] == ["true"]
        assert API_KEY not in gw.logs()
    finally:
        await fake.stop()


async def test_google_long_running_through_the_gateway(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    fake = await FakeGoogleBatch(script=TimedScript.from_fixture(SPEECH.name)).start()
    try:
        gw = start_gateway(
            ASR_ENGINE="GCP",  # the alias, as an operator may spell it: the engine is google
            GCP_SPEECH_ENDPOINT=fake.endpoint,
            GCP_SPEECH_INSECURE="true",
            GCP_RECORDINGS_MODEL="phone_call",  # latest_* models cannot diarize
            RECORDINGS_DIR=str(tmp_path / "recordings"),
        )
        # The fake serves in this event loop: the blocking HTTP client runs in a thread.
        job, segments = await asyncio.to_thread(_land, gw, keypair, meeting, tmp_path, engine="gcp")
        _check_diarized(job, segments, "google")
        assert fake.operations and all(op.progress == 100 for op in fake.operations)
    finally:
        await fake.stop()


async def test_a_vendor_outage_is_waited_out_not_a_failed_job(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    """Deepgram answers 503 to six requests in a row: past the retries, the breaker opens; the
    chunk waits a cool-down at a time and the job succeeds once the vendor is back."""
    fake = await FakeDeepgramBatch(
        api_key=API_KEY, script=TimedScript.from_fixture(SPEECH.name), fail_with=[503] * 6
    ).start()
    try:
        gw = _on_deepgram(
            start_gateway,
            fake,
            tmp_path,
            RECORDING_VENDOR_ATTEMPTS="1",
            ENGINE_RETRY_ATTEMPTS="2",
            ENGINE_BREAKER_FAILURES="2",
            ENGINE_BREAKER_COOLDOWN_S="1",
        )
        job, segments = await asyncio.to_thread(_land, gw, keypair, meeting, tmp_path)
        _check_diarized(job, segments, "deepgram")
        assert [r.status for r in fake.requests] == [503] * 6 + [200]
        assert "waits for an engine" in gw.logs()
    finally:
        await fake.stop()


async def test_a_vendor_request_tried_again_is_counted(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    """Retries within a vendor's request were seen in the logs only: an operator could not tell
    a vendor that answers every other request 503 from a healthy one."""
    fake = await FakeDeepgramBatch(
        api_key=API_KEY, script=TimedScript.from_fixture(SPEECH.name), fail_with=[503, 429]
    ).start()
    try:
        gw = _on_deepgram(start_gateway, fake, tmp_path, RECORDING_VENDOR_ATTEMPTS="3")
        job, segments = await asyncio.to_thread(_land, gw, keypair, meeting, tmp_path)
        _check_diarized(job, segments, "deepgram")
        assert [r.status for r in fake.requests] == [503, 429, 200]
        retries = {
            dict(labels)["reason"]: value
            for (name, labels), value in scrape(gw).items()
            if name == "meeting_gateway_recording_vendor_retries_total"
            and ("engine", "deepgram") in labels
        }
        assert sum(retries.values()) == 2 and len(retries) == 2, retries
    finally:
        await fake.stop()


async def test_a_whole_file_deepgram_refuses_goes_in_chunks(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    """Deepgram refuses the original file (400): the job goes on in decoded WAV chunks."""
    fake = await FakeDeepgramBatch(
        api_key=API_KEY, script=TimedScript.from_fixture(SPEECH.name), fail_with=[400]
    ).start()
    try:
        gw = _on_deepgram(start_gateway, fake, tmp_path)
        job, segments = await asyncio.to_thread(_land, gw, keypair, meeting, tmp_path)
        _check_diarized(job, segments, "deepgram")
        whole, chunk = fake.requests
        assert (whole.status, whole.body_bytes) == (400, (tmp_path / "meeting.mp3").stat().st_size)
        assert chunk.status == 200 and chunk.body_head == b"RIFF"
    finally:
        await fake.stop()


async def test_a_whole_file_heard_past_the_length_limit_keeps_only_what_lies_within(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str, tmp_path: Path
) -> None:
    """The file went whole (no decoding here to stop at RECORDING_MAX_SECONDS), and Deepgram
    heard speech far past what its header said: the job fails `too_long`, keeping the finals
    within the limit, as a chunked job would."""
    import numpy as np

    fake = await FakeDeepgramBatch(
        api_key=API_KEY, script=["The first sentence.", "The second sentence."]
    ).start()
    try:
        query = {"utterances": ["true"], "diarize": ["true"], "punctuate": ["true"]}
        body = fake.transcript(query, np.zeros(16000 * 10, np.float32), 16000, b"", "r1")
        late = body["results"]["utterances"][-1]
        for item in (late, *late["words"]):
            item["start"], item["end"] = item["start"] + 600, item["end"] + 600
        fake.answer_json = [body]
        gw = _on_deepgram(start_gateway, fake, tmp_path, RECORDING_MAX_SECONDS="60")
        quiet = encode(np.zeros(16000 * 10, np.float32), tmp_path / "quiet.wav", "wav")
        answer = upload(gw, keypair.token(roles=["ingest"]), meeting, quiet, language="en")
        assert answer.status_code == 202, answer.text
        viewer = keypair.token(roles=["viewer"])
        job = await asyncio.to_thread(
            wait_job, gw, viewer, answer.json()["id"], lambda j: j["status"] == "failed"
        )
        assert "RECORDING_MAX_SECONDS" in job["error"], job
        transcript = gw.get(f"/api/v1/meetings/{meeting}/transcript", viewer).json()
        assert [s["text"].rstrip(".") for s in transcript["segments"]] == ["The first sentence"]
    finally:
        await fake.stop()
