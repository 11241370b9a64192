"""Make real media files from the real-speech fixture with PyAV (the tests' encoder).

`encode(samples, path, fmt)` writes 16 kHz mono float audio (resampled by FFmpeg to what the codec
wants, optionally as stereo) into one of `FORMATS`, and `with_video` adds a tiny video stream so
the file is a video container with an audio track.
"""

from __future__ import annotations

import json
import struct
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.synth import espeak_pcm

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SPEECH = FIXTURES / "librivox_austen_16k_mono.wav"


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    container: str
    codec: str
    rate: int
    sample_format: str
    options: dict[str, str] | None = None
    channels: int = 1  # FFmpeg's own Vorbis encoder takes stereo only


FORMATS = {
    f.name: f
    for f in (
        Format("wav", ".wav", "wav", "pcm_s16le", 16000, "s16"),
        Format("flac", ".flac", "flac", "flac", 44100, "s16"),
        Format("mp3", ".mp3", "mp3", "libmp3lame", 44100, "fltp"),
        Format("ogg-opus", ".ogg", "ogg", "libopus", 48000, "s16"),
        Format("ogg-vorbis", ".ogg", "ogg", "vorbis", 44100, "fltp", {"strict": "-2"}, 2),
        Format("webm-opus", ".webm", "webm", "libopus", 48000, "s16"),
        Format("m4a-aac", ".m4a", "ipod", "aac", 44100, "fltp"),
    )
}


def speech() -> np.ndarray:
    """The real-speech fixture as float32 at 16 kHz."""
    with wave.open(str(SPEECH), "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        pcm = w.readframes(w.getnframes())
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def speech_text() -> str:
    files = json.loads((FIXTURES / "fixtures.json").read_text())["files"]
    entry = next(f for f in files if f["file"] == SPEECH.name)
    return " ".join(s["text"] for s in entry["sentences"])


def encode(
    samples: np.ndarray,
    path: Path,
    fmt: str | Format,
    *,
    channels: int | None = None,
    video: bool = False,
    video_codec: str = "mpeg4",
) -> Path:
    """Write `samples` (16 kHz mono float32, or (channels, n)) to `path` in `fmt`."""
    f = FORMATS[fmt] if isinstance(fmt, str) else fmt
    planes = samples[None, :] if samples.ndim == 1 else samples
    channels = channels or max(f.channels, planes.shape[0])
    if planes.shape[0] != channels:
        planes = np.repeat(planes[:1], channels, axis=0)
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w", format=f.container) as out:
        vstream = None
        if video:
            vstream = out.add_stream(video_codec, rate=5)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        astream = out.add_stream(f.codec, rate=f.rate, options=f.options or {})
        astream.layout = layout
        astream.format = f.sample_format
        resampler = av.AudioResampler(format=f.sample_format, layout=layout, rate=f.rate)
        step = 16000 // 10  # 100 ms frames in
        pts = 0
        for i in range(0, planes.shape[1], step):
            piece = np.ascontiguousarray(planes[:, i : i + step], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = 16000, i, Fraction(1, 16000)
            for converted in resampler.resample(frame):
                converted.pts = pts
                converted.time_base = Fraction(1, f.rate)
                pts += converted.samples
                out.mux(astream.encode(converted))
        for converted in resampler.resample(None):
            converted.pts, converted.time_base = pts, Fraction(1, f.rate)
            pts += converted.samples
            out.mux(astream.encode(converted))
        out.mux(astream.encode(None))
        if vstream is not None:
            seconds = planes.shape[1] / 16000
            for n in range(int(seconds * 5)):
                image = np.full((48, 64, 3), (n * 7) % 255, dtype=np.uint8)
                vframe = av.VideoFrame.from_ndarray(image, format="rgb24")
                vframe.pts = n
                out.mux(vstream.encode(vframe))
            out.mux(vstream.encode(None))
    return path


# Matroska's Segment Info Duration: ID 0x4489, size 8 (an 8-byte float in TimecodeScale units,
# milliseconds as PyAV writes it). An 11-byte Void element (0xEC, size 9) fills its place.
_MKV_DURATION = b"\x44\x89\x88"
_MKV_VOID_11 = b"\xec\x89\x00"


def matroska_duration(path: Path, seconds: float | None) -> Path:
    """Rewrite a WebM/MKV file's header to announce `seconds` (a lie: the audio is unchanged),
    or to announce no length at all (None), as browsers' MediaRecorder writes it."""
    data = bytearray(path.read_bytes())
    at = data.find(_MKV_DURATION)
    assert at >= 0, "no Duration element"
    if seconds is None:
        data[at : at + 3] = _MKV_VOID_11
    else:
        data[at + 3 : at + 11] = struct.pack(">d", seconds * 1000)
    path.write_bytes(bytes(data))
    return path


def video_only(path: Path, seconds: float = 2.0, container: str = "mp4") -> Path:
    with av.open(str(path), "w", format=container) as out:
        vstream = out.add_stream("mpeg4", rate=5)
        vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        for n in range(int(seconds * 5)):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = n
            out.mux(vstream.encode(frame))
        out.mux(vstream.encode(None))
    return path


def overlapping_stereo(path: Path) -> Path:
    """Real speech on the left for 14 s; a synthetic voice on the right, at the same loudness,
    talking over it from 2 s: mixed, tiny.en hears the left one only ("...to do for a year
    before noon")."""
    left = speech()[: 14 * 16000]
    right_pcm = espeak_pcm(OVERLAP_RIGHT, lead_ms=2000)
    right = np.frombuffer(right_pcm, "<i2").astype(np.float32) / 32768
    right = np.concatenate([right, np.zeros(len(left), np.float32)])[: len(left)]
    right *= np.sqrt(np.mean(left**2) / np.mean(right[right != 0] ** 2))
    return encode(np.stack([left, right]), path, "flac", channels=2)


# What the right side of `overlapping_stereo` says.
OVERLAP_RIGHT = (
    "The budget review moves to Thursday at three o'clock. Send the slides to Maria before noon."
)
