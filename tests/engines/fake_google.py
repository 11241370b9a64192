"""A protocol-faithful Google Speech v1 fake: a `grpc.aio` server implementing
`google.cloud.speech.v1.Speech/StreamingRecognize` with the vendor's own message types.

The first request must carry only `streaming_config`, later ones only `audio_content` (at most
25 KB each), else INVALID_ARGUMENT. A stream that carries more than `limit_s` of audio is aborted
with OUT_OF_RANGE ("maximum allowed stream duration"), one without audio for `audio_timeout_s`
with OUT_OF_RANGE ("Audio Timeout"). Results come from the toy recognizer: interim results, finals
with words (`speaker_tag` from 1), `result_end_time`; a half-close flushes the last final.
`reject_code` aborts every stream with that status (e.g. UNAUTHENTICATED); `hang_at_end` never
ends a half-closed call, `repeat_finals` sends each final twice, `paced_answers_s` answers only
after the half-close, one answer per that many seconds. Multi-channel audio is
recognized from channel 1 only, unless `enable_separate_recognition_per_channel` asks for every
channel: then each result carries its `channel_tag` (1..N), as Google's do.
"""

from __future__ import annotations

import array
import asyncio
import datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from google.cloud.speech_v1.types import cloud_speech

from tests.engines.toy_asr import ToyRecognizer, ToyResult

MAX_REQUEST_BYTES = 25_600


@dataclass
class FakeCall:
    config: cloud_speech.StreamingRecognitionConfig
    audio_bytes: int = 0
    max_request_bytes: int = 0
    outcome: str = "open"  # "half-closed", "limit", "audio-timeout", "cancelled", "error"


@dataclass
class FakeGoogle:
    limit_s: float = 305.0
    audio_timeout_s: float = 10.0
    reject_code: grpc.StatusCode | None = None
    hang_at_end: bool = False  # never end a call the client half-closed (nor flush it)
    repeat_finals: bool = False  # send every final result twice, as a retrying frontend may
    paced_answers_s: float = 0.0  # hold every answer until the half-close, then one per this
    calls: list[FakeCall] = field(default_factory=list)
    port: int = 0
    _server: grpc.aio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeGoogle:
        self._server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(
            self._recognize,
            request_deserializer=cloud_speech.StreamingRecognizeRequest.deserialize,
            response_serializer=cloud_speech.StreamingRecognizeResponse.serialize,
        )
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "google.cloud.speech.v1.Speech", {"StreamingRecognize": handler}
                ),
            )
        )
        self.port = self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.5)

    async def _recognize(
        self,
        requests: AsyncIterator[cloud_speech.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[cloud_speech.StreamingRecognizeResponse]:
        first = await anext(requests)
        if self.reject_code is not None:
            # After the config has arrived: aborting while the client still writes it could
            # surface as a transport error (INTERNAL) instead of this status, a race of the
            # local HTTP/2 stack that made the auth test flaky under load.
            await context.abort(self.reject_code, "request had invalid authentication credentials")
        if "streaming_config" not in first or "audio_content" in first:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first request: config only")
        config = first.streaming_config
        call = FakeCall(config)
        self.calls.append(call)
        rate = config.config.sample_rate_hertz
        channels = config.config.audio_channel_count or 1
        recognizer: ToyRecognizer | ChannelRecognizers = ToyRecognizer(rate, channels)
        if channels > 1 and config.config.enable_separate_recognition_per_channel:
            recognizer = ChannelRecognizers(rate, channels)
        limit_bytes = int(self.limit_s * rate * channels * 2)
        held: list[cloud_speech.StreamingRecognizeResponse] = []
        try:
            while True:
                try:
                    request = await asyncio.wait_for(anext(requests), self.audio_timeout_s)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    call.outcome = "audio-timeout"
                    await context.abort(
                        grpc.StatusCode.OUT_OF_RANGE,
                        "Audio Timeout Error: Long duration elapsed without audio.",
                    )
                if "streaming_config" in request:
                    call.outcome = "error"
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "config sent twice")
                audio = request.audio_content
                call.max_request_bytes = max(call.max_request_bytes, len(audio))
                if len(audio) > MAX_REQUEST_BYTES:
                    call.outcome = "error"
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request too large")
                call.audio_bytes += len(audio)
                if call.audio_bytes > limit_bytes:
                    call.outcome = "limit"
                    await context.abort(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"Exceeded maximum allowed stream duration of {self.limit_s:g} seconds.",
                    )
                for result, channel in _tagged(recognizer.feed(audio)):
                    answer = _response(result, config.interim_results, channel)
                    if self.paced_answers_s:  # a backlog Google works through after the end
                        held.append(answer)
                        continue
                    yield answer
                    if self.repeat_finals and result.is_final:
                        yield answer
            if self.hang_at_end:
                call.outcome = "hung"
                await asyncio.Event().wait()
            for answer in held:
                await asyncio.sleep(self.paced_answers_s)
                yield answer
            for result, channel in _tagged(recognizer.flush(from_finalize=False)):
                yield _response(result, True, channel)
            call.outcome = "half-closed"
        except asyncio.CancelledError:
            call.outcome = "cancelled"
            raise


class ChannelRecognizers:
    """`enable_separate_recognition_per_channel`: one recognizer per channel, each result
    tagged with its channel (`channel_tag` 1..N). Without it Google, like the plain
    `ToyRecognizer`, recognizes the first channel only."""

    def __init__(self, rate: int, channels: int) -> None:
        self.channels = channels
        self.recognizers = [ToyRecognizer(rate, 1) for _ in range(channels)]
        self._rest = b""

    def feed(self, pcm: bytes) -> list[tuple[ToyResult, int]]:
        data = self._rest + pcm
        usable = len(data) - len(data) % (2 * self.channels)
        self._rest = data[usable:]
        samples = array.array("h", data[:usable])
        results = []
        for index, recognizer in enumerate(self.recognizers):
            mono = samples[index :: self.channels].tobytes()
            results.extend((r, index + 1) for r in recognizer.feed(mono))
        return results

    def flush(self, from_finalize: bool) -> list[tuple[ToyResult, int]]:
        results = []
        for index, recognizer in enumerate(self.recognizers):
            results.extend((r, index + 1) for r in recognizer.flush(from_finalize=from_finalize))
        return results


def _tagged(results: list) -> list[tuple[ToyResult, int]]:
    return [r if isinstance(r, tuple) else (r, 0) for r in results]


def _seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


def _response(
    result: ToyResult, interim: bool, channel: int = 0
) -> cloud_speech.StreamingRecognizeResponse:
    if not result.is_final and not interim:
        return cloud_speech.StreamingRecognizeResponse()
    words = [
        cloud_speech.WordInfo(
            word=w.text,
            start_time=_seconds(w.start_s),
            end_time=_seconds(w.end_s),
            confidence=0.9,
            speaker_tag=w.speaker + 1,
        )
        for w in result.words
    ]
    alternative = cloud_speech.SpeechRecognitionAlternative(
        transcript=result.transcript,
        confidence=0.9 if result.is_final else 0.0,
        words=words if result.is_final else [],
    )
    return cloud_speech.StreamingRecognizeResponse(
        results=[
            cloud_speech.StreamingRecognitionResult(
                alternatives=[alternative],
                is_final=result.is_final,
                stability=0.0 if result.is_final else 0.8,
                result_end_time=_seconds(result.end_s),
                channel_tag=channel,
            )
        ]
    )
