"""Audio for the ingest client: WAV files to s16le PCM, fitted to the handshake's limits; test
speech synthesised with flite."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from ingest.protocol import MAX_SAMPLE_RATE as MAX_RATE
from ingest.protocol import MIN_SAMPLE_RATE as MIN_RATE

DEFAULT_TEST_TEXT = (
    "Hello everyone, this is a test of the meeting transcription gateway. "
    "The quick brown fox jumps over the lazy dog."
)


_WAVE_PCM, _WAVE_FLOAT, _WAVE_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE


@dataclass(frozen=True)
class _WavFormat:
    tag: int
    channels: int
    rate: int
    block_align: int


def load_wav_pcm(path: str | Path) -> tuple[bytes, int, int]:
    """(s16le interleaved PCM, sample rate, channels) from a WAV file.

    Reads integer PCM of 8/16/24/32 bits and 32/64-bit float, plain or WAVE_FORMAT_EXTENSIBLE
    (which Python 3.11's `wave` rejects, yet ffmpeg and sox write for 24-bit audio).
    """
    data = Path(path).read_bytes()
    try:
        fmt, payload = _parse_wav(data)
        return _to_s16le(payload, fmt), fmt.rate, fmt.channels
    except (ValueError, struct.error) as exc:
        raise ValueError(f"{path}: {exc}") from None


def _riff_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        # Slicing keeps what is there when a streamed file declares a bogus (huge) size.
        yield chunk_id, data[offset + 8 : offset + 8 + size]
        offset += 8 + size + (size & 1)  # chunks are word-aligned


def _parse_wav(data: bytes) -> tuple[_WavFormat, bytes]:
    fmt: _WavFormat | None = None
    for chunk_id, body in _riff_chunks(data):
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(body)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("data chunk before fmt chunk")
            return fmt, body
    raise ValueError("no fmt/data chunk")


def _parse_fmt(body: bytes) -> _WavFormat:
    tag, channels, rate, _byte_rate, block_align, _bits = struct.unpack_from("<HHIIHH", body)
    if tag == _WAVE_EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack_from("<H", body, 24)[0]  # the SubFormat GUID starts with the tag
    if channels < 1 or rate < 1 or block_align < channels or block_align % channels:
        raise ValueError(f"invalid format (channels={channels} rate={rate} align={block_align})")
    return _WavFormat(tag, channels, rate, block_align)


def _to_s16le(payload: bytes, fmt: _WavFormat) -> bytes:
    width = fmt.block_align // fmt.channels  # container bytes per sample
    raw = payload[: len(payload) - len(payload) % fmt.block_align]  # drop a torn last frame
    if fmt.tag == _WAVE_PCM and width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(raw, np.uint8).astype(np.int16) - 128) << 8
    elif fmt.tag == _WAVE_PCM and width == 2:
        samples = np.frombuffer(raw, "<i2")
    elif fmt.tag == _WAVE_PCM and width in (3, 4):
        # Keep each sample's two most significant bytes (little-endian: the last two).
        samples = np.frombuffer(raw, np.uint8).reshape(-1, width)[:, width - 2 :].copy().view("<i2")
    elif fmt.tag == _WAVE_FLOAT and width in (4, 8):
        floats = np.frombuffer(raw, "<f4" if width == 4 else "<f8")
        samples = np.clip(np.round(floats * 32767.0), -32768, 32767)
    else:
        raise ValueError(
            f"unsupported WAV encoding (format tag {fmt.tag:#06x}, {width * 8}-bit); "
            "convert it to 16-bit PCM, e.g. `sox in.wav -b 16 out.wav`"
        )
    return samples.astype("<i2").reshape(-1).tobytes()


def conform_pcm(
    pcm: bytes, rate: int, channels: int, *, max_channels: int = 2
) -> tuple[bytes, int, int]:
    """Fit audio into the handshake's limits: downmix to mono above `max_channels`, resample
    rates outside 8000..48000 Hz to the nearest bound. Audio already within limits is untouched."""
    samples = np.frombuffer(pcm, "<i2").reshape(-1, channels)
    if channels > max_channels:
        samples = np.round(samples.mean(axis=1, keepdims=True)).astype(np.int16)
        channels = 1
    target = min(max(rate, MIN_RATE), MAX_RATE)
    if target != rate:
        samples = soxr.resample(samples.astype(np.int16), rate, target)
        rate = target
    return np.ascontiguousarray(samples, dtype="<i2").tobytes(), rate, channels


def create_test_wav(path: str | Path, text: str = DEFAULT_TEST_TEXT, *, voice: str = "slt") -> Path:
    """Synthesise `text` to a WAV at `path` with flite (16 kHz mono for the built-in voices)."""
    flite = shutil.which("flite")
    if flite is None:
        raise RuntimeError("flite is not installed (apt-get install flite); pass a WAV instead")
    path = Path(path)
    try:
        proc = subprocess.run(
            [flite, "-voice", voice, "-t", text, "-o", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError("flite did not finish within 120 s") from None
    if proc.returncode != 0 or not path.is_file() or path.stat().st_size <= 44:
        raise RuntimeError(f"flite failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return path
