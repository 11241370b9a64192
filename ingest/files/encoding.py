"""A chunk's samples as the bytes a vendor's batch API takes: 16-bit WAV (Deepgram) or FLAC
(Google, half the size of raw PCM on speech). Pure: values in, bytes out."""

from __future__ import annotations

import io
import struct

import av
import numpy as np

from ingest.files.base import SAMPLE_RATE


def to_s16(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] to int16 (x * 32768, rounded and clipped: -1.0 is -32768 exactly)."""
    return np.clip(np.rint(samples.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")


def wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit PCM WAV file of the samples."""
    pcm = to_s16(samples).tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16,
        b"data", len(pcm),
    )  # fmt: skip
    return header + pcm


def flac_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit FLAC file of the samples (lossless: decoding gives the same int16s back)."""
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=sample_rate, layout="mono")
        stream.format = "s16"
        pcm = to_s16(samples)
        step = sample_rate  # one second per frame keeps the encoder's buffers small
        for offset in range(0, len(pcm), step):
            piece = pcm[offset : offset + step].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(piece, format="s16", layout="mono")
            frame.sample_rate = sample_rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def decode_s16(data: bytes) -> tuple[np.ndarray, int]:
    """Any audio file PyAV reads, as first-channel int16 samples and the sample rate (the fakes
    use it to "hear" what an engine sent)."""
    pieces: list[np.ndarray] = []
    rate = SAMPLE_RATE
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        rate = stream.rate or rate
        for frame in container.decode(stream):
            array = frame.to_ndarray()
            if frame.format.is_planar:
                channel = array[0]
            else:
                channel = array.reshape(-1)[:: len(frame.layout.channels)]
            if channel.dtype != np.int16:
                channel = to_s16(channel.astype(np.float32))
            pieces.append(channel.astype(np.int16))
    return (np.concatenate(pieces) if pieces else np.zeros(0, np.int16)), rate
