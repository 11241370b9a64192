"""Decode a recording to 16 kHz float32 mono, frame by frame (PyAV), so memory stays flat.

`probe` answers at upload time whether a file is audio we can decode (reading the header and at
most a frame): a `MediaError` with an HTTP status (415 not audio / no audio track, 422 cannot be
decoded) and a sentence saying why. `decode` yields fixed-size blocks from `start_ms`, the same
samples a decode from the start yields from there (a resumed job goes on exactly as an
uninterrupted one), and raises
`DecodeError` at damage found mid-way (a decoder error, a hole in the timeline, or a stream that
ends well before its header's duration: truncated) after yielding everything decoded before it.

Channels are converted to float (packed) at the source rate by FFmpeg, averaged (a channel in
antiphase with the first turned over first, `ChannelMixer`; or kept apart with
`split_channels`) and resampled by soxr's streaming resampler, so the output does not depend on
how the container cuts its frames.

Resuming at `start_ms` seeks only for PCM and FLAC at 16 kHz in WAV, FLAC, AIFF or W64 files, mono
or with their channels kept apart (a mix's polarity judgement follows the audio before), whose
frames decode alone, whose timestamps are exact and which are not resampled: seek, then discard up
to the exact sample. Anything else would differ after a seek: a lossy codec's first frames decode
differently (AAC, MP3 and Opus overlap each frame with the one before), WebM stamps frames in whole
milliseconds (an Opus stream's pre-skip is not one), and the resampler would start afresh (its
filter's history, its phase). A resumed M4A job heard other words and lost whole sentences an
uninterrupted run kept. So the rest is decoded from the start and the output before `start_ms`
dropped (about a hundred times faster than real time: a minute for a 2-hour AAC file, once per
resume).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
import numpy as np
import soxr

from ingest.audio import ChannelMixer
from ingest.files.base import SAMPLE_RATE

BLOCK_SAMPLES = SAMPLE_RATE  # 1 s per yielded block (the last one may be shorter)
# A stream ending this much before its header's duration is truncated. Headers of VBR MP3
# estimate the duration from the bitrate, so allow a proportional margin too.
TRUNCATION_MARGIN_MS = 2000
TRUNCATION_MARGIN_RATIO = 0.03
# A jump forward in the frames' timestamps longer than this is lost audio (damaged pages).
# (FLAC damage drops single 93 ms frames; contiguous streams jitter by a millisecond or two.)
MAX_GAP_MS = 60
# Containers whose timestamps are sample-exact (Matroska stamps whole milliseconds, MPEG-TS a
# 90 kHz clock): only in these does a seek land on the sample it asked for.
SAMPLE_EXACT_CONTAINERS = frozenset({"wav", "flac", "aiff", "w64"})
# Leading bytes of the containers we decode: a file that starts like one but does not open is
# damaged (422), anything else is not audio (415).
MAGIC = {
    b"RIFF": "WAV",
    b"fLaC": "FLAC",
    b"OggS": "Ogg",
    b"ID3": "MP3",
    b"\x1a\x45\xdf\xa3": "WebM/Matroska",
}


class Stop(Protocol):
    """Set from another thread to end a decode early (`threading.Event`)."""

    def is_set(self) -> bool: ...


class MediaError(Exception):
    """The file cannot be accepted: `status` 415 (not audio, no audio track) or 422 (audio that
    cannot be decoded), `reason` a sentence for the person who uploaded it."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class DecodeError(Exception):
    """The file is damaged mid-way (truncated or corrupt); `decoded_ms` of audio came before."""

    def __init__(self, reason: str, decoded_ms: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.decoded_ms = decoded_ms


@dataclass(frozen=True, slots=True)
class AudioInfo:
    duration_ms: int | None  # None when the container does not say (a live-recorded WebM)
    channels: int
    sample_rate: int
    codec: str
    container: str


def _open(path: Path) -> av.container.InputContainer:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise MediaError(422, f"the file cannot be read: {exc.strerror or exc}") from exc
    if size == 0:
        raise MediaError(422, "the file is empty")
    try:
        return av.open(
            str(path),
            mode="r",
            metadata_errors="ignore",
            container_options={"format_whitelist": DEMUXERS, "protocol_whitelist": "file"},
        )
    except av.error.FFmpegError as exc:
        kind = _looks_like(path)
        if kind is not None:
            raise MediaError(
                422, f"the {kind} file is damaged and cannot be opened: {_ffmpeg_reason(exc)}"
            ) from exc
        raise MediaError(415, "the file is not in an audio or video format we can read") from exc


def _looks_like(path: Path) -> str | None:
    with path.open("rb") as file:
        head = file.read(12)
    if head[4:8] == b"ftyp":
        return "MP4/M4A"
    return next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), None)


