#!/usr/bin/env python3
"""Generate the spoken test fixtures in tests/fixtures/ with flite (`make sysdeps` installs it).

Each fixture holds the same two sentences separated by a pause long enough to end an utterance,
so an engine should produce one final per sentence. Variants cover the rates and channel counts
clients send. `fixtures.json` lists every file with its sentences and where each is spoken.

Usage: .venv/bin/python scripts/make_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if (_ROOT / "gateway").is_dir() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))  # use this checkout's package, installed or not

from gateway.client.bootstrap import require_installed  # noqa: E402

# Outside the virtualenv, say how to run this script rather than fail on an import.
require_installed("make_fixtures.py", ("numpy", "soxr"))

import numpy as np  # noqa: E402
import soxr  # noqa: E402

VOICE = "slt"
SENTENCES = (
    "thank you everyone for joining the meeting today",
    "please call me back this afternoon",
)
FLITE_RATE = 16000
LEAD_MS, GAP_MS, TAIL_MS = 300, 1000, 600
PAD_MS = 50  # kept around each sentence after trimming flite's own silence
NOISE_RMS = 8.0  # a faint noise floor: real captures are never digital silence
SEED = 20240611  # fixed, so regenerating gives identical files

VARIANTS = (  # (file name, sample rate, channels)
    ("two_sentences_16k_mono.wav", 16000, 1),
    ("two_sentences_48k_mono.wav", 48000, 1),
    ("two_sentences_48k_stereo.wav", 48000, 2),
)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def speak(text: str, workdir: Path) -> np.ndarray:
    """Synthesize `text` with flite; int16 samples at 16 kHz, own leading/trailing silence cut."""
    path = workdir / "say.wav"
    subprocess.run(["flite", "-voice", VOICE, "-t", text, "-o", str(path)], check=True)
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (FLITE_RATE, 1, 2):
            raise SystemExit(f"unexpected flite output format in {path}")
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    pad = FLITE_RATE * PAD_MS // 1000
    start, end = max(0, loud[0] - pad), min(len(samples), loud[-1] + pad)
    return samples[start:end]


def silence(ms: int) -> np.ndarray:
    return np.zeros(FLITE_RATE * ms // 1000, dtype=np.int16)


def compose(parts: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Lay out lead, sentence, gap, sentence, ..., tail; returns audio and each sentence's span."""
    pieces = [silence(LEAD_MS)]
    spans: list[tuple[int, int]] = []
    cursor = len(pieces[0])
    for i, part in enumerate(parts):
        if i:
            pieces.append(silence(GAP_MS))
            cursor += len(pieces[-1])
        spans.append((cursor * 1000 // FLITE_RATE, (cursor + len(part)) * 1000 // FLITE_RATE))
        pieces.append(part)
        cursor += len(part)
    pieces.append(silence(TAIL_MS))
    audio = np.concatenate(pieces).astype(np.float64)
    audio += np.random.default_rng(SEED).normal(0.0, NOISE_RMS, len(audio))
    return audio, spans


def render(audio: np.ndarray, rate: int, channels: int) -> bytes:
    if rate != FLITE_RATE:
        audio = soxr.resample(audio, FLITE_RATE, rate, quality="VHQ")
    if channels == 2:
        # Unequal channels, so a downmix that dropped or mis-weighted one would show.
        audio = np.stack([audio, audio * 0.6], axis=1)
    return np.clip(np.rint(audio), -32768, 32767).astype("<i2").tobytes()


def write_wav(path: Path, pcm: bytes, rate: int, channels: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if shutil.which("flite") is None:
        raise SystemExit("flite is not installed (make sysdeps)")
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        parts = [speak(sentence, Path(tmp)) for sentence in SENTENCES]
    audio, spans = compose(parts)
    duration_ms = len(audio) * 1000 // FLITE_RATE

    listing = []
    for name, rate, channels in VARIANTS:
        write_wav(args.out / name, render(audio, rate, channels), rate, channels)
        listing.append(
            {
                "file": name,
                "sample_rate": rate,
                "channels": channels,
                "duration_ms": duration_ms,
                "voice": VOICE,
                "sentences": [
                    {"text": text, "start_ms": start, "end_ms": end}
                    for text, (start, end) in zip(SENTENCES, spans, strict=True)
                ],
            }
        )
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size // 1024} KiB)")
    manifest = {
        "generator": "scripts/make_fixtures.py",
        "note": "spans are where each sentence's audio lies (flite silence trimmed, 50 ms pad)",
        "files": listing,
    }
    (args.out / "fixtures.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {args.out / 'fixtures.json'}")


if __name__ == "__main__":
    main()
