"""decode.probe/decode on real files made from the real-speech fixture with PyAV, and on
empty, non-audio, video-only, truncated and corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.files.decode import BLOCK_SAMPLES, DecodeError, MediaError, decode, probe
from tests.files.media import FORMATS, Format, encode, speech, video_only

VIDEOS = {
    "mp4-video": (Format("mp4-video", ".mp4", "mp4", "aac", 44100, "fltp"), "mpeg4"),
    "webm-video": (Format("webm-video", ".webm", "webm", "libopus", 48000, "s16"), "libvpx"),
}
# Formats whose damaged bytes the decoder can notice (PCM in WAV decodes whatever it holds).
CORRUPTIBLE = ["flac", "mp3", "ogg-opus", "ogg-vorbis", "webm-opus", "m4a-aac"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    samples = speech()
    made = {
        name: encode(samples, root / f"speech-{name}{f.suffix}", f) for name, f in FORMATS.items()
    }
    for name, (fmt, codec) in VIDEOS.items():
        made[name] = encode(
            samples, root / f"speech{fmt.suffix}", fmt, video=True, video_codec=codec
        )
    return made


def _aligned_lag(
    decoded: np.ndarray, reference: np.ndarray, at: int = 16000, span: int = 8000
) -> int:
    """Lag in samples of `decoded` against `reference` (cross-correlation over `span`)."""
    search = 400
    window = decoded[at : at + span]
    ref = reference[at - search : at + span + search]
    return int(np.argmax(np.correlate(window, ref, mode="valid"))) - search


@pytest.mark.parametrize("name", [*FORMATS, *VIDEOS])
def test_every_format_decodes_to_the_same_16k_mono_audio(files, name):
    reference = speech()
    info = probe(files[name])
    assert info.duration_ms is not None and abs(info.duration_ms - 29730) <= 50
    blocks = list(decode(files[name]))
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    assert all(len(b) == BLOCK_SAMPLES for b in blocks[:-1])
    audio = np.concatenate(blocks)
    assert abs(len(audio) - len(reference)) <= 16 * 20  # within 20 ms (AAC's padding)
    assert _aligned_lag(audio, reference) == 0
    # Lossy codecs differ in detail, not in the signal: strongly correlated with the original.
    n = min(len(audio), len(reference))
    assert np.corrcoef(audio[:n], reference[:n])[0, 1] > 0.9


def test_probe_describes_the_audio_track(files):
    info = probe(files["ogg-vorbis"])
    assert (info.channels, info.sample_rate, info.codec, info.container) == (
        2,
        44100,
        "vorbis",
        "ogg",
    )
    video = probe(files["mp4-video"])
    assert video.codec == "aac" and "mp4" in video.container


@pytest.mark.parametrize("name", ["wav", "flac", "mp3", "m4a-aac", "ogg-opus", "webm-opus"])
@pytest.mark.parametrize("start_ms", [12345, 20000])
def test_decode_from_start_ms_yields_what_a_decode_from_the_start_yields_from_there(
    files, name, start_ms
):
    """A resumed job must hear what the uninterrupted run heard: a resumed M4A decoded other
    samples after its seek (AAC overlaps frames), and Whisper lost two sentences of it; a WebM's
    started half a millisecond early (frames stamped in whole milliseconds)."""
    full = np.concatenate(list(decode(files[name])))
    resumed = np.concatenate(list(decode(files[name], start_ms=start_ms)))
    assert np.array_equal(resumed, full[start_ms * 16 :])


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_a_mixed_stereo_file_in_antiphase_resumes_as_it_decodes_whole(tmp_path, fmt):
    """A seek would start the mix's polarity judgement afresh: the first 100 ms after the
    resume point came out silent (review)."""
    left = speech()
    path = encode(np.stack([left, -left]), tmp_path / f"antiphase.{fmt}", fmt, channels=2)
    full = np.concatenate(list(decode(path)))
    assert np.sqrt(np.mean(full[16000:] ** 2)) > 0.5 * np.sqrt(np.mean(left[16000:] ** 2))
    resumed = np.concatenate(list(decode(path, start_ms=12345)))
    assert np.array_equal(resumed, full[12345 * 16 :])


def test_split_channels_keeps_the_channels_apart(tmp_path):
    left = speech()
    stereo = np.stack([left, np.zeros_like(left)])
    path = encode(stereo, tmp_path / "stereo.flac", "flac", channels=2)
    blocks = list(decode(path, split_channels=True))
    assert all(b.shape[0] == 2 and b.dtype == np.float32 for b in blocks)
    audio = np.concatenate(blocks, axis=1)
    assert np.abs(audio[0]).max() > 0.1 and np.abs(audio[1]).max() < 1e-3
    mono = np.concatenate(list(decode(path)))  # averaged: half the left channel
    assert np.allclose(mono, audio.mean(axis=0), atol=1e-5)


def test_of_several_audio_tracks_the_default_one_is_decoded(tmp_path):
    import av
    from av.stream import Disposition

    samples = (speech() * 32767).astype(np.int16)
    path = tmp_path / "two-tracks.mkv"
    with av.open(str(path), "w", format="matroska") as out:
        tracks = [out.add_stream("pcm_s16le", rate=16000, layout="mono") for _ in range(2)]
        tracks[0].disposition = Disposition(0)  # a silent backup track, first
        tracks[1].disposition = Disposition.default
        for track, audio in zip(tracks, (np.zeros_like(samples), samples), strict=True):
            frame = av.AudioFrame.from_ndarray(audio[None, :], format="s16", layout="mono")
            frame.sample_rate = 16000
            for packet in [*track.encode(frame), *track.encode(None)]:
                out.mux(packet)
    decoded = np.concatenate(list(decode(path)))
    assert np.abs(decoded).max() > 0.1  # the speech, not the silence


def _media_error(path: Path) -> MediaError:
    with pytest.raises(MediaError) as probed:
        probe(path)
    with pytest.raises(MediaError) as decoded:
        next(decode(path))
    assert probed.value.status == decoded.value.status
    return probed.value


def test_empty_file_is_422(tmp_path):
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    error = _media_error(path)
    assert error.status == 422 and "empty" in error.reason


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("minutes.txt", b"minutes of the meeting\n" * 200, "text, not audio"),
        ("minutes.bin", b"minutes of the meeting\n" * 200, "not in an audio or video format"),
        ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20, "image, not audio"),
        ("noise.bin", bytes((i * 7919) % 251 for i in range(5000)), "not in an audio or video"),
    ],
)
def test_not_audio_is_415_with_a_reason(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    error = _media_error(path)
    assert error.status == 415 and words in error.reason


def test_video_without_audio_is_415(tmp_path):
    error = _media_error(video_only(tmp_path / "silent-film.mp4"))
    assert error.status == 415 and "no audio track" in error.reason


def test_an_mp4_cut_before_its_index_is_422(files, tmp_path):
    data = files["m4a-aac"].read_bytes()
    path = tmp_path / "cut.m4a"
    path.write_bytes(data[: len(data) // 2])  # the moov atom is at the end
    error = _media_error(path)
    assert error.status == 422 and "damaged" in error.reason


def _decode_until_error(path: Path) -> tuple[int, DecodeError]:
    samples = 0
    with pytest.raises(DecodeError) as raised:
        for block in decode(path):
            samples += len(block)
    return samples, raised.value


@pytest.mark.parametrize("name", ["wav", "flac", "mp3", "ogg-opus", "ogg-vorbis", "webm-opus"])
def test_truncated_file_yields_what_it_holds_then_fails(files, tmp_path, name):
    data = files[name].read_bytes()
    path = tmp_path / f"half{FORMATS[name].suffix}"
    path.write_bytes(data[: len(data) // 2])
    info = probe(path)  # the header is intact: accepted at upload, fails mid-way
    if name == "wav":  # the length its header declares, which the upload's limit goes by
        assert info.duration_ms is not None and abs(info.duration_ms - 29730) <= 50
    samples, error = _decode_until_error(path)
    assert 12_000 <= error.decoded_ms <= 16_000, error.reason
    assert abs(samples - error.decoded_ms * 16) <= 16
    assert "truncated" in error.reason or "damaged" in error.reason


@pytest.mark.parametrize("name", CORRUPTIBLE)
def test_corrupt_bytes_mid_way_fail_after_the_audio_before_them(files, tmp_path, name):
    data = bytearray(files[name].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes((i * 37 + 11) % 256 for i in range(4096))
    path = tmp_path / f"corrupt{FORMATS[name].suffix}"
    path.write_bytes(bytes(data))
    samples, error = _decode_until_error(path)
    assert 12_000 <= error.decoded_ms <= 17_000, error.reason
    assert abs(samples - error.decoded_ms * 16) <= 16
    assert "damaged" in error.reason


@pytest.mark.parametrize("channels", [3, 8, 16])
def test_many_channels_decode_averaged_or_split(tmp_path, channels):
    """A 7.1 soundtrack or a multitrack recorder's file: PyAV's planar frames of 8 or more
    channels crashed the process; each channel keeps its own signal."""
    import wave

    reference = speech()[:32000]
    gains = np.linspace(0.1, 0.8, channels)
    interleaved = (reference[:, None] * gains[None, :] * 32767).astype("<i2")
    path = tmp_path / f"ch{channels}.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(interleaved.tobytes())
    assert probe(path).channels == channels
    split = np.concatenate(list(decode(path, split_channels=True)), axis=1)
    assert split.shape == (channels, len(reference))
    for channel, gain in enumerate(gains):
        assert np.allclose(split[channel], reference * gain, atol=2e-4), channel
    mono = np.concatenate(list(decode(path)))
    assert np.allclose(mono, reference * gains.mean(), atol=2e-4)


def _wav(path: Path, *, channels: int = 1, rate: int = 16000, seconds: float = 1.0) -> Path:
    import wave

    frames = int(rate * seconds)
    samples = (np.sin(np.arange(frames * channels) / 7) * 8000).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


@pytest.mark.parametrize(
    ("script", "why"),
    [
        # A concat script naming itself: FFmpeg reopened it recursively until the stack broke.
        ("ffconcat version 1.0\nfile {name}\n", "not in an audio or video format"),
        # SBaGen: 40 bytes of text that synthesise hours of tones.
        ("-SE\nalloff: -\nt1: 200+10/50\nNOW t1\n+5:00:00 alloff\n", "not in an audio or video"),
    ],
)
def test_scripts_ffmpeg_would_run_are_refused_before_they_are_read(tmp_path, script, why):
    path = tmp_path / "upload.bin"
    path.write_text(script.format(name=path.name))
    with pytest.raises(MediaError, match=why) as refused:
        probe(path)
    assert refused.value.status == 415


def test_a_sample_rate_too_low_for_speech_is_refused(tmp_path):
    """At 100 Hz every sample would become 160 at 16 kHz: a small file, gigabytes to decode."""
    with pytest.raises(MediaError, match=r"\(100 Hz\) is below 2000 Hz") as refused:
        probe(_wav(tmp_path / "low.wav", rate=100, seconds=60))
    assert refused.value.status == 415


def test_a_layout_ffmpeg_cannot_convert_is_refused_at_upload(tmp_path):
    """255 channels open and decode, but FFmpeg's converter cannot read the layout: refused at
    once (422) rather than accepted and then failed as damaged at 0:00."""
    with pytest.raises(MediaError, match="layout cannot be read") as refused:
        probe(_wav(tmp_path / "ch255.wav", channels=255, seconds=0.1))
    assert refused.value.status == 422


def _encoded(fmt: str, codec: str, rate: int, layout: str, seconds: float = 2.0) -> bytes:
    """A tone in `fmt`, as bytes (two of them joined make a stream that changes mid-way)."""
    import io

    import av

    out = io.BytesIO()
    with av.open(out, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        size, pts = stream.codec_context.frame_size or 1024, 0
        while pts < seconds * rate:
            tone = (0.3 * np.sin(2 * np.pi * 440 * (pts + np.arange(size)) / rate)).astype("f4")
            planes = np.repeat(tone[None], stream.codec_context.layout.nb_channels, 0)
            frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = rate, pts
            for packet in stream.encode(frame):
                container.mux(packet)
            pts += size
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "first", "second"),
    [
        ("mono-then-stereo.aac", ("adts", "aac", 44100, "mono"), ("adts", "aac", 44100, "stereo")),
        ("44k-then-8k.aac", ("adts", "aac", 44100, "mono"), ("adts", "aac", 8000, "mono")),
    ],
)
def test_audio_that_changes_rate_or_channels_mid_way_decodes_on(tmp_path, name, first, second):
    """Two files joined byte for byte: PyAV's converter refused the second part's frames with a
    ValueError, which crashed the job's runner on every attempt."""
    path = tmp_path / name
    path.write_bytes(_encoded(*first) + _encoded(*second))
    audio = np.concatenate(list(decode(path)))
    assert 3.8 * 16000 <= len(audio) <= 4.4 * 16000  # both parts, and AAC's padding
    assert np.abs(audio[-16000:]).max() > 0.1  # the second part is heard


