from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from ingest.audio import ChannelMixer, PcmConverter
from ingest.wav import read_wav


def tone(freq: float, seconds: float, rate: int, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def interleave(*channels: np.ndarray) -> bytes:
    return np.stack(channels, axis=1).astype("<i2").tobytes()


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2")


def convert_in_chunks(converter: PcmConverter, pcm: bytes, chunk: int) -> bytes:
    out = [converter.convert(pcm[i : i + chunk]) for i in range(0, len(pcm), chunk)]
    return b"".join(out) + converter.flush()


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_48k_stereo_to_16k_mono_keeps_frequency_duration_and_level() -> None:
    left, right = tone(1000, 1.0, 48000), tone(1000, 1.0, 48000, amplitude=4000)
    converter = PcmConverter(48000, 2)
    out = samples(convert_in_chunks(converter, interleave(left, right), 3840))  # 20 ms chunks

    assert abs(len(out) - 16000) <= 2  # duration: 1 s at 16 kHz
    assert dominant_frequency(out.astype(float), 16000) == pytest.approx(1000, abs=2)
    steady = out[1000:-1000].astype(float)  # away from the edges' filter transients
    assert np.sqrt(np.mean(steady**2)) == pytest.approx(6000 / np.sqrt(2), rel=0.02)


def test_resampling_keeps_audio_time() -> None:
    """A burst at 0.5 s in the input sits at 0.5 s in the output: timestamps stay true."""
    x = np.zeros(48000, dtype=np.int16)
    x[24000:24480] = tone(1000, 0.01, 48000, amplitude=20000)
    out = np.abs(samples(convert_in_chunks(PcmConverter(48000, 1), x.tobytes(), 960)))
    onset = int(np.argmax(out > 2000))
    assert onset / 16000 == pytest.approx(0.5, abs=0.002)


@pytest.mark.parametrize("chunk", [2, 638, 960, 4096, 32768])
def test_chunked_conversion_equals_whole_conversion(chunk: int) -> None:
    pcm = tone(440, 0.5, 44100).tobytes()
    whole = samples(convert_in_chunks(PcmConverter(44100, 1), pcm, len(pcm)))
    chunked = samples(convert_in_chunks(PcmConverter(44100, 1), pcm, chunk))
    assert len(chunked) == len(whole)
    assert np.array_equal(chunked, whole)


def test_chunks_that_split_a_sample_frame_are_carried_over() -> None:
    pcm = interleave(tone(300, 0.1, 16000), tone(300, 0.1, 16000))
    whole = PcmConverter(16000, 2).convert(pcm)
    converter = PcmConverter(16000, 2)
    assert convert_in_chunks(converter, pcm, 3) == whole  # 3 bytes: never a whole frame


def test_stereo_downmix_averages_channels() -> None:
    n = 100
    converter = PcmConverter(16000, 2)  # no resampling: the downmix is exact
    pcm = interleave(
        np.full(n, 10000, np.int16),
        np.concatenate([np.zeros(n // 2, np.int16), np.full(n // 2, -10000, np.int16)]),
    )
    out = samples(converter.convert(pcm))
    assert out.tolist() == [5000] * (n // 2) + [0] * (n // 2)


def test_downmix_of_full_scale_channels_does_not_overflow() -> None:
    pcm = interleave(np.full(10, 32767, np.int16), np.full(10, 32767, np.int16))
    assert samples(PcmConverter(16000, 2).convert(pcm)).tolist() == [32767] * 10
    pcm = interleave(np.full(10, -32768, np.int16), np.full(10, 32767, np.int16))
    assert set(samples(PcmConverter(16000, 2).convert(pcm)).tolist()) <= {-1, 0}


def test_a_channel_in_antiphase_is_turned_over_instead_of_cancelling_the_other() -> None:
    """A microphone with its poles swapped: averaged as it came, the speech cancelled to
    silence (the fuzzer's antiphase stereo gave no final). After the first 100 ms block the
    channel is turned over and the mix is the signal itself."""
    x = tone(1000, 1.0, 48000)
    out = samples(convert_in_chunks(PcmConverter(48000, 2), interleave(x, -x), 4096))
    after_first_block = out[1600 + 200 :].astype(float)  # past the resampler's transient
    assert np.sqrt(np.mean(after_first_block**2)) == pytest.approx(8000 / np.sqrt(2), rel=0.02)


@pytest.mark.parametrize("chunk", [6, 638, 1920, 4096])
def test_the_mix_of_an_antiphase_pair_does_not_depend_on_the_chunks(chunk: int) -> None:
    x = tone(700, 0.5, 16000)
    pcm = interleave(x, -x // 2)
    whole = samples(convert_in_chunks(PcmConverter(16000, 2), pcm, len(pcm)))
    assert np.array_equal(samples(convert_in_chunks(PcmConverter(16000, 2), pcm, chunk)), whole)
    expected = (x[1600:].astype(float) - (-x[1600:] // 2)) / 2  # the second channel turned over
    assert np.max(np.abs(whole[1600:] - expected)) <= 1


def test_channels_in_phase_or_unrelated_are_averaged_and_quiet_ones_never_turned() -> None:
    mixer = ChannelMixer(2, 160)
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((2, 3200)).astype(np.float32) * 0.1
    assert np.array_equal(mixer.mix(np.stack([a, b])), np.stack([a, b]).mean(axis=0))
    assert not mixer.flipped.any()
    quiet = ChannelMixer(2, 160)
    hum = np.sin(np.arange(3200, dtype=np.float32) / 5) * 5e-4  # -69 dBFS
    quiet.mix(np.stack([hum, -hum]))
    assert not quiet.flipped.any()
    loud = ChannelMixer(3, 160)
    out = loud.mix(np.stack([a, -a, a]))
    assert loud.flipped.tolist() == [False, True, False]
    assert np.allclose(out[160:], a[160:])


def test_mono_at_the_output_rate_passes_through_unchanged() -> None:
    converter = PcmConverter(16000, 1)
    pcm = tone(500, 0.1, 16000).tobytes()
    assert converter.passthrough
    assert converter.convert(pcm) == pcm
    assert converter.flush() == b""


def test_upsampling_8k() -> None:
    out = samples(convert_in_chunks(PcmConverter(8000, 1), tone(1000, 1.0, 8000).tobytes(), 320))
    assert abs(len(out) - 16000) <= 2
    assert dominant_frequency(out.astype(float), 16000) == pytest.approx(1000, abs=2)


def test_convert_after_flush_is_an_error() -> None:
    converter = PcmConverter(48000, 1)
    converter.flush()
    assert converter.flush() == b""
    with pytest.raises(RuntimeError):
        converter.convert(b"\0\0")


@pytest.mark.parametrize(("rate", "channels"), [(0, 1), (16000, 0)])
def test_invalid_formats(rate: int, channels: int) -> None:
    with pytest.raises(ValueError):
        PcmConverter(rate, channels)


def test_read_wav(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    pcm = interleave(tone(200, 0.05, 22050), tone(300, 0.05, 22050))
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(22050)
        wav.writeframes(pcm)
    assert read_wav(path) == (pcm, 22050, 2)


def test_read_wav_rejects_8_bit(tmp_path: Path) -> None:
    path = tmp_path / "b.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(b"\x80" * 100)
    with pytest.raises(ValueError, match="16-bit"):
        read_wav(path)


def test_a_dc_offset_is_removed_and_pcm_without_one_passes_unchanged() -> None:
    from ingest.audio import DcBlocker

    rate = 16000
    tone = (np.sin(np.arange(rate) * 2 * np.pi * 440 / rate) * 8000).astype(np.int16)
    blocker = DcBlocker(rate)
    for chunk in np.split(tone, 10):
        assert blocker.remove(chunk.tobytes()) == chunk.tobytes()  # nothing to remove
    biased = DcBlocker(rate)
    out = b"".join(
        biased.remove((chunk.astype(np.int32) + 10_000).astype(np.int16).tobytes())
        for _ in range(3)
        for chunk in np.split(tone, 10)
    )
    last_second = np.frombuffer(out, dtype="<i2")[-rate:].astype(np.float64)
    assert abs(last_second.mean()) < 100 and abs(biased.offset - 10_000) < 100
    assert biased.remove(b"") == b""
    # The offset goes out as a ramp, not a step (a click the gate would hear): a constant
    # input moves by a few units from sample to sample, never by the offset at once.
    constant = DcBlocker(rate)
    flat = np.full(rate * 2, 10_000, dtype=np.int16)
    out_flat = np.frombuffer(constant.remove(flat.tobytes()), dtype="<i2").astype(np.int32)
    assert np.abs(np.diff(out_flat)).max() <= 10 and abs(out_flat[-100:]).max() <= 1
    # Cut up otherwise, the same stream comes out the same.
    whole = np.tile((tone.astype(np.int32) + 10_000).astype(np.int16), 3).tobytes()
    small, odd = DcBlocker(rate), DcBlocker(rate)
    assert b"".join(small.remove(whole[i : i + 640]) for i in range(0, len(whole), 640)) == (
        b"".join(odd.remove(whole[i : i + 2222]) for i in range(0, len(whole), 2222))
    )


def _speechlike(seconds: float, seed: int = 3) -> np.ndarray:
    """Noise shaped to speech's band at about -20 dBFS (16 kHz, float full scale 1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * 16000))
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    spectrum[(freqs < 100) | (freqs > 4000)] = 0
    y = np.fft.irfft(spectrum, len(x))
    return (y / np.sqrt(np.mean(y**2)) * 0.1).astype(np.float32)


def _flip_block(mixer: ChannelMixer, left: np.ndarray, right: np.ndarray) -> int | None:
    """The first block after which the second channel is turned over, fed 20 ms at a time."""
    for at in range(0, len(left), 320):
        before = (at + 320) // mixer.block_samples
        mixer.mix(np.stack([left[at : at + 320], right[at : at + 320]]))
        if mixer.flipped[1]:
            return before
    return None


def test_a_dc_offset_does_not_decide_polarity() -> None:
    """Offsets of opposite sign on two in-phase channels (review: turned over, the speech
    cancelled); taken out per block, the pair reads as in phase."""
    s = _speechlike(3.0) * 0.02  # -54 dBFS speech under +-0.015 offsets
    assert _flip_block(ChannelMixer(2, 1600), s + 0.015, s - 0.015) is None
    assert _flip_block(ChannelMixer(2, 1600), s + 0.015, -s - 0.015) is not None


def test_antiphase_after_a_long_stretch_in_phase_or_muted_is_turned_over_within_seconds() -> None:
    speech = _speechlike(600.0)
    mixer = ChannelMixer(2, 1600)
    assert _flip_block(mixer, speech, speech) is None  # ten minutes in phase
    later = _speechlike(10.0, seed=4)
    flipped_at = _flip_block(mixer, later, -later)
    assert flipped_at is not None and flipped_at <= 30, flipped_at  # within 3 s
    muted = ChannelMixer(2, 1600)
    silence = np.zeros(600 * 16000, np.float32)
    assert _flip_block(muted, silence, silence) is None  # a muted microphone for ten minutes
    assert _flip_block(muted, later, -later) in (1, 2)


def test_samples_that_are_not_finite_do_not_stop_the_judgement() -> None:
    mixer = ChannelMixer(2, 1600)
    broken = _speechlike(1.0)
    broken[100] = np.nan
    broken[200] = np.inf
    _flip_block(mixer, broken, broken)
    later = _speechlike(2.0, seed=5)
    assert _flip_block(mixer, later, -later) is not None
