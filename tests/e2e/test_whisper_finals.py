"""Whisper finals through the whole gateway: a real human recording and 30 s of silence and
noise go from the ingest socket through the local engine (bundled tiny.en, the default) to a
subscriber's socket."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.client.ingest import stream_pcm
from gateway.client.urls import ingest_url
from ingest.engines.local.whisper import spoken_words
from tests.e2e.harness import Gateway, KeyPair, word_error_rate
from tests.e2e.speech import fixture, stream_fixture, watch
from tests.synth import TWO_SENTENCES, assert_second_sentence_kept, espeak_pcm

LIBRIVOX = "librivox_austen_16k_mono.wav"
MAX_WER = 0.12  # tiny.en: 6 errors in 71 words (0.085); pocketsphinx alone gets 0.28


def _ended(watcher) -> bool:
    return any(m["event"] == "stream.ended" for m in watcher.of_type("status"))


def _words(text: str) -> str:
    return " ".join(spoken_words(text))


async def test_real_read_speech_reaches_a_subscriber_as_whisper_finals(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    _, sentences = fixture(LIBRIVOX)
    viewer = await watch(gateway.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    summary = await stream_fixture(
        gateway, keypair.token(roles=["ingest"]), meeting, LIBRIVOX, speed=3
    )
    assert summary.close_code == 1000, summary.errors
    assert summary.ready["engine"] == "local"
    await viewer.wait_for(_ended, timeout=120)
    await viewer.close()

    finals = viewer.finals()
    assert [f["segment_no"] for f in finals] == list(range(1, len(sentences) + 1)), finals
    said = " ".join(_words(f["text"]) for f in finals)
    assert word_error_rate(" ".join(sentences), said) <= MAX_WER, said
    assert {p["segment_no"] for p in viewer.partials()} == {f["segment_no"] for f in finals}


async def test_two_sentences_without_a_pause_reach_a_subscriber_as_one_whole_final(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    # The stored and delivered final held only "Good morning everyone." (issue 19).
    viewer = await watch(gateway.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    summary = await stream_pcm(
        ingest_url(gateway.http, meeting),
        keypair.token(roles=["ingest"]),
        espeak_pcm(TWO_SENTENCES),
        sample_rate=16000,
        channels=1,
        speed=2,
        close_timeout_s=120,
    )
    assert summary.close_code == 1000, summary.errors
    await viewer.wait_for(_ended, timeout=120)
    await viewer.close()
    finals = viewer.finals()
    assert len(finals) == 1, finals
    said = _words(finals[0]["text"]).split()
    assert said[:3] == ["good", "morning", "everyone"], said
    assert_second_sentence_kept(said[3:])
    stored = gateway.get(
        f"/api/v1/meetings/{meeting}/transcript", keypair.token(), format="json"
    ).json()["segments"]
    assert [s["text"] for s in stored] == [finals[0]["text"]]


async def test_silence_and_noise_produce_no_final(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    rng = np.random.default_rng(3)
    rate, part = 16000, 16000 * 6
    hum = np.cumsum(rng.normal(0, 30, part))
    hum -= np.convolve(hum, np.ones(800) / 800, mode="same")
    clicks = rng.normal(0, 30, part)
    for start in range(0, part - 320, rate // 6):
        clicks[start : start + 320] += rng.normal(0, 8000, 320) * np.hanning(320)
    noise = np.concatenate(
        [np.zeros(part), rng.normal(0, 2, part), rng.normal(0, 1000, part), hum, clicks]
    )
    pcm = np.clip(np.round(noise), -32768, 32767).astype("<i2").tobytes()  # 30 s

    viewer = await watch(gateway.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    summary = await stream_pcm(
        ingest_url(gateway.http, meeting),
        keypair.token(roles=["ingest"]),
        pcm,
        sample_rate=rate,
        channels=1,
        speed=6,
        close_timeout_s=120,
    )
    assert summary.close_code == 1000, summary.errors
    await viewer.wait_for(_ended, timeout=120)
    await viewer.close()
    assert viewer.finals() == [] and viewer.partials() == []


async def test_local_finals_model_pocketsphinx_keeps_the_one_pass_engine(
    start_gateway, keypair: KeyPair, meeting: str
) -> None:
    gw = start_gateway(LOCAL_FINALS_MODEL="pocketsphinx", LOCAL_ENGINE_WORKERS="1")
    viewer = await watch(gw.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    summary = await stream_fixture(
        gw, keypair.token(roles=["ingest"]), meeting, "two_sentences_16k_mono.wav", speed=6
    )
    assert summary.close_code == 1000, summary.errors
    await viewer.wait_for(_ended)
    await viewer.close()
    texts = [f["text"] for f in viewer.finals()]
    assert len(texts) == 2
    assert all(text == text.lower() and "." not in text for text in texts)  # pocketsphinx's


def test_a_local_finals_model_that_is_no_model_stops_the_gateway_with_a_reason(
    start_gateway, tmp_path
) -> None:
    with pytest.raises(RuntimeError, match=r"LOCAL_FINALS_MODEL: no model\.bin in the directory"):
        start_gateway(LOCAL_FINALS_MODEL=str(tmp_path))