def test_split_channels_a_stereo_stream_turned_mono_leaves_the_second_silent(tmp_path):
    """Its channels are transcribed apart: the mono part must not come out twice."""
    path = tmp_path / "stereo-then-mono.aac"
    path.write_bytes(
        _encoded("adts", "aac", 44100, "stereo") + _encoded("adts", "aac", 44100, "mono")
    )
    planes = np.concatenate(list(decode(path, split_channels=True)), axis=1)
    assert planes.shape[0] == 2
    assert np.abs(planes[:, 16000:24000]).max(axis=1).min() > 0.1  # stereo: both heard
    assert np.abs(planes[0, -16000:]).max() > 0.1 and np.abs(planes[1, -16000:]).max() < 1e-6


def test_a_decode_told_to_stop_ends_at_the_next_frame(files):
    """A resumed job's decode runs on a thread no cancel reaches; its job's end sets the flag."""

    class StopAfter:
        def __init__(self, checks: int) -> None:
            self.checks = checks

        def is_set(self) -> bool:
            self.checks -= 1
            return self.checks < 0

    full = sum(len(b) for b in decode(files["m4a-aac"]))
    # Resuming 20 s in: the 20 s before are decoded and dropped; told to stop within them.
    assert list(decode(files["m4a-aac"], start_ms=20000, stop=StopAfter(50))) == []
    stopped = sum(len(b) for b in decode(files["m4a-aac"], stop=StopAfter(100)))
    assert 0 < stopped < full


