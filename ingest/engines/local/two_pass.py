"""One stream's two-pass recognition: pocketsphinx partials, a Whisper final per utterance.

Per stream: client PCM -> `PcmConverter` (16 kHz mono) -> 30 ms frames -> voice detector and
`EnergyGate` -> `Segmenter`. While an utterance is open its frames go to pocketsphinx for
partials (English streams only: it has no other model); when it ends (a pause, a long-monologue
cut, `finalize`, `close`), its audio is decoded once by Whisper and that text is the final,
replacing the partials. A decoding Whisper itself marks as no speech or repetition, or an
utterance with too little speech, gives no final (or an empty one that closes a partial).
"""

from __future__ import annotations

from pocketsphinx import Decoder, Vad

from ingest.audio import DcBlocker, PcmConverter, frame_dbfs
from ingest.engines.base import EngineError, EngineEvent, StreamConfig, Word
from ingest.engines.local.language_check import NOT_ENGLISH, EnglishCheck
from ingest.engines.local.recognizer import (
    DECODER_FRAME_MS,
    EN_US_CMNINIT,
    SAMPLE_RATE,
    VAD_FRAME_S,
    Tuning,
    clean_word,
    reusable_decoder,
)
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
    MAX_WINDOW_S,
    WINDOW_PAD_S,
    WhisperFinals,
    base_language,
    keep,
    unlooped,
)

MIN_SPEECH_SPREAD_DB = 3.0


def partials_decoder() -> Decoder:
    """pocketsphinx tuned for partials only: a narrower search (`pl_window`, `maxhmmpf`) cut
    its cost from 0.42 to 0.18 CPU-s per audio second with similar partials."""
    return Decoder(
        samprate=SAMPLE_RATE,
        loglevel="FATAL",
        cmninit=EN_US_CMNINIT,
        fwdflat=False,
        pl_window=10,
        maxhmmpf=1500,
    )


# Whisper's window is 30 s and the decode wants WINDOW_PAD_S of room after the audio.
MAX_UTTERANCE_MS = int((MAX_WINDOW_S - WINDOW_PAD_S) * 1000)


def segmentation_for(tuning: Tuning) -> Segmentation:
    return Segmentation(
        start_ms=tuning.start_ms,
        preroll_ms=tuning.preroll_ms,
        silence_ms=tuning.silence_ms,
        max_utterance_ms=min(tuning.max_utterance_ms, MAX_UTTERANCE_MS),
    )


