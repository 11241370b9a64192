"""Cut a decoded recording into `AudioChunk`s at pauses, at most `chunk_seconds` long.

Where to cut: Silero VAD (shipped with faster-whisper, run by onnxruntime: no PyTorch) scores each
32 ms window of the pending audio; the cut goes in the middle of the best pause whose middle lies
within the last `tolerance` seconds before the limit (pauses up to half a second long count by
length, beyond that the later one wins, so chunks stay long). Only when that stretch holds no
pause at all is the cut hard, at its quietest window. Cuts fall on window boundaries (512 samples,
exactly 32 ms), so every chunk's `start_ms`/`end_ms` is exact and a decode resumed at a chunk's
`end_ms` continues sample for sample.

Deterministic and resumable: every decision looks only at audio from the current chunk's start,
so the same audio from the same `start_ms` gives the same chunks, and a job resumed at a chunk's
`end_ms` with the next index cuts the rest as a fresh run from there would.

Silence: each chunk carries `speech_ms`, the speech the detector found in it; a chunk with less
than `MIN_SPEECH_MS` is `silent` and engines skip it (Whisper invents text in silence).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ingest.files.base import SAMPLE_RATE, AudioChunk

WINDOW = 512  # Silero's window at 16 kHz: 32 ms
WINDOW_MS = WINDOW * 1000 // SAMPLE_RATE
SPEECH_THRESHOLD = 0.5  # a window is speech at this probability ...
SPEECH_HOLD_THRESHOLD = 0.35  # ... and stays speech down to this one (Silero's own hysteresis)
LONG_PAUSE_WINDOWS = 16  # pauses longer than 512 ms are all equally good: take the latest
MAX_TOLERANCE_S = 10.0

# Window probabilities of speech for `samples` (length a multiple of WINDOW), one per window.
SpeechDetector = Callable[[np.ndarray], np.ndarray]


def silero_detector() -> SpeechDetector:
    """faster-whisper's bundled Silero VAD (onnxruntime, one thread; loaded once per process)."""
    from faster_whisper.vad import get_vad_model

    model = get_vad_model()

    def probabilities(samples: np.ndarray) -> np.ndarray:
        if not len(samples):
            return np.zeros(0, dtype=np.float32)
        # A copy: the model zeroes the last 64 samples of its input array in place.
        return np.asarray(model(samples.copy()), dtype=np.float32).reshape(-1)

    return probabilities


def speech_mask(probabilities: np.ndarray) -> np.ndarray:
    """Per window: speech or not, with hysteresis (enter at 0.5, leave below 0.35)."""
    mask = np.zeros(len(probabilities), dtype=bool)
    speaking = False
    for i, p in enumerate(probabilities):
        speaking = p >= SPEECH_THRESHOLD or (speaking and p >= SPEECH_HOLD_THRESHOLD)
        mask[i] = speaking
    return mask


