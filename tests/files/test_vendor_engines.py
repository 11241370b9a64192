"""build_file_engine: the vendors' file engines from plain configuration values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ingest.files.base import AudioChunk, FileOptions
from ingest.files.deepgram import DeepgramFileEngine
from ingest.files.google import GoogleFileEngine
from ingest.files.vendors import FileEngineConfigError, VendorFileConfig, build_file_engine
from tests.engines.fake_deepgram_batch import FakeDeepgramBatch
from tests.engines.fake_google_batch import FakeGoogleBatch
from tests.files.vendor_fakes import API_KEY, tone_samples, write_wav


async def test_deepgram_from_config_reaches_its_endpoint(tmp_path: Path) -> None:
    fake = await FakeDeepgramBatch(api_key=API_KEY).start()
    try:
        config = VendorFileConfig(
            deepgram_api_key=API_KEY, deepgram_url=fake.url.replace("http://", "ws://"),
            deepgram_model="nova-2", deepgram_keyterms=("Acme", "Zed"), attempts=2,
        )  # fmt: skip
        engine = build_file_engine("Deepgram", config)
        assert isinstance(engine, DeepgramFileEngine)
        assert engine.options.retry.attempts == 2
        path = write_wav(tmp_path / "a.wav", tone_samples([11, 12]))
        segments = await engine.transcribe_file(path, FileOptions("en"))
        await engine.aclose()
    finally:
        await fake.stop()
    assert [s.text for s in segments] == ["W11 w12."]
    assert fake.requests[0].query["model"] == ["nova-2"]
    assert fake.requests[0].query["keyterm"] == ["Acme", "Zed"]


async def test_google_from_config_under_its_alias() -> None:
    fake = await FakeGoogleBatch().start()
    try:
        config = VendorFileConfig(gcp_model="phone_call", gcp_endpoint=fake.endpoint,
                                  gcp_insecure=True)  # fmt: skip
        engine = build_file_engine("gcp", config)
        assert isinstance(engine, GoogleFileEngine) and engine.can_diarize
        engine.options = dataclasses.replace(engine.options, poll_initial_s=0.02)  # a quick test
        chunk = AudioChunk(0, 0, tone_samples([11, 112]))
        segments = await engine.transcribe_chunk(chunk, FileOptions("en"))
        await engine.aclose()
    finally:
        await fake.stop()
    assert [(s.text, s.speaker) for s in segments] == [("w11", "S0"), ("w12", "S1")]
    assert fake.operations[0].request.config.model == "phone_call"


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("deepgram", VendorFileConfig(), "DEEPGRAM_API_KEY"),
        ("google", VendorFileConfig(gcp_insecure=True), "GCP_SPEECH_ENDPOINT"),
        ("google", VendorFileConfig(gcp_bucket="gs://b/some/prefix"), "GCP_RECORDINGS_BUCKET"),
        ("whisperx", VendorFileConfig(), "no vendor file engine"),
    ],
)
def test_bad_configuration_says_what_is_wrong(
    name: str, config: VendorFileConfig, message: str
) -> None:
    with pytest.raises(FileEngineConfigError, match=message):
        build_file_engine(name, config)