# The demuxers a recording may come in (FFmpeg's names). Anything else is refused before its
# header is read: FFmpeg would otherwise take scripts as input, as `concat` (a file naming other
# files, or itself: a recursion that overflows the stack) and `sbg` (40 bytes of text that
# synthesise hours of audio). Text and pictures open as `tty` and images, to say what they are.
DEMUXERS = ",".join(
    [
        *("wav", "w64", "flac", "ogg", "mp3", "matroska", "mov", "aac", "ac3", "eac3"),
        *("aiff", "caf", "au", "amr", "amrnb", "amrwb", "asf", "avi", "flv", "mpegts"),
        *("mpeg", "wv", "tta", "ape", "nut", "rm", "voc", "loas", "latm", "mxf", "xwma"),
        *("dsf", "truehd", "dts", "tty", "image2", "gif", "apng"),
        *("png_pipe", "jpeg_pipe", "webp_pipe"),
    ]
)
# Below this the file is not speech audio, and each sample would be resampled into thousands
# (a 55-byte FLAC at 1 Hz asks for gigabytes).
MIN_SAMPLE_RATE = 2000

# FFmpeg opens text as a "tty" video and pictures as one-frame videos: neither is a recording.
NOT_MEDIA = {"tty": "text", "image2": "an image", "gif": "an image", "apng": "an image"}


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    streams = container.streams.audio
    name = container.format.name
    if not streams and (name in NOT_MEDIA or name.endswith("_pipe")):
        what = NOT_MEDIA.get(name, "an image")
        raise MediaError(415, f"the file is {what}, not audio or video")
    if not streams:
        kinds = sorted({s.type for s in container.streams})
        what = f"it holds only {', '.join(kinds)}" if kinds else "it holds no streams"
        raise MediaError(415, f"the file has no audio track ({what})")
    # The first track marked default (a silent backup track may come first), else the first.
    # (Not FFmpeg's "best" stream: among unmarked tracks it prefers a higher bitrate, which may
    # be music or effects rather than the voices.)
    default = av.stream.Disposition.default
    stream = next((s for s in streams if s.disposition & default), streams[0])
    if stream.codec_context is None or stream.codec_context.name is None:
        raise MediaError(415, "the file's audio is in a codec we cannot decode")
    return stream


