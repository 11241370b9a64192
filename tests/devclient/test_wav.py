from __future__ import annotations

import shutil
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from gateway.client import audio
from gateway.client.audio import conform_pcm, create_test_wav, load_wav_pcm


def _write_wave(path: Path, frames: bytes, *, rate: int, channels: int, width: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


def _riff(fmt_body: bytes, data: bytes, *, extra_chunk: bytes = b"") -> bytes:
    """A WAV built by hand, for encodings the `wave` module cannot write."""
    chunks = b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body + extra_chunk
    chunks += b"data" + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def _fmt(tag: int, channels: int, rate: int, width: int) -> bytes:
    align = channels * width
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, width * 8)


def _extensible_fmt(sub_tag: int, channels: int, rate: int, width: int) -> bytes:
    guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    ext = struct.pack("<HHI", 22, width * 8, 0x3) + struct.pack("<H", sub_tag) + guid_tail
    return _fmt(0xFFFE, channels, rate, width) + ext


def test_stereo_48k_16_bit_loads_unchanged(tmp_path: Path) -> None:
    samples = np.arange(-4800, 4800, dtype="<i2").reshape(-1, 2)  # 4800 stereo frames
    path = _write_wave(tmp_path / "s.wav", samples.tobytes(), rate=48000, channels=2, width=2)
    pcm, rate, channels = load_wav_pcm(path)
    assert (rate, channels) == (48000, 2)
    assert pcm == samples.tobytes()


def test_8_bit_unsigned_is_recentred(tmp_path: Path) -> None:
    path = _write_wave(tmp_path / "u8.wav", bytes([0, 128, 255]), rate=8000, channels=1, width=1)
    pcm, rate, channels = load_wav_pcm(path)
    assert np.frombuffer(pcm, "<i2").tolist() == [-32768, 0, 32512]
    assert (rate, channels) == (8000, 1)


def test_24_bit_keeps_the_high_16_bits(tmp_path: Path) -> None:
    values = [0x123456, -1, -0x800000, 0x7FFFFF]
    raw = b"".join(v.to_bytes(3, "little", signed=True) for v in values)
    path = _write_wave(tmp_path / "s24.wav", raw, rate=44100, channels=2, width=3)
    pcm, rate, channels = load_wav_pcm(path)
    assert np.frombuffer(pcm, "<i2").tolist() == [0x1234, -1, -32768, 32767]
    assert (rate, channels) == (44100, 2)


def test_32_bit_int_keeps_the_high_16_bits(tmp_path: Path) -> None:
    raw = np.array([0x12345678, -0x80000000, 65535], dtype="<i4").tobytes()
    path = _write_wave(tmp_path / "s32.wav", raw, rate=16000, channels=1, width=4)
    pcm, _, _ = load_wav_pcm(path)
    assert np.frombuffer(pcm, "<i2").tolist() == [0x1234, -32768, 0]


def test_float_wav_is_scaled_and_clipped(tmp_path: Path) -> None:
    floats = np.array([0.0, 0.5, -1.0, 1.5], dtype="<f4").tobytes()
    path = tmp_path / "f32.wav"
    path.write_bytes(_riff(_fmt(3, 1, 22050, 4), floats))
    pcm, rate, _ = load_wav_pcm(path)
    assert np.frombuffer(pcm, "<i2").tolist() == [0, 16384, -32767, 32767]
    assert rate == 22050


def test_extensible_24_bit_with_extra_chunks_and_padding(tmp_path: Path) -> None:
    odd_chunk = b"LIST" + struct.pack("<I", 3) + b"abc" + b"\0"  # odd size, padded
    raw = b"".join(v.to_bytes(3, "little", signed=True) for v in [0x010203, -0x010203])
    path = tmp_path / "ext.wav"
    path.write_bytes(_riff(_extensible_fmt(1, 2, 48000, 3), raw, extra_chunk=odd_chunk))
    pcm, rate, channels = load_wav_pcm(path)
    assert np.frombuffer(pcm, "<i2").tolist() == [0x0102, -0x0103]  # truncation floors
    assert (rate, channels) == (48000, 2)


def test_a_torn_last_frame_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "torn.wav"
    path.write_bytes(_riff(_fmt(1, 2, 16000, 2), b"\x01\x00\x02\x00\x03"))
    pcm, _, _ = load_wav_pcm(path)
    assert pcm == b"\x01\x00\x02\x00"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a wav at all", "not a RIFF/WAVE"),
        (_riff(_fmt(6, 1, 8000, 1), b"\x00" * 8), "convert it to 16-bit PCM"),  # A-law
        (_riff(_extensible_fmt(3, 1, 8000, 2), b"\x00" * 8), "unsupported WAV"),  # 16-bit float
    ],
)
def test_unsupported_files_give_a_clear_error(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        load_wav_pcm(path)
    assert str(path) in str(info.value)


def test_conform_leaves_contract_audio_alone() -> None:
    pcm = np.arange(200, dtype="<i2").tobytes()
    assert conform_pcm(pcm, 16000, 2) == (pcm, 16000, 2)


def test_conform_downmixes_many_channels_to_mono() -> None:
    frames = np.array([[0, 6, 0, 0, 0, 0], [600, 600, 600, 600, 600, 600]], dtype="<i2")
    pcm, rate, channels = conform_pcm(frames.tobytes(), 16000, 6)
    assert (rate, channels) == (16000, 1)
    assert np.frombuffer(pcm, "<i2").tolist() == [1, 600]


@pytest.mark.parametrize(("rate", "target"), [(96000, 48000), (6000, 8000)])
def test_conform_resamples_rates_outside_the_handshake_range(rate: int, target: int) -> None:
    seconds = 0.5
    t = np.arange(int(rate * seconds)) / rate
    tone = (np.sin(2 * np.pi * 440 * t) * 10000).astype("<i2")
    stereo = np.repeat(tone[:, None], 2, axis=1)
    pcm, new_rate, channels = conform_pcm(stereo.tobytes(), rate, 2)
    assert (new_rate, channels) == (target, 2)
    assert len(pcm) == pytest.approx(target * seconds * 4, abs=8)
    out = np.frombuffer(pcm, "<i2").reshape(-1, 2)
    assert np.abs(out).max() > 8000  # still the tone, not silence


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")
def test_create_test_wav_synthesises_speech(tmp_path: Path) -> None:
    path = create_test_wav(tmp_path / "hello.wav", "hello world")
    pcm, rate, channels = load_wav_pcm(path)
    assert channels == 1
    assert 8000 <= rate <= 48000
    seconds = len(pcm) / 2 / rate
    assert 0.3 < seconds < 5
    assert np.abs(np.frombuffer(pcm, "<i2")).max() > 1000


def test_create_test_wav_without_flite_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audio.shutil, "which", lambda _name: None)
    with pytest.raises(RuntimeError, match="flite is not installed"):
        create_test_wav(tmp_path / "x.wav")
