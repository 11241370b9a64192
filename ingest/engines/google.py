"""Google Cloud Speech v1 streaming (`Speech/StreamingRecognize`) via `google-cloud-speech`.

One ingest stream is a sequence of gRPC streams ("calls"), because Google ends a stream after
about 305 s of audio. A call is half-closed (Google then returns the finals of all it heard)
once it has carried `rotate_s` of audio and a final has just arrived, or unconditionally at
`rotate_s * FORCE_FACTOR`; `finalize` half-closes too. The next call starts with the audio after
the last final (kept in a `ReplayBuffer`), and its times are offset so they keep increasing.
`OUT_OF_RANGE` (stream limit, audio timeout) and the spurious `INTERNAL` a grpc.aio client may see
when the server ends a call it is writing to (grpc/grpc#36066) also just start the next call.
A paused stream holds no call: the next one starts when audio arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.api_core import exceptions as google_errors
from google.cloud.speech_v1 import SpeechAsyncClient
from google.cloud.speech_v1.services.speech.transports import SpeechGrpcAsyncIOTransport
from google.cloud.speech_v1.types import cloud_speech

from ingest.audio import frame_dbfs
from ingest.engines.base import (
    Engine,
    EngineError,
    EngineEvent,
    EngineStream,
    StreamConfig,
    Word,
    queued_events,
)
from ingest.engines.replay import ReplayBuffer
from ingest.engines.reporter import EngineReporter, NoEngineReporter
from ingest.engines.turns import split_by_speaker
from shared.tasks import cancel_and_wait

MAX_REQUEST_BYTES = 15_000  # audio per request: well under Google's 25 KB per message
MAX_CUTOFFS_WITHOUT_FINAL = 3
REPLAY_MAX_S = 60.0  # audio kept for the next call: the backlog of a stall, at most
FORCE_FACTOR = 1.125  # 240 s -> rotated by 270 s at the latest, below the ~305 s limit

# Google wants a region; a bare language gets its most common one.
REGIONS = {
    "ar": "ar-SA", "da": "da-DK", "de": "de-DE", "en": "en-US", "es": "es-ES", "fi": "fi-FI",
    "fr": "fr-FR", "hi": "hi-IN", "it": "it-IT", "ja": "ja-JP", "ko": "ko-KR", "nl": "nl-NL",
    "no": "nb-NO", "pl": "pl-PL", "pt": "pt-BR", "ru": "ru-RU", "sv": "sv-SE", "tr": "tr-TR",
    "uk": "uk-UA", "zh": "cmn-Hans-CN",
}  # fmt: skip


def google_language(language: str) -> str:
    """`en` -> `en-US`, `tr` -> `tr-TR`; `en-gb` -> `en-GB`."""
    base, _, region = language.partition("-")
    if not region:
        return REGIONS.get(base, base)
    return f"{base}-{region.upper()}" if len(region) == 2 else language


def grpc_error(exc: google_errors.GoogleAPICallError) -> EngineError:
    code = exc.grpc_status_code
    name = code.name if code is not None else type(exc).__name__
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return EngineError(f"google rejected the credentials ({name})", retryable=False,
                           reason="auth")  # fmt: skip
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return EngineError("google rejected the request (INVALID_ARGUMENT)", retryable=False,
                           reason="bad_request")  # fmt: skip
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return EngineError("google is rate limiting (RESOURCE_EXHAUSTED)", reason="rate_limited")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return EngineError("google timed out (DEADLINE_EXCEEDED)", reason="timeout")
    return EngineError(f"google stream failed ({name})", reason="server_error")


def speech_client(
    endpoint: str | None, insecure: bool
) -> tuple[SpeechAsyncClient, grpc.aio.Channel]:
    """A Speech client and its channel, as GCP_SPEECH_ENDPOINT / GCP_SPEECH_INSECURE say; build
    it on first use (grpc.aio channels belong to the running event loop). EngineError if no
    client can be made (no credentials found, an unreadable key file, a bad setting)."""
    try:
        if insecure:
            if not endpoint:
                raise EngineError("GCP_SPEECH_INSECURE needs GCP_SPEECH_ENDPOINT",
                                  retryable=False, reason="config")  # fmt: skip
            channel = grpc.aio.insecure_channel(endpoint)
            return SpeechAsyncClient(transport=SpeechGrpcAsyncIOTransport(channel=channel)), channel
        if endpoint:
            client = SpeechAsyncClient(client_options={"api_endpoint": endpoint})
        else:
            client = SpeechAsyncClient()
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"google client unavailable ({type(exc).__name__})",
                          retryable=False, reason="auth") from None  # fmt: skip
    return client, client.transport.grpc_channel


def _is_rotation(exc: google_errors.GoogleAPICallError) -> bool:
    return exc.grpc_status_code in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.INTERNAL)


@dataclass(frozen=True)
class GoogleOptions:
    model: str = "latest_long"
    endpoint: str | None = None  # host:port; None: Google's default
    insecure: bool = False  # plaintext channel (emulators, tests)
    rotate_s: float = 240.0
    diarize: bool = True
    max_speakers: int = 6
    connect_timeout_s: float = 5.0
    # A half-closed call (finalize, close, rotation) must answer within this, and again within
    # it after each answer, until it ends: Google answers the end of the audio with its last
    # finals at once. Past it the stream fails (the chain replays its audio elsewhere) rather
    # than waiting out the call's own deadline.
    end_timeout_s: float = 10.0


class GoogleEngine(Engine):
    name = "google"

    def __init__(
        self, options: GoogleOptions | None = None, reporter: EngineReporter | None = None
    ) -> None:
        self.options = options or GoogleOptions()
        self.reporter = reporter or NoEngineReporter()
        self._client: SpeechAsyncClient | None = None
        self._channel: grpc.aio.Channel | None = None

    def supported_languages(self) -> frozenset[str]:
        return frozenset(REGIONS)

    def supports(self, language: str) -> bool:
        return language.split("-")[0] in REGIONS

    def _client_now(self) -> SpeechAsyncClient:
        """Built on first use: grpc.aio channels belong to the running event loop."""
        if self._client is None:
            options = self.options
            self._client, self._channel = speech_client(options.endpoint, options.insecure)
        return self._client

    async def open(self, config: StreamConfig) -> GoogleStream:
        client = self._client_now()
        assert self._channel is not None
        try:
            async with asyncio.timeout(self.options.connect_timeout_s):
                await self._channel.channel_ready()
        except TimeoutError:
            raise EngineError("google endpoint unreachable", reason="connect") from None
        return GoogleStream(client, config, self.options, self.reporter)

    async def aclose(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()
        self._client = self._channel = None

    def streaming_config(self, config: StreamConfig) -> cloud_speech.StreamingRecognitionConfig:
        return streaming_config(config, self.options)


def streaming_config(
    config: StreamConfig, options: GoogleOptions
) -> cloud_speech.StreamingRecognitionConfig:
    recognition = cloud_speech.RecognitionConfig(
        encoding=cloud_speech.RecognitionConfig.AudioEncoding.LINEAR16,
        sample_rate_hertz=config.sample_rate,
        audio_channel_count=config.channels,
        language_code=google_language(config.language),
        enable_automatic_punctuation=True,
        enable_word_time_offsets=True,
        enable_word_confidence=True,
        model=options.model,
    )
    if config.channels > 1:
        # Each channel (a side of a call, a second microphone) is recognized on its own and its
        # results carry `channel_tag`: without this Google transcribes channel 1 only.
        recognition.enable_separate_recognition_per_channel = True
    elif options.diarize:
        recognition.diarization_config = cloud_speech.SpeakerDiarizationConfig(
            enable_speaker_diarization=True,
            min_speaker_count=1,
            max_speaker_count=options.max_speakers,
        )
    return cloud_speech.StreamingRecognitionConfig(
        config=recognition, interim_results=True, single_utterance=False
    )


QUIET_MS = 20
QUIET_DBFS = 20 * math.log10(300 / 32768)  # RMS 300 of 16-bit samples: a pause, room noise


def is_quiet(pcm: bytes) -> bool:
    """Whether a piece of PCM is a pause (low energy)."""
    return frame_dbfs(pcm) < QUIET_DBFS


def quiet_point(pcm: bytes, frame: int, window: int, start: int = 0) -> int | None:
    """The middle of the latest quiet `window` in `pcm[start:]` (a byte offset into `pcm`, on a
    sample frame), or None when there is no pause in it."""
    window = max(frame, window // frame * frame)
    step = max(frame, window // 2 // frame * frame)
    position = (len(pcm) - window) // frame * frame
    while position >= start:
        if is_quiet(pcm[position : position + window]):
            return position + window // 2 // frame * frame
        position -= step
    return None


def quiet_cut(audio: bytes, limit: int, frame: int, window: int) -> int:
    """Where to cut `audio` at or before `limit` bytes: in the latest pause in the last quarter
    before it, else at `limit` itself. Always a whole number of sample frames."""
    end = limit // frame * frame
    point = quiet_point(audio[:end], frame, window, start=end * 3 // 4)
    return end if point is None else point


def _ms(value: datetime.timedelta | None) -> int:
    return 0 if value is None else max(0, round(value.total_seconds() * 1000))


class GoogleStream(EngineStream):
    def __init__(
        self,
        client: SpeechAsyncClient,
        config: StreamConfig,
        options: GoogleOptions,
        reporter: EngineReporter,
    ) -> None:
        self._client = client
        self._config = config
        self._options = options
        self._reporter = reporter
        self._streaming_config = streaming_config(config, options)
        bytes_per_s = config.sample_rate * config.channels * 2
        self._bytes_per_ms = bytes_per_s / 1000
        # What the current call has not finalized, and any backlog no call has carried yet.
        self._replay = ReplayBuffer(config.sample_rate, config.channels, int(REPLAY_MAX_S * 1000))
        self._events: asyncio.Queue[EngineEvent | EngineError | None] = asyncio.Queue()
        self._queue: asyncio.Queue[bytes | None] | None = None  # the current call's audio
        self._call_bytes = 0  # audio carried by the current call
        self._base_ms = 0  # stream time where the current call's audio starts
        self._call_final_ms = 0  # end of the current call's last final, in call time
        # Per channel (stereo, recognized separately): end of its last final, in call time, and
        # the channels with words not yet final (their audio stays in the replay buffer).
        self._channel_final_ms: dict[int, int] = {}
        self._channel_pending: set[int] = set()
        self._half_closed = False
        self._fresh = False  # audio no call has carried yet
        self._flush_next = False  # finalize came before the call that carries the audio
        self._call_finals = 0  # finals of the current call
        self._cutoffs = 0  # calls in a row cut off without a final
        self._owed = False  # the last call ended before finalizing all it carried
        self._rotating = False  # the current call ends for a rotation (counted)
        self._closing = False
        self._call_deadline: asyncio.Timeout | None = None  # set while a call runs
        self._work = asyncio.Event()
        self._runner = asyncio.create_task(self._run(), name="google-stream")

    @property
    def _call_ms(self) -> float:
        return self._call_bytes / self._bytes_per_ms

    def offer(self, pcm: bytes) -> bool:
        if not pcm or self._runner.done():
            return False
        self._take(pcm)  # never waits: the call's requests are queued without bound
        return True

    async def send(self, pcm: bytes) -> None:
        if self._runner.done():
            raise EngineError("google stream has ended", reason="closed")
        if pcm:
            self._take(pcm)

    def _take(self, pcm: bytes) -> None:
        self._replay.append(pcm)
        rotate_ms = self._options.rotate_s * 1000
        if self._queue is not None and not self._half_closed:
            after_ms = self._call_ms + len(pcm) / self._bytes_per_ms
            if after_ms >= rotate_ms:
                # Past the rotation point and no final yet: rotate in a pause (a cut through a
                # word could make both calls hear half of it), or in any case before the limit.
                frame = 2 * self._config.channels
                cut = quiet_point(pcm, frame, int(self._bytes_per_ms * QUIET_MS))
                if cut is not None:
                    self._put_audio(pcm[:cut])  # the rest is replayed to the next call
                if cut is not None or after_ms > rotate_ms * FORCE_FACTOR:
                    self._rotating = True
                    self._half_close()
        if self._queue is not None and not self._half_closed:
            self._put_audio(pcm)
        else:
            self._fresh = True
            self._work.set()

    async def finalize(self) -> None:
        if self._runner.done():
            raise EngineError("google stream has ended", reason="closed")
        if self._queue is None:
            self._flush_next = self._fresh  # the next call carries it: flush that one
        self._half_close()

    async def close(self) -> None:
        self._closing = True
        self._half_close()
        self._work.set()
        await asyncio.wait({self._runner})

    async def abort(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await cancel_and_wait(self._runner)
        self._events.put_nowait(None)

    def events(self) -> AsyncIterator[EngineEvent]:
        return queued_events(self._events)

    def _put_audio(self, pcm: bytes) -> None:
        assert self._queue is not None
        for offset in range(0, len(pcm), MAX_REQUEST_BYTES):
            self._queue.put_nowait(pcm[offset : offset + MAX_REQUEST_BYTES])
        self._call_bytes += len(pcm)

    def _half_close(self) -> None:
        if self._queue is not None and not self._half_closed:
            self._half_closed = True
            self._queue.put_nowait(None)
            self._start_end_deadline()

    def _start_end_deadline(self, *, again: bool = False) -> None:
        """Half-closed, the call must answer within `end_timeout_s`; each answer (`again`)
        gives it that long once more, so a long backlog that is being answered never fails."""
        deadline = self._call_deadline
        if deadline is not None and self._half_closed and (again or deadline.when() is None):
            loop = asyncio.get_running_loop()
            deadline.reschedule(loop.time() + self._options.end_timeout_s)

    async def _run(self) -> None:
        try:
            while True:
                while not self._fresh and not self._closing:
                    self._work.clear()
                    await self._work.wait()
                if not self._fresh and not self._owed:
                    break  # closing, and every call has been heard out
                await self._one_call()
                if self._rotating:
                    self._reporter.engine_rotated("google")
            self._events.put_nowait(None)
        except EngineError as exc:
            self._events.put_nowait(exc)
        except Exception as exc:
            self._events.put_nowait(EngineError(f"google stream failed ({type(exc).__name__})"))

    async def _requests(
        self, queue: asyncio.Queue[bytes | None]
    ) -> AsyncIterator[cloud_speech.StreamingRecognizeRequest]:
        yield cloud_speech.StreamingRecognizeRequest(streaming_config=self._streaming_config)
        while (chunk := await queue.get()) is not None:
            yield cloud_speech.StreamingRecognizeRequest(audio_content=chunk)

    async def _one_call(self) -> None:
        """One gRPC stream, from the replayed audio until it ends (half-closed or cut off)."""
        start_ms, audio = self._replay.pending()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._queue, self._half_closed = queue, False
        self._fresh = self._rotating = self._owed = False
        self._call_finals = 0
        self._call_bytes, self._base_ms, self._call_final_ms = 0, start_ms, 0
        self._channel_final_ms.clear()
        self._channel_pending.clear()
        # A backlog (a burst after a stall) may hold more than one call can carry.
        frame = 2 * self._config.channels
        room = int(self._options.rotate_s * 1000 * self._bytes_per_ms) // frame * frame
        if len(audio) > room:
            room = quiet_cut(audio, room, frame, int(self._bytes_per_ms * QUIET_MS))
        if audio:
            self._put_audio(audio[:room])
        if len(audio) > room:
            self._rotating = self._fresh = True
            self._half_close()
        if self._closing or self._flush_next:
            self._flush_next = False
            self._half_close()
        call = None
        try:
            async with asyncio.timeout(None) as deadline:
                self._call_deadline = deadline
                self._start_end_deadline()  # half-closed already (a close, a backlog)
                call = await self._client.streaming_recognize(
                    requests=self._requests(queue), retry=None, timeout=self._options.rotate_s * 4
                )
                async for response in call:
                    self._on_response(response)
                    self._start_end_deadline(again=True)
                self._call_deadline = None
            if self._half_closed:
                # Drained after a half-close: Google finalized everything this call carried.
                self._replay.release_until(self._base_ms + int(self._call_ms))
            else:
                self._owed = True  # Google ended it: its unfinalized tail goes to the next call
        except TimeoutError:
            if call is not None:
                call.cancel()  # the gRPC call ends now, not at its own deadline
            seconds = self._options.end_timeout_s
            message = f"google did not answer the end of its audio for {seconds:g} s"
            raise EngineError(message, reason="timeout") from None
        except google_errors.GoogleAPICallError as exc:
            if not _is_rotation(exc):
                raise grpc_error(exc) from None
            if "audio timeout" in str(exc.message).lower():
                # The client paused: the next call starts when audio comes (or at close, to
                # finalize the tail this one had not).
                self._owed = True
                return
            # Cut off at the stream limit: what it heard after its last final is owed to the
            # next call, unless calls keep ending with nothing final (no progress).
            self._cutoffs = 0 if self._call_finals else self._cutoffs + 1
            if self._cutoffs >= MAX_CUTOFFS_WITHOUT_FINAL:
                raise EngineError("google keeps ending the stream", reason="out_of_range") from None
            self._rotating = self._fresh = True
        finally:
            self._call_deadline = None
            self._half_close()
            self._queue = None

    def _on_response(self, response: cloud_speech.StreamingRecognizeResponse) -> None:
        if response.error and response.error.code:
            raise EngineError("google reported an error", reason="server_error")
        partial_texts: list[str] = []
        partial_end = 0
        for result in response.results:
            if not result.alternatives:
                continue
            best = result.alternatives[0]
            end = _ms(result.result_end_time)
            channel = result.channel_tag if self._config.channels > 1 else 0
            if result.is_final:
                self._final(best, end, channel)
            else:
                self._channel_pending.add(channel)
                partial_texts.append(best.transcript.strip())
                partial_end = max(partial_end, end)
        if partial_texts:
            base = self._base_ms
            start = base + self._settled_ms()
            text = " ".join(t for t in partial_texts if t)
            self._events.put_nowait(EngineEvent(False, text, start, max(start, base + partial_end)))

    def _settled_ms(self) -> int:
        """Call time up to which every channel's speech is final: the end of the last final,
        or earlier where a channel still has words in progress."""
        pending = [self._channel_final_ms.get(c, 0) for c in self._channel_pending]
        return min([self._call_final_ms, *pending])

    def _final(
        self, best: cloud_speech.SpeechRecognitionAlternative, end: int, channel: int = 0
    ) -> None:
        base = self._base_ms
        begin = self._channel_final_ms.get(channel, 0) if channel else self._call_final_ms
        if 0 < begin and end <= begin:
            return  # ends where the last final ended: that final again, nothing new
        # Stereo: each channel is labelled as its own speaker ("ch1", "ch2", ...).
        channel_speaker = f"ch{channel}" if channel else None
        words = tuple(
            Word(
                text=w.word,
                start_ms=base + _ms(w.start_time),
                end_ms=base + _ms(w.end_time),
                confidence=w.confidence or None,
                speaker=channel_speaker or (f"S{w.speaker_tag - 1}" if w.speaker_tag else None),
            )
            for w in best.words
            # With diarization Google may repeat earlier words in a final: keep this one's own.
            if _ms(w.start_time) >= begin
        )
        event = EngineEvent(
            True, best.transcript.strip(), base + begin, base + max(end, begin), words,
            channel_speaker, best.confidence or None,
        )  # fmt: skip
        for piece in split_by_speaker(event):
            self._events.put_nowait(piece)
        self._call_finals += 1
        self._channel_final_ms[channel] = max(end, begin)
        self._channel_pending.discard(channel)
        self._call_final_ms = max(self._call_final_ms, end, begin)
        self._replay.release_until(base + self._settled_ms())
        if self._call_ms >= self._options.rotate_s * 1000 and not self._half_closed:
            self._rotating = True
            self._half_close()  # a final boundary past the rotation point: rotate here