def _duration_ms(container: av.container.InputContainer, stream) -> int | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return int(stream.duration * stream.time_base * 1000)
    if container.duration is not None and container.duration > 0:
        return int(container.duration * 1000 // av.time_base)
    return None


UNKNOWN_WAV_SIZES = frozenset({0, 0x7FFFF000, 0x7FFFFFFF, 0xFFFFFFFF})


def _wav_declared_ms(path: Path) -> int | None:
    """The duration a WAV header declares (FFmpeg caps it at the file's size, which hides a
    truncated upload); None for a streaming header (a data size a recorder writes for "not
    known yet": 0, 0xFFFFFFFF, or 0x7FFFFFFF or 0x7FFFF000 from writers that keep it signed)
    or no PCM format."""
    with path.open("rb") as file:
        head = file.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, byte_rate = 12, 0
    while offset + 8 <= len(head):
        kind, size = (
            head[offset : offset + 4],
            int.from_bytes(head[offset + 4 : offset + 8], "little"),
        )
        if kind == b"fmt " and offset + 16 <= len(head):
            byte_rate = int.from_bytes(head[offset + 16 : offset + 20], "little")
        if kind == b"data":
            if size in UNKNOWN_WAV_SIZES or not byte_rate:
                return None
            return size * 1000 // byte_rate
        offset += 8 + size + (size & 1)
    return None


def _declared_ms(path: Path, container, stream) -> int | None:
    """The duration the file says it has: a WAV's header as written (what the upload's length
    limit and the truncation check go by), else what FFmpeg reads from the container."""
    declared = _wav_declared_ms(path) if container.format.name == "wav" else None
    return declared or _duration_ms(container, stream)


def _ogg_ended(path: Path) -> bool:
    """Whether the last Ogg page carries the end-of-stream flag (a cut file's does not)."""
    with path.open("rb") as file:
        file.seek(0, 2)
        size = file.tell()
        file.seek(max(0, size - (1 << 16)))
        tail = file.read()
    at = tail.rfind(b"OggS")
    return at >= 0 and at + 6 <= len(tail) and bool(tail[at + 5] & 0x04)


def _ffmpeg_reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def probe(path: Path) -> AudioInfo:
    """What the file holds, after decoding its first audio frame (raises `MediaError`)."""
    container = _open(path)
    try:
        stream = _audio_stream(container)
        ctx = stream.codec_context
        try:
            frame = next(_frames(container, stream), None)
        except av.error.FFmpegError as exc:
            raise MediaError(
                422, f"the {ctx.name} audio cannot be decoded: {_ffmpeg_reason(exc)}"
            ) from exc
        if frame is None:
            raise MediaError(422, f"the file's {ctx.name} audio track holds no audio")
        rate = frame.sample_rate or ctx.sample_rate or 0
        if rate < MIN_SAMPLE_RATE:
            raise MediaError(
                415, f"the audio's sample rate ({rate} Hz) is below {MIN_SAMPLE_RATE} Hz"
            )
        try:  # what decoding does to every frame: a layout FFmpeg cannot convert is refused now
            av.AudioResampler(format="flt").resample(frame)
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaError(
                422, f"the audio's {frame.layout.name} layout cannot be read: {_ffmpeg_reason(exc)}"
            ) from exc
        return AudioInfo(
            duration_ms=_declared_ms(path, container, stream),
            channels=frame.layout.nb_channels or ctx.channels,
            sample_rate=frame.sample_rate or ctx.sample_rate,
            codec=ctx.name,
            container=container.format.name,
        )
    finally:
        container.close()


def _frames(container, stream) -> Iterator[av.AudioFrame]:
    for packet in container.demux(stream):
        yield from packet.decode()


def decode(
    path: Path, *, start_ms: int = 0, split_channels: bool = False, stop: Stop | None = None
) -> Iterator[np.ndarray]:
    """16 kHz float32 blocks from `start_ms`: shape (n,) mono, or (channels, n) with
    `split_channels`. Raises `MediaError` if the file cannot be opened as audio, `DecodeError`
    (after yielding what came before) where it turns out damaged. Ends at the next frame once
    `stop` is set (a consumer on another thread that went away)."""
    if start_ms < 0:
        raise ValueError("start_ms must be >= 0")
    container = _open(path)
    try:
        stream = _audio_stream(container)
        yield from _decode(path, container, stream, start_ms, split_channels, stop)
    finally:
        container.close()


class _Output:
    """Resamples planar float audio to 16 kHz and cuts it into fixed-size blocks."""

    def __init__(self, channels: int, split: bool, skip_samples: int = 0) -> None:
        self.channels = channels if split else 1
        self.split = split
        self.skip_samples = skip_samples  # at 16 kHz, dropped before anything is yielded
        self.rate = 0
        self.resampler: soxr.ResampleStream | None = None
        self.mixer: ChannelMixer | None = None
        self.pending: list[np.ndarray] = []  # (channels, n) pieces at 16 kHz
        self.pending_samples = 0
        self.yielded_samples = 0

    def feed(self, planes: np.ndarray, rate: int, last: bool = False) -> Iterator[np.ndarray]:
        """`planes`: (source channels, n) float32 at `rate`."""
        if not self.split:
            block = max(1, rate // 10)
            if self.mixer is None or (self.mixer.channels, self.mixer.block_samples) != (
                planes.shape[0],
                block,
            ):
                self.mixer = ChannelMixer(planes.shape[0], block)
            planes = self.mixer.mix(planes)[None, :]
        elif planes.shape[0] != self.channels:  # a layout change mid-stream: keep the count
            planes = _fit_channels(planes, self.channels)
        if rate != self.rate:
            yield from self._drain()
            self.rate = rate
            self.resampler = (
                None
                if rate == SAMPLE_RATE
                else soxr.ResampleStream(rate, SAMPLE_RATE, self.channels, dtype="float32")
            )
        if self.resampler is None:
            out = planes
        else:
            out = self.resampler.resample_chunk(np.ascontiguousarray(planes.T), last=last).T
        yield from self._add(out, final=last)

    def _drain(self) -> Iterator[np.ndarray]:
        if self.resampler is not None:
            empty = np.zeros((0, self.channels), dtype=np.float32)
            yield from self._add(self.resampler.resample_chunk(empty, last=True).T)
            self.resampler = None

    def finish(self) -> Iterator[np.ndarray]:
        yield from self._drain()
        yield from self._add(np.zeros((self.channels, 0), dtype=np.float32), final=True)

    def _add(self, out: np.ndarray, final: bool = False) -> Iterator[np.ndarray]:
        if self.skip_samples and out.shape[1]:
            dropped = min(self.skip_samples, out.shape[1])
            out, self.skip_samples = out[:, dropped:], self.skip_samples - dropped
        if out.shape[1]:
            self.pending.append(np.asarray(out, dtype=np.float32))
            self.pending_samples += out.shape[1]
        if not (self.pending_samples >= BLOCK_SAMPLES or (final and self.pending_samples)):
            return
        joined = np.concatenate(self.pending, axis=1) if len(self.pending) > 1 else self.pending[0]
        at = 0
        while joined.shape[1] - at >= BLOCK_SAMPLES or (final and joined.shape[1] > at):
            n = min(BLOCK_SAMPLES, joined.shape[1] - at)
            block = joined[:, at : at + n]
            at += n
            self.yielded_samples += n
            yield np.ascontiguousarray(block if self.split else block[0])
        rest = joined[:, at:]
        self.pending = [np.ascontiguousarray(rest)] if rest.shape[1] else []
        self.pending_samples = rest.shape[1]

    @property
    def yielded_ms(self) -> int:
        return self.yielded_samples * 1000 // SAMPLE_RATE


def _planes(frame: av.AudioFrame) -> np.ndarray:
    """A packed float frame as (channels, samples)."""
    interleaved = frame.to_ndarray()  # (1, samples * channels)
    return np.ascontiguousarray(interleaved.reshape(-1, len(frame.layout.channels)).T)


def _fit_channels(planes: np.ndarray, channels: int) -> np.ndarray:
    """Channels split apart after the layout changed: extra ones dropped, missing ones silent
    (a copy would be transcribed again as another channel's speech)."""
    if planes.shape[0] > channels:
        return planes[:channels]
    missing = np.zeros((channels - planes.shape[0], planes.shape[1]), dtype=planes.dtype)
    return np.concatenate([planes, missing])


def _decode(
    path: Path, container, stream, start_ms: int, split: bool, stop: Stop | None
) -> Iterator[np.ndarray]:
    ctx = stream.codec_context
    channels = max(1, ctx.channels or 1)
    duration_ms = _declared_ms(path, container, stream)
    time_base = stream.time_base or Fraction(1, ctx.sample_rate or SAMPLE_RATE)
    origin = stream.start_time if stream.start_time is not None else 0
    # Where decoding starts: `start_ms` where a seek lands on the exact sample (module docstring),
    # else the start, the output up to `start_ms` then dropped.
    exact = (
        ctx.sample_rate == SAMPLE_RATE
        and (ctx.name == "flac" or ctx.name.startswith("pcm_"))
        and container.format.name in SAMPLE_EXACT_CONTAINERS
        # Channels mixed: the mixer's judgement of their polarity follows the audio before.
        and (split or channels == 1)
    )
    seek_ms = start_ms if exact else 0
    if seek_ms:
        try:  # to the keyframe at or before seek_ms; the exact sample is found below
            container.seek(origin + int(Fraction(seek_ms, 1000) / time_base), stream=stream)
        except av.error.FFmpegError:
            seek_ms = 0  # not seekable: decode from the start and drop
    # Float at the source rate and layout: averaging or splitting is ours. Packed, not planar:
    # PyAV 18 reads a planar frame of 8 or more channels past its plane pointers (a segfault
    # that takes the process down with every live stream on it). A converter takes one setup:
    # a stream that changes rate or layout mid-way (two files joined) gets a new one.
    converter: av.AudioResampler | None = None
    converter_setup: tuple[str, str, int] | None = None
    output = _Output(channels, split, skip_samples=(start_ms - seek_ms) * SAMPLE_RATE // 1000)
    position_s: Fraction | None = None  # source time of the next sample we would emit
    start_s = Fraction(seek_ms, 1000)
    try:
        for frame in _frames(container, stream):
            if stop is not None and stop.is_set():
                return
            frame_s = (
                Fraction(frame.pts - origin) * time_base
                if frame.pts is not None
                else (position_s if position_s is not None else Fraction(0))
            )
            setup = (frame.format.name, frame.layout.name, frame.sample_rate)
            if converter is None or setup != converter_setup:
                if frame.sample_rate < MIN_SAMPLE_RATE:
                    yield from output.finish()
                    raise DecodeError(
                        f"the audio's sample rate drops to {frame.sample_rate} Hz",
                        decoded_ms=start_ms + output.yielded_ms,
                    )
                converter, converter_setup = av.AudioResampler(format="flt"), setup
            for converted in converter.resample(frame):
                planes = _planes(converted)
                rate = converted.sample_rate
                if position_s is not None and frame_s - position_s > Fraction(MAX_GAP_MS, 1000):
                    lost = int((frame_s - position_s) * 1000)
                    yield from output.finish()
                    raise DecodeError(
                        f"the audio is damaged at {_clock(int(position_s * 1000))}: "
                        f"{lost} ms could not be read",
                        decoded_ms=start_ms + output.yielded_ms,
                    )
                if frame_s < start_s:  # before the seek target: discard up to the exact sample
                    skip = int((start_s - frame_s) * rate)
                    if skip >= planes.shape[1]:
                        continue
                    planes = planes[:, skip:]
                    frame_s = start_s
                position_s = frame_s + Fraction(planes.shape[1], rate)
                # At most a second per resampling call: one huge frame (a whole file in one
                # packet) would otherwise be resampled, and held, all at once.
                for at in range(0, planes.shape[1], rate):
                    yield from output.feed(planes[:, at : at + rate], rate)
    except (av.error.FFmpegError, ValueError) as exc:  # damaged data (ValueError: PyAV's own)
        yield from output.finish()
        done = start_ms + output.yielded_ms
        raise DecodeError(
            f"the audio is damaged at {_clock(done)}: {_ffmpeg_reason(exc)}", decoded_ms=done
        ) from exc
    yield from output.finish()
    done = start_ms + output.yielded_ms
    if duration_ms is not None and start_ms < duration_ms:
        margin = max(TRUNCATION_MARGIN_MS, int(duration_ms * TRUNCATION_MARGIN_RATIO))
        if done + margin < duration_ms:
            raise DecodeError(
                f"the file is truncated: its audio ends at {_clock(done)} "
                f"of the {_clock(duration_ms)} its header announces",
                decoded_ms=done,
            )
    if container.format.name == "ogg" and not _ogg_ended(path):
        raise DecodeError(
            f"the file is truncated: its audio stops at {_clock(done)} without the Ogg "
            "stream's end",
            decoded_ms=done,
        )


def _clock(ms: int) -> str:
    seconds = ms // 1000
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
