"""The embedded engine: pocketsphinx (US English), run on worker threads.

Per stream: client PCM -> `PcmConverter` (16 kHz mono) -> 30 ms frames -> pocketsphinx `Vad` ->
utterance splitting -> `Decoder`. Only audio inside an utterance is decoded, so silence costs
next to nothing. An utterance ends after `silence_ms` of (mostly) non-speech, on `finalize()`,
or after `max_utterance_ms`; each ends in one final with word timings.

Threading, measured with pocketsphinx 5.1.1 on CPython 3.11 (2-core VM):
- `Decoder.process_raw`, `end_utt` and `Decoder()` hold the GIL for their whole duration (a
  spinning Python thread got 2 ticks during one 2.3 s `process_raw` call).
- So the decoder is fed one 30 ms frame per call (about 4 ms of CPU, 20 ms worst case): between
  calls the interpreter can hand the GIL to the event loop.
- Worker threads cannot decode in parallel, and extra ones only fight over the GIL: three
  streams fed concurrently took 3.5 s with 4 workers (event-loop lag p99 82 ms) and 2.6 s with
  one (p99 18 ms). Hence a single worker thread by default, shared by all streams; each stream
  submits one batch (at most `batch_s` of audio) at a time, so streams take turns.
- CPU: about 0.18 s per second of speech per stream (VAD alone on silence: 0.0002), so one
  process serves roughly five people talking at once. Scale out with processes, not threads.
- The second-pass `fwdflat` search is off: it runs inside `end_utt`, holding the GIL for about
  200 ms per 3.5 s utterance (6 ms without it), and grows with utterance length. Cost: WER
  7.9% instead of 7.1% over 18 two-sentence flite clips in 3 voices.
- `Decoder()` holds the GIL for ~0.35 s and takes ~90 MB, so decoders are pooled and reused;
  `warm_up()` creates them before the first streams need them.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import re
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from pocketsphinx import Decoder, Vad

from ingest.audio import PcmConverter
from ingest.engine import Engine, EngineError, EngineEvent, EngineStream, StreamConfig, Word

T = TypeVar("T")

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

# Decoding holds the GIL, so one process serves about 1 / 0.18 streams of continuous speech
# whatever the core count; in meetings most streams are silent most of the time.
DEFAULT_MAX_STREAMS = 8

_ALTERNATE_PRONUNCIATION = re.compile(r"\(\d+\)$")


def default_decoder() -> Decoder:
    return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", cmninit=EN_US_CMNINIT, fwdflat=False)


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


class _Recognizer:
    """One stream's synchronous recognition state. Methods run on a worker thread, one at a time
    (the stream's pump awaits each call); `aborted` may be set from the event loop at any time."""

    def __init__(self, decoder: Decoder, config: StreamConfig, tuning: Tuning) -> None:
        self.decoder: Decoder | None = decoder
        self.aborted = False
        self._lock = threading.Lock()  # held during every call; release() waits on it
        self._tuning = tuning
        self._converter = PcmConverter(config.sample_rate, config.channels, SAMPLE_RATE)
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

    # -- worker-thread entry points -------------------------------------------------------------

    def feed(self, pcm: bytes) -> list[EngineEvent]:
        with self._lock:
            events: list[EngineEvent] = []
            self._pending += self._converter.convert(pcm)
            self._consume_frames(events)
            return events

    def finalize(self) -> list[EngineEvent]:
        with self._lock:
            events: list[EngineEvent] = []
            if self._in_utterance:
                self._decode_pending()
                self._end_utterance(events)
            return events

    def close(self) -> list[EngineEvent]:
        with self._lock:
            events: list[EngineEvent] = []
            self._pending += self._converter.flush()
            self._consume_frames(events)
            if self._in_utterance:
                self._decode_pending()
                self._end_utterance(events)
            return events

    def release(self) -> Decoder | None:
        """Detach the decoder, reset for reuse; None if it is no longer trustworthy."""
        with self._lock:
            decoder, self.decoder = self.decoder, None
            if decoder is not None and self._in_utterance:
                self._in_utterance = False
                try:
                    decoder.end_utt()
                except Exception:
                    return None
            return decoder

    # -- internals ------------------------------------------------------------------------------

    def _consume_frames(self, events: list[EngineEvent]) -> None:
        size = self._frame_bytes
        whole = len(self._pending) - len(self._pending) % size
        view = memoryview(self._pending)
        try:
            for offset in range(0, whole, size):
                if self.aborted:
                    break
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
        for frame in frames:  # frame by frame: each call holds the GIL (see module docstring)
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


class _Op(enum.Enum):
    FINALIZE = "finalize"
    CLOSE = "close"


_END = None  # marks the end of the event queue


class LocalEngineStream(EngineStream):
    """Feeds a `_Recognizer` from the event loop, one worker call at a time, in order.

    `send` only queues audio; it waits (never blocks) while more than `max_backlog_s` seconds
    of audio are queued, which pushes back on a client the machine cannot keep up with.
    `events()` has a single consumer. After a failure, `events()` raises the `EngineError`
    and `send`/`finalize` raise it too.
    """

    def __init__(
        self,
        engine: LocalEngine,
        recognizer: _Recognizer,
        config: StreamConfig,
        *,
        max_backlog_s: float,
        batch_s: float,
    ) -> None:
        self._engine = engine
        self._recognizer = recognizer
        bytes_per_s = config.sample_rate * config.channels * 2
        self._max_backlog = int(bytes_per_s * max_backlog_s)
        self._batch_bytes = max(1, int(bytes_per_s * batch_s))
        self._inbox: deque[bytes | _Op] = deque()
        self._backlog = 0
        self._has_input = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._events: asyncio.Queue[EngineEvent | EngineError | None] = asyncio.Queue()
        self._error: EngineError | None = None
        self._closing = False
        self._task = asyncio.create_task(self._pump(), name="local-engine-stream")

    async def send(self, pcm: bytes) -> None:
        self._check_usable()
        while self._backlog >= self._max_backlog and not self._task.done():
            self._has_room.clear()
            await self._has_room.wait()
        self._check_usable()
        if pcm:
            self._put(bytes(pcm))

    async def finalize(self) -> None:
        self._check_usable()
        self._put(_Op.FINALIZE)

    async def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._put(_Op.CLOSE)
        await asyncio.wait({self._task})  # every final is queued for events() after this

    async def abort(self) -> None:
        self._closing = True
        self._recognizer.aborted = True  # the worker stops at its next frame
        self._task.cancel()
        await asyncio.wait({self._task})

    async def events(self) -> AsyncIterator[EngineEvent]:
        while True:
            item = await self._events.get()
            if item is _END:
                self._events.put_nowait(_END)  # a later call ends at once too
                return
            if isinstance(item, EngineError):
                raise item
            yield item

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise EngineError("the stream is closed", retryable=False)

    def _put(self, item: bytes | _Op) -> None:
        self._inbox.append(item)
        if isinstance(item, bytes):
            self._backlog += len(item)
        self._has_input.set()

    async def _next(self) -> bytes | _Op:
        """The next control op, or queued audio coalesced up to one batch."""
        while not self._inbox:
            self._has_input.clear()
            await self._has_input.wait()
        first = self._inbox.popleft()
        if isinstance(first, _Op):
            return first
        chunks = [first]
        size = len(first)
        while self._inbox and isinstance(self._inbox[0], bytes) and size < self._batch_bytes:
            chunk = self._inbox.popleft()
            assert isinstance(chunk, bytes)
            chunks.append(chunk)
            size += len(chunk)
        self._backlog -= size
        if self._backlog < self._max_backlog:
            self._has_room.set()
        return b"".join(chunks)

    async def _pump(self) -> None:
        recognizer = self._recognizer
        failed = False
        try:
            while True:
                item = await self._next()
                if item is _Op.CLOSE:
                    self._emit(await self._engine._run(recognizer.close))
                    return
                if item is _Op.FINALIZE:
                    self._emit(await self._engine._run(recognizer.finalize))
                else:
                    assert isinstance(item, bytes)
                    self._emit(await self._engine._run(functools.partial(recognizer.feed, item)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failed = True
            if isinstance(exc, EngineError):
                error = exc
            else:
                error = EngineError(f"local engine failed: {exc!r}")
                error.__cause__ = exc
            self._error = error
            self._events.put_nowait(error)
        finally:
            self._closing = True
            self._events.put_nowait(_END)
            self._has_room.set()  # wake a send() waiting for room
            self._inbox.clear()
            self._engine._release(recognizer, reusable=not failed)

    def _emit(self, events: list[EngineEvent]) -> None:
        for event in events:
            self._events.put_nowait(event)


class LocalEngine(Engine):
    """pocketsphinx on a shared thread pool; `max_streams` caps concurrent streams (each holds
    a ~90 MB decoder and ~0.18 of a core while someone speaks): past it, `open` raises a
    retryable `EngineError` so the gateway can fall back to the next engine."""

    name = "local"

    def __init__(
        self,
        *,
        max_streams: int | None = None,
        workers: int = 1,
        idle_decoders: int = 2,
        tuning: Tuning | None = None,
        max_backlog_s: float = 5.0,
        batch_s: float = 0.5,
        decoder_factory: Callable[[], Decoder] = default_decoder,
    ) -> None:
        self.max_streams = max_streams if max_streams is not None else DEFAULT_MAX_STREAMS
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="local-asr")
        self._idle: list[Decoder] = []
        self._idle_max = idle_decoders
        self._idle_lock = threading.Lock()
        self._tuning = tuning or Tuning()
        self._max_backlog_s = max_backlog_s
        self._batch_s = batch_s
        self._decoder_factory = decoder_factory
        self._active = 0
        self._closed = False

    def supported_languages(self) -> frozenset[str]:
        return LANGUAGES

    def supports(self, language: str) -> bool:
        return language.lower() in LANGUAGES

    @property
    def active_streams(self) -> int:
        return self._active

    async def warm_up(self, decoders: int = 1) -> None:
        """Create idle decoders ahead of the first streams (each blocks the GIL ~0.35 s)."""
        for _ in range(min(decoders, self._idle_max)):
            decoder = await self._run(self._decoder_factory)
            self._park(decoder)

    async def open(self, config: StreamConfig) -> LocalEngineStream:
        if self._closed:
            raise EngineError("the local engine is shut down", retryable=False)
        if not self.supports(config.language):
            raise EngineError(
                f"the local engine does not support language {config.language!r} "
                f"(supported: {', '.join(sorted(LANGUAGES))})",
                retryable=False,
            )
        if config.channels < 1 or not 8000 <= config.sample_rate <= 48000:
            raise EngineError(
                f"unsupported audio format: {config.sample_rate} Hz, {config.channels} channels",
                retryable=False,
            )
        if self._active >= self.max_streams:
            raise EngineError(f"the local engine is at capacity ({self.max_streams} streams)")
        self._active += 1
        try:
            decoder = await self._run(self._take_decoder)
            recognizer = _Recognizer(decoder, config, self._tuning)
        except BaseException as exc:  # cancellation included: the slot must be given back
            self._active -= 1
            if not isinstance(exc, Exception) or isinstance(exc, EngineError):
                raise
            raise EngineError(f"the local engine could not start: {exc}") from exc
        return LocalEngineStream(
            self, recognizer, config, max_backlog_s=self._max_backlog_s, batch_s=self._batch_s
        )

    async def aclose(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._idle_lock:
            self._idle.clear()

    # -- for LocalEngineStream ---------------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _release(self, recognizer: _Recognizer, *, reusable: bool) -> None:
        """Called on the event loop when a stream ends. Its decoder goes back to the pool unless
        the stream failed (its state is then unknown); after an abort the worker may still be
        inside a call, so the hand-back runs on the pool, behind the recognizer's lock."""
        self._active -= 1
        if not reusable:
            recognizer.decoder = None
            return

        def hand_back() -> None:
            decoder = recognizer.release()
            if decoder is not None:
                self._park(decoder)

        try:
            self._executor.submit(hand_back)
        except RuntimeError:  # the executor is shut down: nothing to reuse
            pass

    def _take_decoder(self) -> Decoder:
        with self._idle_lock:
            if self._idle:
                return self._idle.pop()
        return self._decoder_factory()

    def _park(self, decoder: Decoder) -> None:
        with self._idle_lock:
            if len(self._idle) < self._idle_max and not self._closed:
                self._idle.append(decoder)
