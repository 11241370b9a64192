"""chunking: the pure cut decisions with plain values, then Silero on the real-speech fixture
(cuts in pauses, determinism, resuming at a chunk's end, silence, damage mid-way)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from ingest.files.base import SAMPLE_RATE, AudioChunk
from ingest.files.chunking import (
    WINDOW,
    Chunker,
    chunk_channels,
    chunk_stream,
    cut_window,
    pauses,
    speech_mask,
)
from ingest.files.decode import DecodeError, decode
from tests.files.media import FIXTURES, encode, speech

FIXTURE_MS = 29730


def _energy_detector(samples: np.ndarray) -> np.ndarray:
    """A plain detector for synthetic audio: a window is speech when it is not near-silent."""
    rms = np.sqrt(np.square(samples.reshape(-1, WINDOW)).mean(axis=1))
    return (rms > 0.01).astype(np.float32)


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _quiet(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def test_speech_mask_holds_speech_through_a_dip():
    probabilities = np.array([0.1, 0.6, 0.4, 0.3, 0.2, 0.6, 0.36, 0.1])
    assert speech_mask(probabilities).tolist() == [0, 1, 1, 0, 0, 1, 1, 0]


def test_pauses_are_the_runs_of_non_speech():
    mask = np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    assert pauses(mask) == [(1, 3), (5, 6), (7, 10)]


def test_cut_goes_in_the_middle_of_the_longest_pause_in_the_allowed_stretch():
    mask = np.ones(100, dtype=bool)
    mask[10:40] = False  # long, but before the allowed stretch
    mask[72:76] = False  # short pause
    mask[85:95] = False  # longer pause: the best
    energy = np.ones(100)
    assert cut_window(mask, energy, earliest=70) == 90


def test_among_long_pauses_the_later_one_wins():
    mask = np.ones(100, dtype=bool)
    mask[70:90] = False
    mask[92:99] = False
    mask[72:74] = True
    # (74, 90) is 16 windows and (92, 99) only 7: the 16-window one wins; equally long
    # pauses beyond 16 windows would go to the later one.
    assert cut_window(mask, np.ones(100), earliest=70) == 82
    mask = np.ones(200, dtype=bool)
    mask[100:130] = False
    mask[150:190] = False
    assert cut_window(mask, np.ones(200), earliest=100) == 170


def test_a_pause_straddling_the_stretch_start_is_cut_inside_the_stretch():
    mask = np.zeros(100, dtype=bool)  # all silence
    assert 70 <= cut_window(mask, np.ones(100), earliest=70) < 100


def test_without_a_pause_the_cut_is_hard_at_the_quietest_window():
    mask = np.ones(100, dtype=bool)
    energy = np.ones(100)
    energy[83] = 0.01
    energy[20] = 0.0  # quieter, but outside the stretch
    assert cut_window(mask, energy, earliest=70) == 83


def test_chunker_cuts_synthetic_speech_at_its_pauses_exactly_on_milliseconds():
    audio = np.concatenate([_tone(7), _quiet(0.6), _tone(6), _quiet(0.6), _tone(4)])
    chunker = Chunker(chunk_seconds=10, detector=_energy_detector, start_ms=5000, first_index=3)
    chunks = []
    for i in range(0, len(audio), 3000):  # odd block sizes
        chunks += chunker.feed(audio[i : i + 3000])
    chunks += chunker.flush()
    assert [c.index for c in chunks] == [3, 4, 5]
    assert chunks[0].start_ms == 5000
    assert all(a.end_ms == b.start_ms for a, b in itertools.pairwise(chunks))
    assert chunks[-1].end_ms == 5000 + len(audio) * 1000 // SAMPLE_RATE
    assert np.array_equal(np.concatenate([c.samples for c in chunks]), audio)
    # Each cut is inside a pause: at 7.0-7.6 s and 13.6-14.2 s of the audio.
    assert 7000 <= chunks[0].end_ms - 5000 <= 7600
    assert 13600 <= chunks[1].end_ms - 5000 <= 14200
    assert all(len(c.samples) % 16 == 0 for c in chunks[:-1])  # whole milliseconds
    assert abs(chunks[0].speech_ms - 7000) <= 64 and not chunks[0].silent


def test_continuous_sound_is_cut_hard_at_the_limit():
    chunks = list(chunk_stream([_tone(25)], chunk_seconds=10, detector=_energy_detector))
    assert all(len(c.samples) <= 10 * SAMPLE_RATE for c in chunks)
    assert sum(len(c.samples) for c in chunks) == 25 * SAMPLE_RATE


def test_silence_makes_silent_chunks():
    chunks = list(chunk_stream([_quiet(45)], chunk_seconds=20, detector=_energy_detector))
    assert chunks and all(c.silent and c.speech_ms == 0 for c in chunks)
    assert not AudioChunk(index=0, start_ms=0, samples=_quiet(1)).silent  # unmeasured: speech


def test_chunker_rejects_multichannel_blocks():
    with pytest.raises(ValueError):
        Chunker(chunk_seconds=10, detector=_energy_detector).feed(np.zeros((2, 512), np.float32))


def test_channels_are_cut_together_at_a_pause_of_both():
    """Left talks 0-7 s and 7.6-14 s; right talks 5-9 s, over left's pause: the first cut
    waits for a moment both are quiet (9-9.6 s), and each side keeps its own audio."""
    left = np.concatenate([_tone(7), _quiet(0.6), _tone(6.4), _quiet(2)])
    right = np.concatenate([_quiet(5), _tone(4), _quiet(7)])
    planes = np.stack([left, right])
    blocks = (planes[:, i : i + 3000] for i in range(0, planes.shape[1], 3000))
    chunks = list(
        chunk_channels(
            blocks, chunk_seconds=12, detector=_energy_detector, start_ms=2000, first_index=4
        )
    )
    assert [(c.index, c.channel, c.channels) for c in chunks] == [
        (4, 0, 2), (4, 1, 2), (5, 0, 2), (5, 1, 2),
    ]  # fmt: skip
    for a, b in zip(chunks[0::2], chunks[1::2], strict=True):
        assert (a.start_ms, a.end_ms) == (b.start_ms, b.end_ms)
    assert 9000 <= chunks[0].end_ms - 2000 <= 9600  # not at left's pause: right talks there
    assert chunks[0].start_ms == 2000 and chunks[2].start_ms == chunks[0].end_ms
    for channel, side in enumerate((left, right)):
        assert np.array_equal(np.concatenate([c.samples for c in chunks[channel::2]]), side)
    # Each side's speech measured on its own: right is silent after 9 s.
    assert abs(chunks[1].speech_ms - 4000) <= 64 and chunks[3].silent and not chunks[2].silent


def test_channels_damaged_mid_way_are_chunked_up_to_the_damage():
    def blocks():
        yield np.stack([_tone(6), _quiet(6)])
        raise DecodeError("the audio is damaged at 0:00:06", decoded_ms=6000)

    got = []
    with pytest.raises(DecodeError):
        for chunk in chunk_channels(blocks(), chunk_seconds=20, detector=_energy_detector):
            got.append(chunk)
    assert [(c.channel, c.end_ms) for c in got] == [(0, 6000), (1, 6000)]
    assert not got[0].silent and got[1].silent


# -- real speech, Silero --------------------------------------------------------------------


def _sentence_spans(repeats: int) -> list[tuple[int, int]]:
    files = json.loads((FIXTURES / "fixtures.json").read_text())["files"]
    entry = next(f for f in files if f["file"] == "librivox_austen_16k_mono.wav")
    spans = [(s["start_ms"], s["end_ms"]) for s in entry["sentences"]]
    return [(a + r * FIXTURE_MS, b + r * FIXTURE_MS) for r in range(repeats) for a, b in spans]


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory):
    """The fixture three times over (89 s), as a WAV file (exact seeks)."""
    path = tmp_path_factory.mktemp("chunking") / "three.wav"
    return encode(np.tile(speech(), 3), path, "wav")


@pytest.mark.parametrize("chunk_seconds", [20.0, 10.0])
def test_real_speech_is_cut_between_sentences(long_speech, chunk_seconds):
    chunks = list(chunk_stream(decode(long_speech), chunk_seconds=chunk_seconds))
    assert len(chunks) >= 89 // chunk_seconds
    assert all(len(c.samples) <= chunk_seconds * SAMPLE_RATE for c in chunks)
    # The reader pauses within sentences too, so a cut may fall between words; it must never
    # fall inside a word: check each cut sits in audio Silero and the energy both call quiet.
    audio = np.concatenate([c.samples for c in chunks])
    assert np.array_equal(audio, np.tile(speech(), 3))  # every sample, unaltered by the VAD
    for chunk in chunks[:-1]:
        at = (chunk.end_ms) * 16
        around = audio[at - 800 : at + 800]  # 50 ms either side
        assert np.sqrt(np.mean(np.square(around))) < 0.02, chunk.end_ms
    # With 20 s chunks there is always a sentence break in the last 6.7 s: every cut is one.
    if chunk_seconds == 20.0:
        spans = _sentence_spans(3)
        for chunk in chunks[:-1]:
            assert not any(a + 100 < chunk.end_ms < b - 100 for a, b in spans), chunk.end_ms
    assert all(not c.silent for c in chunks)


def test_same_audio_same_start_gives_the_same_chunks(long_speech):
    first = list(chunk_stream(decode(long_speech), chunk_seconds=10))
    second = list(chunk_stream(decode(long_speech), chunk_seconds=10))
    assert [(c.index, c.start_ms, c.end_ms, c.speech_ms) for c in first] == [
        (c.index, c.start_ms, c.end_ms, c.speech_ms) for c in second
    ]


def test_resuming_at_a_chunk_end_continues_as_the_uninterrupted_run(long_speech):
    whole = list(chunk_stream(decode(long_speech), chunk_seconds=10))
    checkpoint = whole[3]
    resumed = list(
        chunk_stream(
            decode(long_speech, start_ms=checkpoint.end_ms),
            chunk_seconds=10,
            start_ms=checkpoint.end_ms,
            first_index=checkpoint.index + 1,
        )
    )
    assert [(c.index, c.start_ms, c.end_ms) for c in resumed] == [
        (c.index, c.start_ms, c.end_ms) for c in whole[4:]
    ]
    assert np.array_equal(resumed[0].samples, whole[4].samples)


def test_damage_mid_way_still_chunks_the_audio_before_it():
    def blocks():
        audio = speech()
        yield audio[: 12 * SAMPLE_RATE]
        raise DecodeError("the audio is damaged at 0:00:12", decoded_ms=12000)

    got = []
    with pytest.raises(DecodeError):
        for chunk in chunk_stream(blocks(), chunk_seconds=20):
            got.append(chunk)
    assert got and got[-1].end_ms == 12000 and got[0].start_ms == 0
