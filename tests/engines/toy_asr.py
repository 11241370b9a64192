"""A deterministic "recognizer" the protocol fakes share: words are encoded in the audio itself.

A word is a run of at least `MIN_WORD_MS` of one constant, non-zero sample value s (first
channel): its text is `w{s % 100}` and its speaker `s // 100 % 10` (`tone_words` writes word v
as s = LOUD + v, loud enough to be heard as speech rather than a pause). Silence is sample
value 0; after `endpoint_ms` of silence the words so far become a final. Real speech
(ever-changing samples) yields no words. Tests build audio with `tone_words` and know exactly
which words they sent.
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field

MIN_WORD_MS = 60
LOUD = 3000


@dataclass(frozen=True)
class ToyWord:
    text: str
    start_s: float
    end_s: float
    speaker: int


@dataclass(frozen=True)
class ToyResult:
    is_final: bool
    words: tuple[ToyWord, ...]
    start_s: float  # audio span the result covers
    end_s: float
    from_finalize: bool = False

    @property
    def transcript(self) -> str:
        return " ".join(w.text for w in self.words)


def tone_words(
    values: list[int], *, sample_rate: int = 16000, channels: int = 1, word_ms: int = 200,
    gap_ms: int = 50, pause_ms: int = 0,
) -> bytes:  # fmt: skip
    """PCM for words of the given sample values, `gap_ms` of silence between, then `pause_ms`."""
    out = array.array("h")
    for v in values:
        out.extend([LOUD + v] * (sample_rate * word_ms // 1000 * channels))
        out.extend([0] * (sample_rate * gap_ms // 1000 * channels))
    out.extend([0] * (sample_rate * pause_ms // 1000 * channels))
    return out.tobytes()


def silence(ms: int, *, sample_rate: int = 16000, channels: int = 1) -> bytes:
    return bytes(2 * channels * sample_rate * ms // 1000)


@dataclass
class ToyRecognizer:
    sample_rate: int
    channels: int = 1
    endpoint_ms: int = 300
    position: int = 0  # samples per channel seen
    _run_value: int = 0
    _run_start: int = 0
    _pending: list[ToyWord] = field(default_factory=list)
    _segment_start: int = 0  # sample where the audio after the last final starts
    _silence_since: int | None = None
    _leftover: bytes = b""

    def _s(self, samples: int) -> float:
        return samples / self.sample_rate

    def feed(self, pcm: bytes) -> list[ToyResult]:
        data = self._leftover + pcm
        frame = 2 * self.channels
        usable = len(data) - len(data) % frame
        self._leftover = data[usable:]
        samples = array.array("h", data[:usable])[:: self.channels]
        results: list[ToyResult] = []
        for v in samples:
            if v != self._run_value:
                word = self._end_run()
                if word is not None:
                    self._pending.append(word)
                    results.append(self._result(False))
                self._run_value, self._run_start = v, self.position
            if v == 0:
                if self._silence_since is None:
                    self._silence_since = self.position
                silent_ms = (self.position - self._silence_since) * 1000 / self.sample_rate
                if self._pending and silent_ms >= self.endpoint_ms:
                    results.append(self._final(False))
            else:
                self._silence_since = None
            self.position += 1
        return results

    def flush(self, from_finalize: bool = True) -> list[ToyResult]:
        word = self._end_run()
        self._run_value, self._run_start = 0, self.position
        if word is not None:
            self._pending.append(word)
        if not self._pending:
            return []
        return [self._final(from_finalize)]

    def _end_run(self) -> ToyWord | None:
        v, length = self._run_value, self.position - self._run_start
        if v == 0 or length * 1000 < MIN_WORD_MS * self.sample_rate:
            return None
        start, end = self._s(self._run_start), self._s(self.position)
        return ToyWord(f"w{v % 100}", start, end, v // 100 % 10)

    def _result(self, is_final: bool, from_finalize: bool = False) -> ToyResult:
        return ToyResult(
            is_final, tuple(self._pending), self._s(self._segment_start), self._s(self.position),
            from_finalize,
        )  # fmt: skip

    def _final(self, from_finalize: bool) -> ToyResult:
        result = self._result(True, from_finalize)
        self._pending = []
        self._segment_start = self.position
        return result