class TwoPassRecognizer:
    """The `Recognizer` interface (feed/finalize/close/release), with Whisper finals."""

    def __init__(
        self, decoder: Decoder, config: StreamConfig, tuning: Tuning, finals: WhisperFinals
    ) -> None:
        self.decoder: Decoder | None = decoder
        self._finals = finals
        self._language = config.language
        code = base_language(config.language)
        self._partials = code == "en" or (code == "auto" and finals.english_only)
        # `auto` on an English-only model: say so when the speech does not sound English.
        self._english_check = EnglishCheck() if code == "auto" and finals.english_only else None
        self._tuning = tuning
        self._converter = PcmConverter(config.sample_rate, config.channels, SAMPLE_RATE)
        self._dc = DcBlocker(SAMPLE_RATE)  # an offset would read as loudness to the gate
        self._vad = Vad(tuning.vad_mode, SAMPLE_RATE, VAD_FRAME_S)
        self._gate = EnergyGate()
        self._segmenter = Segmenter(segmentation_for(tuning))
        self._frame_bytes: int = self._vad.frame_bytes
        self._pending = bytearray()
        self._decoding = False  # pocketsphinx is inside an utterance
        self._utt_start = 0
        self._utt_samples = 0
        self._since_partial = 0
        self._last_partial: EngineEvent | None = None
        self._levels: list[float] = []  # frame levels of the utterance after its start decision
        decoder.reinit_feat()  # a pooled decoder must not carry its last stream's estimates

    def feed(self, pcm: bytes) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        self._pending += self._dc.remove(self._converter.convert(pcm))
        self._consume_frames(events)
        return events

    def finalize(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        if self._segmenter.in_utterance:
            tail = bytes(self._pending)
            self._pending.clear()
            self._ps_feed(tail)
            utterance = self._segmenter.flush(tail)
            if utterance is not None:
                self._on_end(utterance, events)
        return events

    def close(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        self._pending += self._dc.remove(self._converter.flush())
        self._consume_frames(events)
        events.extend(self.finalize())
        return events

    def release(self) -> Decoder | None:
        decoder, self.decoder = self.decoder, None
        decoding, self._decoding = self._decoding, False
        return reusable_decoder(decoder, decoding)

    # -- internals ------------------------------------------------------------------------------

    def _consume_frames(self, events: list[EngineEvent]) -> None:
        size = self._frame_bytes
        whole = len(self._pending) - len(self._pending) % size
        for offset in range(0, whole, size):
            frame = bytes(self._pending[offset : offset + size])
            level = frame_dbfs(frame)
            loud = self._gate.is_loud(level, continuing=self._segmenter.in_utterance)
            speech = loud and self._vad.is_speech(frame)
            for change in self._segmenter.push(frame, speech, level):
                match change:
                    case Started(frames, start):
                        self._on_start(frames, start)
                    case Extended(frame, level):
                        self._levels.append(level)
                        self._on_frame(frame, events)
                    case Ended(utterance):
                        self._on_end(utterance, events)
        del self._pending[:whole]

    def _on_start(self, frames: tuple[bytes, ...], start_sample: int) -> None:
        self._utt_start = start_sample
        self._levels.clear()
        self._utt_samples = 0
        self._since_partial = 0
        if self._partials:
            self._decoder().start_utt()
            self._decoding = True
        for frame in frames:
            self._ps_feed(frame)

    def _on_frame(self, frame: bytes, events: list[EngineEvent]) -> None:
        self._ps_feed(frame)
        if self._since_partial * 1000 >= self._tuning.partial_interval_ms * SAMPLE_RATE:
            self._since_partial = 0
            self._maybe_partial(events)

    def _ps_feed(self, pcm: bytes) -> None:
        samples = len(pcm) // 2
        self._utt_samples += samples
        self._since_partial += samples
        if self._decoding and pcm:
            self._decoder().process_raw(pcm, False, False)

    def _maybe_partial(self, events: list[EngineEvent]) -> None:
        # A sound that starts loud and stays level (a fan, a hiss) passes the energy gate for
        # a moment; speech rises and falls. No partial until the level has moved like speech,
        # since a partial shown on noise would stay on viewers' screens.
        if not self._decoding or level_spread(self._levels) < MIN_SPEECH_SPREAD_DB:
            return
        words = self._words()
        text = " ".join(w.text for w in words)
        if not text or (self._last_partial is not None and self._last_partial.text == text):
            return
        partial = EngineEvent(
            is_final=False,
            text=text,
            start_ms=words[0].start_ms,
            end_ms=_ms(self._utt_start + self._utt_samples),
            words=words,
        )
        self._last_partial = partial
        events.append(partial)

    def _on_end(self, utterance: Utterance, events: list[EngineEvent]) -> None:
        if self._decoding:
            self._decoding = False
            self._decoder().end_utt()
        last_partial, self._last_partial = self._last_partial, None
        start_ms = _ms(utterance.start_sample)
        end_ms = _ms(utterance.speech_end_sample)
        text = ""
        confidence = None
        thresholds = self._finals.spec.thresholds
        if utterance.speech_ms >= thresholds.min_speech_ms:
            voiced_end_s = (utterance.speech_end_sample - utterance.start_sample) / SAMPLE_RATE
            decoded = self._finals.decode(utterance.pcm, self._language, voiced_end_s)
            # Judged whole (a loop over noise is dropped), then its repeats kept once.
            if keep(decoded, utterance.speech_ms, thresholds, sure_waiver=True):
                audio_s = len(utterance.pcm) / 2 / SAMPLE_RATE
                decoded = unlooped(decoded, utterance.speech_ms, thresholds, audio_s)
                text, confidence = decoded.text, decoded.confidence
            check = self._english_check
            if check is not None and check.observe(decoded.avg_logprob, utterance.speech_ms):
                events.append(EngineEvent(False, "", start_ms, end_ms, notice=NOT_ENGLISH))
        if text:
            events.append(
                EngineEvent(
                    is_final=True,
                    text=text,
                    start_ms=start_ms,
                    end_ms=max(start_ms + 1, end_ms),
                    confidence=confidence,
                )
            )
        elif last_partial is not None:
            # Whisper heard no speech where pocketsphinx guessed words: an empty final tells
            # the gateway the utterance is over (it closes the viewers' partial).
            events.append(
                EngineEvent(is_final=True, text="", start_ms=last_partial.start_ms, end_ms=end_ms)
            )

    def _words(self) -> tuple[Word, ...]:
        words: list[Word] = []
        base = _ms(self._utt_start)
        for seg in self._decoder().seg() or ():
            text = clean_word(seg.word)
            if text is not None:
                words.append(
                    Word(
                        text=text,
                        start_ms=base + seg.start_frame * DECODER_FRAME_MS,
                        end_ms=base + (seg.end_frame + 1) * DECODER_FRAME_MS,
                    )
                )
        return tuple(words)

    def _decoder(self) -> Decoder:
        if self.decoder is None:
            raise EngineError("the stream's decoder was released", retryable=False)
        return self.decoder


def _ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE
