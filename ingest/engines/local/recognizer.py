"""One stream's speech recognition, pure and synchronous: pocketsphinx (US English).

Per stream: client PCM -> `PcmConverter` (16 kHz mono) -> 30 ms frames -> pocketsphinx `Vad` ->
utterance splitting -> `Decoder`. Only audio inside an utterance is decoded, so silence costs
next to nothing. An utterance ends after `silence_ms` of (mostly) non-speech, on `finalize()`,
or after `max_utterance_ms`; each ends in one final with word timings.

Measured with pocketsphinx 5.1.1 on CPython 3.11 (2-core VM):
- `Decoder.process_raw`, `end_utt` and `Decoder()` hold the GIL for their whole duration, which
  is why `LocalEngine` runs recognizers in worker processes (`ingest.engines.local.worker`).
- CPU: about 0.18 s per second of speech per stream (VAD alone on silence: 0.0002).
- The second-pass `fwdflat` search is off: it runs inside `end_utt`, holding the GIL for about
  200 ms per 3.5 s utterance (6 ms without it), and grows with utterance length. Cost: WER
  7.9% instead of 7.1% over 18 two-sentence flite clips in 3 voices.
- `Decoder()` takes ~0.35 s and ~90 MB, so worker processes pool and reuse decoders.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from pocketsphinx import Decoder, Vad

from ingest.audio import DcBlocker, PcmConverter
from ingest.engines.base import EngineError, EngineEvent, StreamConfig, Word

SAMPLE_RATE = 16000
DECODER_FRAME_MS = 10  # pocketsphinx's frame rate is 100 frames per second
VAD_FRAME_S = 0.03

# The ps 5 model directory's feat.params says nothing about cmninit; this is the value
# pocketsphinx's own live-decoding tests use for the bundled en-us model. Live CMN weights its
# initial mean like 5 s of audio, so a better start visibly improves the first utterances.
EN_US_CMNINIT = "41.00,-5.29,-0.12,5.09,2.48,-4.07,-1.37,-1.78,-5.08,-2.05,-6.45,-1.42,1.17"

# pocketsphinx ships one US English model. "en" and "en-us" get it; "auto" is accepted as "assume
# English" so the embedded default serves clients that leave detection to the server.
LANGUAGES = frozenset({"en", "en-us", "auto"})

_ALTERNATE_PRONUNCIATION = re.compile(r"\(\d+\)$")


def default_decoder() -> Decoder:
    return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", cmninit=EN_US_CMNINIT, fwdflat=False)


def reusable_decoder(decoder: Decoder | None, in_utterance: bool) -> Decoder | None:
    """A stream's decoder back for the pool: its utterance ended first; None if that fails
    (its state is unknown, so it is not reused)."""
    if decoder is not None and in_utterance:
        try:
            decoder.end_utt()
        except Exception:
            return None
    return decoder


def clean_word(token: str) -> str | None:
    """The spoken word in a decoder token, or None for silence, sentence marks and fillers."""
    if token.startswith("<") or token.startswith("[") or token.startswith("++"):
        return None  # <s>, </s>, <sil>, [NOISE], ++BREATH++ ...
    return _ALTERNATE_PRONUNCIATION.sub("", token) or None  # "for(2)" -> "for"


@dataclass(frozen=True, slots=True)
class Tuning:
    """Utterance splitting and partial cadence; the defaults suit conversational speech."""

    silence_ms: int = 600  # a pause this long (at most 10% speech frames in it) ends an utterance
    start_ms: int = 150  # window in which 80% of frames must be speech to start one
    preroll_ms: int = 300  # audio kept from before the start decision (soft onsets)
    partial_interval_ms: int = 250  # at most one partial per this much audio
    max_utterance_ms: int = 20000  # force a final in long monologues
    vad_mode: int = Vad.LOOSE  # 0 (loose) .. 3 (strict)


class Recognizer:
    """One stream's synchronous recognition state. A worker process owns it and calls one
    method at a time; `feed`/`finalize`/`close` return the events they produced, in order."""

    def __init__(self, decoder: Decoder, config: StreamConfig, tuning: Tuning) -> None:
        self.decoder: Decoder | None = decoder
        self._tuning = tuning
        self._converter = PcmConverter(config.sample_rate, config.channels, SAMPLE_RATE)
        self._dc = DcBlocker(SAMPLE_RATE)  # an offset would read as loudness to the gate
        self._vad = Vad(tuning.vad_mode, SAMPLE_RATE, VAD_FRAME_S)
        self._frame_bytes: int = self._vad.frame_bytes
        frame_ms = self._frame_bytes * 1000 // (2 * SAMPLE_RATE)
        self._start_frames = max(1, tuning.start_ms // frame_ms)
        self._end_frames = max(1, tuning.silence_ms // frame_ms)
        self._pending = bytearray()  # converted audio short of a whole VAD frame
        self._position = 0  # 16 kHz samples consumed so far: the stream's audio clock
        self._preroll: deque[bytes] = deque(maxlen=max(1, tuning.preroll_ms // frame_ms))
        self._speech_flags: deque[bool] = deque(maxlen=max(self._end_frames, self._start_frames))
        self._in_utterance = False
        self._utt_start = 0  # stream sample where the decoder's frame 0 lies
        self._utt_samples = 0
        self._since_partial = 0
        self._last_partial: EngineEvent | None = None
        # A pooled decoder carries the cepstral mean and noise estimates of its previous stream
        # (another microphone, another voice). Rebuilding the front end (0.1 ms) resets both, so
        # a reused decoder gives exactly what a fresh one would.
        decoder.reinit_feat()

    # -- entry points ---------------------------------------------------------------------------

    def feed(self, pcm: bytes) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        self._pending += self._dc.remove(self._converter.convert(pcm))
        self._consume_frames(events)
        return events

    def finalize(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        if self._in_utterance:
            self._decode_pending()
            self._end_utterance(events)
        return events

    def close(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        self._pending += self._dc.remove(self._converter.flush())
        self._consume_frames(events)
        if self._in_utterance:
            self._decode_pending()
            self._end_utterance(events)
        return events

    def release(self) -> Decoder | None:
        """Detach the decoder, reset for reuse; None if it is no longer trustworthy."""
        decoder, self.decoder = self.decoder, None
        in_utterance, self._in_utterance = self._in_utterance, False
        return reusable_decoder(decoder, in_utterance)

    # -- internals ------------------------------------------------------------------------------

    def _consume_frames(self, events: list[EngineEvent]) -> None:
        size = self._frame_bytes
        whole = len(self._pending) - len(self._pending) % size
        view = memoryview(self._pending)
        try:
            for offset in range(0, whole, size):
                self._on_frame(bytes(view[offset : offset + size]), events)
        finally:
            view.release()
        del self._pending[:whole]

    def _on_frame(self, frame: bytes, events: list[EngineEvent]) -> None:
        decoder = self._decoder()
        samples = len(frame) // 2
        self._speech_flags.append(self._vad.is_speech(frame))
        self._position += samples
        if not self._in_utterance:
            self._preroll.append(frame)
            recent = list(self._speech_flags)[-self._start_frames :]
            if len(recent) == self._start_frames and sum(recent) * 5 >= len(recent) * 4:
                self._start_utterance(decoder)
            return
        decoder.process_raw(frame, False, False)
        self._utt_samples += samples
        self._since_partial += samples
        if self._utterance_ended():
            self._end_utterance(events)
        elif self._since_partial * 1000 >= self._tuning.partial_interval_ms * SAMPLE_RATE:
            self._since_partial = 0
            self._maybe_partial(events)

    def _utterance_ended(self) -> bool:
        if self._utt_samples * 1000 >= self._tuning.max_utterance_ms * SAMPLE_RATE:
            return True
        flags = self._speech_flags
        window = list(flags)[-self._end_frames :]
        return len(window) == self._end_frames and sum(window) * 10 <= self._end_frames

    def _start_utterance(self, decoder: Decoder) -> None:
        frames = list(self._preroll)
        self._preroll.clear()
        samples = sum(len(frame) for frame in frames) // 2
        self._utt_start = self._position - samples
        self._utt_samples = samples
        self._since_partial = samples
        self._in_utterance = True
        decoder.start_utt()
        for frame in frames:  # frame by frame, as in _on_frame: the same decoder input
            decoder.process_raw(frame, False, False)

    def _decode_pending(self) -> None:
        """Feed the sub-frame remainder so a flush ends exactly where the audio does."""
        if self._pending:
            self._decoder().process_raw(bytes(self._pending), False, False)
            self._position += len(self._pending) // 2
            self._utt_samples += len(self._pending) // 2
            self._pending.clear()

    def _maybe_partial(self, events: list[EngineEvent]) -> None:
        words = self._words(with_confidence=False)
        text = " ".join(w.text for w in words)
        if not text or (self._last_partial is not None and self._last_partial.text == text):
            return
        end_ms = self._ms(self._utt_start + self._utt_samples)
        partial = EngineEvent(
            is_final=False, text=text, start_ms=words[0].start_ms, end_ms=end_ms, words=words
        )
        self._last_partial = partial
        events.append(partial)

    def _end_utterance(self, events: list[EngineEvent]) -> None:
        decoder = self._decoder()
        self._in_utterance = False
        decoder.end_utt()
        words = self._words(with_confidence=True)
        last_partial, self._last_partial = self._last_partial, None
        self._preroll.clear()
        if words:
            scores = [w.confidence for w in words if w.confidence is not None]
            confidence = round(sum(scores) / len(scores), 3) if scores else None
            final = EngineEvent(
                is_final=True,
                text=" ".join(w.text for w in words),
                start_ms=words[0].start_ms,
                end_ms=words[-1].end_ms,
                words=words,
                confidence=confidence,
            )
        elif last_partial is not None:
            # The full decode found nothing, but viewers saw words: close their partial.
            final = EngineEvent(
                is_final=True,
                text=last_partial.text,
                start_ms=last_partial.start_ms,
                end_ms=last_partial.end_ms,
            )
        else:
            return
        events.append(final)

    def _words(self, *, with_confidence: bool) -> tuple[Word, ...]:
        words: list[Word] = []
        for seg in self._decoder().seg() or ():
            text = clean_word(seg.word)
            if text is None:
                continue
            # Word posteriors come from the bestpath pass at the end of an utterance.
            confidence = min(1.0, max(0.0, round(seg.prob, 3))) if with_confidence else None
            words.append(
                Word(
                    text=text,
                    start_ms=self._ms(self._utt_start) + seg.start_frame * DECODER_FRAME_MS,
                    end_ms=self._ms(self._utt_start) + (seg.end_frame + 1) * DECODER_FRAME_MS,
                    confidence=confidence,
                )
            )
        return tuple(words)

    def _decoder(self) -> Decoder:
        if self.decoder is None:
            raise EngineError("the stream's decoder was released", retryable=False)
        return self.decoder

    @staticmethod
    def _ms(samples: int) -> int:
        return samples * 1000 // SAMPLE_RATE