def pauses(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of non-speech windows as (first, end) window indexes, end exclusive."""
    runs, start = [], None
    for i, speech in enumerate(mask):
        if not speech and start is None:
            start = i
        elif speech and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(mask)))
    return runs


def cut_window(mask: np.ndarray, energy: np.ndarray, earliest: int) -> int:
    """The window index to cut at (the chunk ends before it), among windows >= `earliest`.

    The middle of the best pause's part at or after `earliest`; without any pause there, the
    quietest window of that stretch (a hard cut)."""
    limit = len(mask)
    best: tuple[int, int] | None = None  # (score, cut)
    for first, end in pauses(mask):
        # Only the part of a pause inside the allowed stretch counts as a place to cut; its
        # whole length says how good a pause it is.
        middle = (max(first, earliest) + end) // 2
        if end <= earliest or middle >= limit or middle == 0:
            continue
        score = min(end - first, LONG_PAUSE_WINDOWS)
        if best is None or (score, middle) >= best:
            best = (score, middle)
    if best is not None:
        return best[1]
    stretch = energy[earliest:limit]
    return earliest + int(np.argmin(stretch)) if len(stretch) else limit


def speech_ms(samples: np.ndarray, detector: SpeechDetector) -> int:
    """The speech `detector` finds in mono `samples` (whole windows only)."""
    whole = len(samples) // WINDOW * WINDOW
    return int(speech_mask(detector(samples[:whole])).sum()) * WINDOW_MS if whole else 0


class Chunker:
    """Feed 16 kHz mono blocks, get chunks cut at pauses; `flush` at the end of the audio."""

    def __init__(
        self,
        *,
        chunk_seconds: float,
        start_ms: int = 0,
        first_index: int = 0,
        tolerance_seconds: float | None = None,
        detector: SpeechDetector | None = None,
    ) -> None:
        if chunk_seconds * SAMPLE_RATE < 4 * WINDOW:
            raise ValueError("chunk_seconds is too short to cut at pauses")
        self.max_windows = int(chunk_seconds * SAMPLE_RATE) // WINDOW
        tolerance = (
            tolerance_seconds
            if tolerance_seconds is not None
            else min(MAX_TOLERANCE_S, chunk_seconds / 3)
        )
        self.tolerance_windows = max(
            1, min(self.max_windows - 1, int(tolerance * 1000) // WINDOW_MS)
        )
        self.next_start_ms = start_ms
        self.next_index = first_index
        self.detector = detector or silero_detector()
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0

    def feed(self, block: np.ndarray) -> list[AudioChunk]:
        if block.ndim != 1:
            raise ValueError("Chunker takes mono blocks; chunk each channel on its own")
        if len(block):
            self._pending.append(np.asarray(block, dtype=np.float32))
            self._pending_samples += len(block)
        chunks = []
        while self._pending_samples >= self.max_windows * WINDOW:
            chunks.append(self._cut())
        return chunks

    def flush(self) -> list[AudioChunk]:
        """The rest of the audio as a last chunk (none if nothing is pending)."""
        if not self._pending_samples:
            return []
        samples = self._take(self._pending_samples)
        return [self._chunk(samples, speech_ms(samples, self.detector))]

    def _cut(self) -> AudioChunk:
        size = self.max_windows * WINDOW
        audio = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        head = audio[:size]
        mask = speech_mask(self.detector(head))
        energy = np.square(head.reshape(-1, WINDOW)).mean(axis=1)
        at = cut_window(mask, energy, self.max_windows - self.tolerance_windows)
        self._pending = [audio]
        self._pending_samples = len(audio)
        samples = self._take(at * WINDOW)
        return self._chunk(samples, int(mask[:at].sum()) * WINDOW_MS)

    def _take(self, n: int) -> np.ndarray:
        audio = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        taken, rest = audio[:n], audio[n:]
        self._pending = [rest] if len(rest) else []
        self._pending_samples = len(rest)
        return np.ascontiguousarray(taken)

    def _chunk(self, samples: np.ndarray, speech_ms: int) -> AudioChunk:
        chunk = AudioChunk(
            index=self.next_index,
            start_ms=self.next_start_ms,
            samples=samples,
            speech_ms=speech_ms,
        )
        self.next_index += 1
        self.next_start_ms = chunk.end_ms
        return chunk


def chunk_stream(
    blocks: Iterable[np.ndarray],
    *,
    chunk_seconds: float,
    start_ms: int = 0,
    first_index: int = 0,
    detector: SpeechDetector | None = None,
) -> Iterator[AudioChunk]:
    """Chunks of a decoded stream (`decode(path, start_ms=...)`), lazily: a chunk is yielded as
    soon as the audio after it decides its cut, so memory holds about one chunk."""
    chunker = Chunker(
        chunk_seconds=chunk_seconds,
        start_ms=start_ms,
        first_index=first_index,
        detector=detector,
    )
    source = iter(blocks)
    while True:
        try:
            block = next(source)
        except StopIteration:
            break
        except Exception:
            # Damage mid-way (decode.DecodeError): what decoded before it is still chunked and
            # transcribed, then the error goes on to the runner.
            yield from chunker.flush()
            raise
        yield from chunker.feed(block)
    yield from chunker.flush()


class _Planes:
    """The (channels, n) blocks of a stream not yet cut into chunks."""

    def __init__(self) -> None:
        self._pending: list[np.ndarray] = []

    def mix(self, block: np.ndarray) -> np.ndarray:
        """Keep `block`; its channels' mean (where the cuts are decided)."""
        self._pending.append(block)
        return block.mean(axis=0, dtype=np.float32)

    def take(self, n: int) -> np.ndarray:
        pending = self._pending
        audio = np.concatenate(pending, axis=1) if len(pending) > 1 else pending[0]
        taken, rest = audio[:, :n], audio[:, n:]
        self._pending = [rest] if rest.shape[1] else []
        return taken


def chunk_channels(
    blocks: Iterable[np.ndarray],
    *,
    chunk_seconds: float,
    start_ms: int = 0,
    first_index: int = 0,
    detector: SpeechDetector | None = None,
) -> Iterator[AudioChunk]:
    """Chunks of a stream of (channels, n) blocks (`decode(..., split_channels=True)`) whose
    channels are transcribed apart: every cut falls at the same instant in all of them, at a
    pause of their mix (so no channel's word is cut where another only pauses), and each cut
    gives one mono chunk per channel, in channel order, sharing the cut's index, each with the
    speech found in that channel alone (a side that was silent is skipped). Lazy and
    resumable as `chunk_stream`."""
    detector = detector or silero_detector()
    planes = _Planes()
    cuts = chunk_stream(
        (planes.mix(block) for block in blocks),
        chunk_seconds=chunk_seconds,
        start_ms=start_ms,
        first_index=first_index,
        detector=detector,
    )
    for cut in cuts:
        sides = planes.take(len(cut.samples))
        for channel, side in enumerate(sides):
            samples = np.ascontiguousarray(side)
            yield AudioChunk(
                index=cut.index,
                start_ms=cut.start_ms,
                samples=samples,
                channel=channel,
                channels=len(sides),
                speech_ms=speech_ms(samples, detector),
            )
