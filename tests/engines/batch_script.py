"""What the batch fakes "hear" in real speech: a known transcript, aligned to the audio sent.

A `TimedScript` holds a reference recording (a fixture, 16 kHz) and where each of its sentences
lies. A request's audio (the whole file, or any chunk of it, in any sample rate or lossy codec)
is located in the reference by cross-correlating its loudest second; the sentences whose words
fall in that stretch come back with times relative to the request, each sentence's words spread
evenly over its span, speakers alternating by sentence. Deterministic, and it follows chunking:
a chunk gets exactly the words said in it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.files.encoding import decode_s16
from tests.engines.toy_asr import ToyWord

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RATE = 16_000
MATCH = 0.6  # normalized correlation of a stretch of the reference (lossy codecs stay > 0.9)


@dataclass(frozen=True)
class TimedScript:
    reference: np.ndarray  # int16 at 16 kHz
    sentences: tuple[tuple[int, int, str], ...]  # (start_ms, end_ms, text) in the reference

    @classmethod
    def from_fixture(cls, name: str) -> TimedScript:
        manifest = json.loads((FIXTURES / "fixtures.json").read_text())
        entry = next(item for item in manifest["files"] if item["file"] == name)
        samples, rate = decode_s16((FIXTURES / name).read_bytes())
        if rate != RATE:
            samples = _resample(samples, rate)
        spans = tuple((s["start_ms"], s["end_ms"], s["text"]) for s in entry["sentences"])
        return cls(samples, spans)

    def words(self, samples: np.ndarray, rate: int) -> list[list[ToyWord]]:
        """The sentences heard in `samples` (words whose middle lies in them), per sentence;
        nothing when the audio is not part of the reference (silence, hiss, other speech)."""
        audio = samples if rate == RATE else _resample(samples, rate)
        offset = self.locate(audio)
        if offset is None:
            return []
        offset_s = offset / RATE
        duration_s = len(audio) / RATE
        heard: list[list[ToyWord]] = []
        for index, (start_ms, end_ms, text) in enumerate(self.sentences):
            texts = text.split()
            step = (end_ms - start_ms) / 1000 / max(1, len(texts))
            words = []
            for i, word in enumerate(texts):
                start = start_ms / 1000 + i * step - offset_s
                end = start + step * 0.85
                if 0 <= (start + end) / 2 < duration_s:
                    words.append(ToyWord(word, max(0.0, start), min(duration_s, end), index % 2))
            if words:
                heard.append(words)
        return heard

    def locate(self, audio: np.ndarray) -> int | None:
        """Where `audio` starts in the reference, in samples (its loudest second, aligned by
        normalized cross-correlation), or None when nothing in the reference matches it."""
        window = min(RATE, len(audio))
        if window < RATE // 10:
            return None
        x = audio.astype(np.float64)
        energy = _moving_sum(x * x, window)
        at = int(np.argmax(energy))
        probe = x[at : at + window]
        probe_norm = float(np.sqrt(energy[at]))
        if probe_norm < 1e-6:
            return None  # digital silence
        ref = self.reference.astype(np.float64)
        size = 1 << int(np.ceil(np.log2(len(ref) + window)))
        correlation = np.fft.irfft(np.fft.rfft(ref, size) * np.conj(np.fft.rfft(probe, size)), size)
        ref_energy = _moving_sum(ref * ref, window)
        scores = correlation[: len(ref_energy)] / (
            np.sqrt(np.maximum(ref_energy, 1e-9)) * probe_norm
        )
        best = int(np.argmax(scores))
        if scores[best] < MATCH:
            return None
        return max(0, best - at)


def _moving_sum(values: np.ndarray, window: int) -> np.ndarray:
    """Sums of every `window` consecutive values (len(values) - window + 1 of them)."""
    sums = np.concatenate(([0.0], np.cumsum(values)))
    return sums[window:] - sums[:-window]


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    positions = np.arange(0, len(samples) * RATE / rate) * rate / RATE
    return np.interp(positions, np.arange(len(samples)), samples.astype(np.float64)).astype(
        np.int16
    )