@pytest.mark.parametrize(
    "fmt",
    [
        Format("flac-16k", ".flac", "flac", "flac", 16000, "s16"),  # seeks: exact
        Format("mka-flac-16k", ".mka", "matroska", "flac", 16000, "s16"),  # ms stamps: no seek
    ],
)
def test_16k_flac_resumes_exactly_in_its_own_container_and_in_matroska(tmp_path, fmt):
    path = encode(speech(), tmp_path / f"speech{fmt.suffix}", fmt)
    full = np.concatenate(list(decode(path)))
    for start_ms in (12345, 20000):
        resumed = np.concatenate(list(decode(path, start_ms=start_ms)))
        assert np.array_equal(resumed, full[start_ms * 16 :]), start_ms


@pytest.mark.parametrize("declared", [0, 0x7FFFF000, 0x7FFFFFFF, 0xFFFFFFFF])
def test_a_wav_whose_data_size_says_not_known_lasts_what_it_holds(tmp_path, declared):
    """Streaming recorders write these sizes before they know the length; taken as declared,
    0x7FFFFFFF is 18 hours at 16 kHz and the upload was refused as too long (413)."""
    path = _wav(tmp_path / "streamed.wav", seconds=2.0)
    data = bytearray(path.read_bytes())
    at = data.index(b"data")
    data[at + 4 : at + 8] = declared.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    info = probe(path)
    assert info.duration_ms is not None and abs(info.duration_ms - 2000) <= 20
    assert sum(len(b) for b in decode(path)) == 32000
