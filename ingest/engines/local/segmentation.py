"""Utterance segmentation for two-pass recognition, pure: frames and speech flags in, utterance
boundaries out.

Whisper decodes whole utterances, so where they end decides what it hears:
- an utterance ends in a pause (`silence_ms` of mostly non-speech);
- past `pause_split_after_ms` (a long monologue), any short pause (`short_pause_ms` of
  non-speech) ends it, so it stays well inside Whisper's 30 s window;
- at `max_utterance_ms` without even a short pause it is cut at the quietest frame of the last
  `cut_search_ms`, and the audio after the cut starts the next utterance: no frame is lost or
  decoded twice, and the cut falls between words where the speaker drew breath.
A frame counts as speech when the voice detector says so and it is loud enough (`EnergyGate`):
steady noise (fans, hiss, keyboard hum) never starts an utterance, so Whisper never hears it.
"""

from __future__ import annotations

from bisect import insort
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ingest.audio import FLOOR_DB

# Frames before a level history can tell a voice (rising and falling) from a steady sound.
SETTLING_FRAMES = 3
# Quiet frames in a row that make a pause, not the dip between two syllables: 150 ms.
PAUSE_FRAMES = 5


class EnergyGate:
    """A frame is loud enough to be speech when it is `margin_db` above the noise floor (the
    `percentile` of the last `window` frames' levels) and above `min_dbfs`."""

    def __init__(
        self,
        *,
        window: int = 333,  # 10 s of 30 ms frames: spans the pauses of a long sentence
        # The 2nd percentile: in 10 s of continuous speech (a stream that starts mid-sentence)
        # the 10th was soft speech, and soft words under it counted as silence and were lost.
        percentile: float = 0.02,
        margin_db: float = 12.0,
        # Once an utterance is open its softer syllables need less: over steady noise (the floor
        # at the noise's level) 12 dB above it ended utterances mid-sentence and lost their words.
        # Only within `hangover_frames` of a frame that passed `margin_db`: typing or clatter
        # 6 dB above the floor would otherwise hold an utterance open through its pauses.
        continue_margin_db: float = 6.0,
        hangover_frames: int = 20,  # 600 ms
        # Over loud steady noise (a fan, hiss, a busy room's hum at `noisy_floor_dbfs` or more)
        # speech 10 dB above the noise was lost a syllable at a time: its frames rarely cleared
        # 12 dB (WER 0.27 on the LibriVox reading against 0.09 for Whisper alone). Such noise
        # barely moves from frame to frame, so lower margins still keep it out.
        noisy_margin_db: float = 6.0,
        noisy_continue_margin_db: float = 4.0,
        noisy_floor_dbfs: float = -50.0,
        # The floor is steady when the quietest quarter of the history lies within this of it.
        steady_floor_db: float = 4.0,
        min_dbfs: float = -55.0,
        steady_frames: int = 33,  # 1 s
        steady_db: float = 2.0,
    ) -> None:
        self._levels: deque[float] = deque(maxlen=window)
        # A sound whose level has not moved for `steady_frames` is noise (speech rises and falls
        # with every syllable): the floor jumps to it instead of taking 10 s to catch up.
        self._recent: deque[float] = deque(maxlen=steady_frames)
        self._steady_db = steady_db
        self._sorted: list[float] = []
        self._percentile = percentile
        self._margin_db = margin_db
        self._continue_margin_db = continue_margin_db
        self._hangover_frames = hangover_frames
        self._noisy_margins = (noisy_margin_db, noisy_continue_margin_db)
        self._noisy_floor_dbfs = noisy_floor_dbfs
        self._steady_floor_db = steady_floor_db
        self._noisy_min_history = window // 3  # 3 s of frames before the floor's shape counts
        self._since_strong = hangover_frames + 1  # frames since one passed margin_db
        self._min_dbfs = min_dbfs
        # Whether the history has shown where the floor is: a pause (PAUSE_FRAMES in a row
        # `margin_db` under the median) or a steady sound. A stream that starts mid-sentence
        # (a client resuming after a restart) has neither: its floor so far is its softest
        # syllable, and every syllable after it fell under the margin, losing the words up to
        # the first pause.
        self._floor_known = False
        self._quiet_run = 0  # frames in a row `margin_db` under the median, while not known

    @property
    def floor_db(self) -> float:
        if not self._sorted:
            return FLOOR_DB
        recent = self._recent
        if not self._floor_known and (
            len(recent) < SETTLING_FRAMES or level_spread(recent) >= self._steady_db
        ):
            return FLOOR_DB  # speech from the first frame: the voice detector decides alone
        floor = self._sorted[int(self._percentile * (len(self._sorted) - 1))]
        if len(recent) == recent.maxlen and level_spread(recent) < self._steady_db:
            floor = max(floor, float(np.median(recent)))
        return floor

    def is_loud(self, level_db: float, *, continuing: bool = False) -> bool:
        """Judge the frame against the floor so far (with the lower margin when `continuing` an
        utterance, within the hangover of a frame that passed the full one), then add it to the
        history."""
        floor = self.floor_db
        margin, continue_margin = self._margins(floor)
        strong = level_db >= floor + margin
        self._since_strong = 0 if strong else self._since_strong + 1
        soft_ok = continuing and self._since_strong <= self._hangover_frames
        loud = level_db >= self._min_dbfs and (
            strong or (soft_ok and level_db >= floor + continue_margin)
        )
        if not self._floor_known and self._sorted:
            quiet = level_db <= self._sorted[len(self._sorted) // 2] - self._margin_db
            self._quiet_run = self._quiet_run + 1 if quiet else 0
            recent = self._recent
            steady = len(recent) == recent.maxlen and level_spread(recent) < self._steady_db
            self._floor_known = self._quiet_run >= PAUSE_FRAMES or steady
        if len(self._levels) == self._levels.maxlen:
            self._sorted.remove(self._levels[0])
        self._levels.append(level_db)
        self._recent.append(level_db)
        insort(self._sorted, level_db)
        return loud

    def _margins(self, floor: float) -> tuple[float, float]:
        """The start and continue margins over `floor`: the lower pair over loud steady noise."""
        ordered = self._sorted
        if floor >= self._noisy_floor_dbfs and len(ordered) >= self._noisy_min_history:
            quartile = ordered[(len(ordered) - 1) // 4]
            if quartile - floor < self._steady_floor_db:
                return self._noisy_margins
        return self._margin_db, self._continue_margin_db


def level_spread(levels: Iterable[float]) -> float:
    """Standard deviation of frame levels in dB: about 1 for steady noise, 5 and more for
    speech (syllables rise and fall)."""
    values = np.fromiter(levels, dtype=np.float64)
    return float(values.std()) if values.size else 0.0


@dataclass(frozen=True, slots=True)
class Segmentation:
    """Where utterances start and end (milliseconds of 16 kHz audio)."""

    frame_ms: int = 30
    start_ms: int = 150  # window in which 80% of frames must be speech to start an utterance
    preroll_ms: int = 300  # audio kept from before the start decision (soft onsets)
    silence_ms: int = 600  # a pause this long (at most 10% speech) ends an utterance
    pause_split_after_ms: int = 10000  # past this, a short pause ends the utterance
    short_pause_ms: int = 240
    max_utterance_ms: int = 20000  # hard cut (at the quietest frame), below Whisper's 30 s
    cut_search_ms: int = 1500


@dataclass(frozen=True, slots=True)
class Utterance:
    """A finished utterance: its 16 kHz audio and where it lies in the stream."""

    pcm: bytes
    start_sample: int
    speech_end_sample: int  # end of its last speech frame
    speech_ms: int


@dataclass(frozen=True, slots=True)
class Started:
    """An utterance began with `frames` (the preroll, or the audio carried over from a cut)."""

    frames: tuple[bytes, ...]
    start_sample: int


@dataclass(frozen=True, slots=True)
class Extended:
    frame: bytes
    level_db: float


@dataclass(frozen=True, slots=True)
class Ended:
    utterance: Utterance


Change = Started | Extended | Ended


@dataclass
class _Open:
    start_sample: int
    frames: list[bytes] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)
    speech: list[bool] = field(default_factory=list)


class Segmenter:
    """Turns a stream of fixed-size frames into utterances (see the module's docstring)."""

    def __init__(self, segmentation: Segmentation = Segmentation()) -> None:
        s = segmentation
        per = s.frame_ms
        self._start_frames = max(1, s.start_ms // per)
        self._end_frames = max(1, s.silence_ms // per)
        self._short_frames = max(1, s.short_pause_ms // per)
        self._split_after = max(1, s.pause_split_after_ms // per)
        self._max_frames = max(2, s.max_utterance_ms // per)
        self._cut_frames = max(1, min(s.cut_search_ms // per, self._max_frames - 1))
        self._frame_ms = per
        preroll = max(self._start_frames, s.preroll_ms // per)
        self._preroll: deque[tuple[bytes, bool, float]] = deque(maxlen=preroll)
        self._position = 0  # samples pushed so far
        self._open: _Open | None = None

    @property
    def in_utterance(self) -> bool:
        return self._open is not None

    def push(self, frame: bytes, speech: bool, level_db: float) -> list[Change]:
        """One frame, its speech flag and level; what changed, in order."""
        self._position += len(frame) // 2
        if self._open is None:
            self._preroll.append((frame, speech, level_db))
            recent = [flag for _, flag, _ in self._preroll][-self._start_frames :]
            if len(recent) == self._start_frames and sum(recent) * 5 >= len(recent) * 4:
                frames = list(self._preroll)
                self._preroll.clear()
                return [self._start(frames)]
            return []
        utt = self._open
        utt.frames.append(frame)
        utt.levels.append(level_db)
        utt.speech.append(speech)
        changes: list[Change] = [Extended(frame, level_db)]
        count = len(utt.frames)
        tail = utt.speech[-self._end_frames :]
        if len(tail) == self._end_frames and sum(tail) * 10 <= self._end_frames:
            changes.append(self._end())
        elif count >= self._split_after and not any(utt.speech[-self._short_frames :]):
            changes.append(self._end())
        elif count >= self._max_frames:
            changes.extend(self._cut())
        return changes

    def flush(self, tail: bytes = b"") -> Utterance | None:
        """End the open utterance now (finalize, close), with `tail` (a partial frame) added."""
        if self._open is None:
            return None
        if tail:
            self._position += len(tail) // 2
            self._open.frames.append(tail)
            self._open.levels.append(FLOOR_DB)
            self._open.speech.append(False)
        ended = self._end()
        return ended.utterance

    # -- internals -----------------------------------------------------------------------------

    def _start(self, frames: list[tuple[bytes, bool, float]]) -> Started:
        """Open an utterance with `frames`, the most recent audio (it ends at `_position`)."""
        samples = sum(len(frame) for frame, _, _ in frames) // 2
        start = self._position - samples
        self._open = _Open(
            start,
            [frame for frame, _, _ in frames],
            [level for _, _, level in frames],
            [flag for _, flag, _ in frames],
        )
        return Started(tuple(self._open.frames), start)

    def _end(self) -> Ended:
        utt = self._open
        assert utt is not None
        self._open = None
        return Ended(self._utterance(utt, len(utt.frames)))

    def _cut(self) -> list[Change]:
        """Cut at the quietest recent frame; the rest starts the next utterance."""
        utt = self._open
        assert utt is not None
        first = len(utt.frames) - self._cut_frames
        quietest = min(range(first, len(utt.frames)), key=lambda i: (utt.levels[i], -i))
        cut = quietest + 1
        ended = Ended(self._utterance(utt, cut))
        self._open = None
        carried = list(zip(utt.frames[cut:], utt.speech[cut:], utt.levels[cut:], strict=True))
        if not carried:
            return [ended]
        return [ended, self._start(carried)]

    def _utterance(self, utt: _Open, count: int) -> Utterance:
        frames = utt.frames[:count]
        speech = utt.speech[:count]
        offsets = [0]
        for frame in frames:
            offsets.append(offsets[-1] + len(frame) // 2)
        last = max((i for i, flag in enumerate(speech) if flag), default=0)
        return Utterance(
            pcm=b"".join(frames),
            start_sample=utt.start_sample,
            speech_end_sample=utt.start_sample + offsets[last + 1],
            speech_ms=sum(speech) * self._frame_ms,
        )
