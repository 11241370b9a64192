"""`language: auto` on the default English-only model, through a real gateway: `ready` says the
stream is transcribed as English (not detected), and speech that does not sound English gets a
`status` event `language.unsupported` (speech made with espeak-ng in the test)."""

from __future__ import annotations

import io
import subprocess
import wave

import numpy as np
import soxr

from gateway.client.ingest import stream_pcm
from gateway.client.urls import ingest_url
from tests.e2e.harness import Gateway, KeyPair
from tests.e2e.speech import FIXTURES, watch

RATE = 16000
GERMAN = [
    "Guten Morgen zusammen, die Haushaltsbesprechung wird auf Donnerstag verschoben.",
    "Bitte schicken Sie mir den Bericht vor dem Ende der Woche.",
    "Wir treffen uns morgen früh im großen Saal neben der Bibliothek.",
]


def espeak(text: str, voice: str) -> bytes:
    """16 kHz mono PCM of `text` spoken by espeak-ng, then a second of silence."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "150", "--stdout", text],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    with wave.open(io.BytesIO(wav)) as f:
        rate, pcm = f.getframerate(), f.readframes(f.getnframes())
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    speech = soxr.resample(samples, rate, RATE).astype("<i2").tobytes()
    return speech + bytes(2 * RATE)


def _ended(watcher) -> bool:
    return any(m["event"] == "stream.ended" for m in watcher.of_type("status"))


async def _stream(gw: Gateway, keypair: KeyPair, meeting: str, pcm: bytes):
    viewer = await watch(gw.subscribe_url(meeting, keypair.token(roles=["viewer"])))
    summary = await stream_pcm(
        ingest_url(gw.http, meeting),
        keypair.token(roles=["ingest"]),
        pcm,
        sample_rate=RATE,
        channels=1,
        language="auto",
        speed=3,
        close_timeout_s=120,
    )
    assert summary.close_code == 1000, summary.errors
    await viewer.wait_for(_ended, timeout=120)
    await viewer.close()
    return summary, viewer


async def test_auto_on_an_english_only_model_says_so_and_flags_other_speech(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    pcm = b"".join(espeak(text, "de") for text in GERMAN)
    summary, viewer = await _stream(gateway, keypair, meeting, pcm)
    assert summary.ready["language"] == "en" and summary.ready["detected"] is False
    flagged = [m for m in viewer.of_type("status") if m["event"] == "language.unsupported"]
    assert len(flagged) == 1, viewer.of_type("status")
    assert flagged[0]["reason"] == "not_english" and flagged[0]["engine"] == "local"
    assert flagged[0]["stream_id"] == summary.ready["stream_id"]


async def test_english_speech_on_auto_is_not_flagged(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    with wave.open(str(FIXTURES / "librivox_austen_16k_mono.wav")) as f:
        pcm = f.readframes(f.getnframes())
    summary, viewer = await _stream(gateway, keypair, meeting, pcm)
    assert summary.ready["language"] == "en" and summary.ready["detected"] is False
    assert viewer.finals()
    assert not [m for m in viewer.of_type("status") if m["event"] == "language.unsupported"]
