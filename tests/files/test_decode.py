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
def test_decode_from_start_ms_starts_at_that_exact_sample(files, name, start_ms):
    full = np.concatenate(list(decode(files[name])))
    resumed = np.concatenate(list(decode(files[name], start_ms=start_ms)))
    expected = full[start_ms * 16 :]
    assert abs(len(resumed) - len(expected)) <= 16  # WebM stamps frames in whole ms
    assert abs(_aligned_lag(resumed, expected)) <= 8  # at most half a millisecond


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
