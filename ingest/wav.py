"""Reading 16-bit PCM WAV files (tests, fixtures, offline transcription)."""

from __future__ import annotations

import wave
from pathlib import Path


def read_wav(path: str | Path) -> tuple[bytes, int, int]:
    """Return `(pcm, sample_rate, channels)`: s16le interleaved frames, as clients send them."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getcomptype() != "NONE":
            raise ValueError(f"{path}: expected uncompressed 16-bit PCM WAV")
        return wav.readframes(wav.getnframes()), wav.getframerate(), wav.getnchannels()
