"""Deepgram's pre-recorded API (`POST /v1/listen`) for recordings, through the official SDK
(`listen.v1.media.transcribe_file`, deepgram-sdk 7.x).

The engine prefers the original file (`whole_file`): Deepgram decodes every common container
itself, so the upload is the user's file streamed from disk (never read whole into memory),
with `diarize`, `utterances`, `smart_format` and `punctuate`. `transcribe_chunk` sends one decoded
chunk as 16-bit WAV, for a chain that falls back to Deepgram mid-job. Each utterance becomes one
`FileSegment` (one per speaker turn, speakers `S0`, `S1`, ... as the live engine labels them).

Deepgram takes files up to 2 GB; a bigger one is refused before any upload (`too_large`, not
retryable: the runner can send chunks instead). 429 and 5xx are retried here with backoff,
honouring `Retry-After`; 400/401/402/403/413 are not. The SDK's own retries are off: a streamed
file can be sent only once per attempt, and the attempts are counted here. The API key lives
only in the SDK client; errors are rebuilt from status codes (the SDK's `ApiError` carries the
request headers), never chained.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment
from deepgram.types.listen_v1response import ListenV1Response

from ingest.engines.base import EngineError
from ingest.engines.deepgram import LANGUAGES, http_error
from ingest.files.base import AudioChunk, FileEngine, FileOptions, FileSegment
from ingest.files.encoding import wav_bytes
from ingest.files.retrying import RetryPolicy, ThrottledError, retry_after_s, with_retries

MAX_FILE_BYTES = 2_000_000_000  # Deepgram's limit for an uploaded file
UPLOAD_PIECE = 1 << 20  # bytes read from disk per piece of the streamed upload
UTTERANCE_GAP_S = 0.8  # Deepgram's own default `utt_split`, for responses without utterances


@dataclass(frozen=True)
class DeepgramFileOptions:
    model: str = "nova-3"
    language: str | None = None  # None: the job's language
    url: str | None = None  # base URL override (self-hosted, tests): http(s):// or ws(s)://
    keyterms: tuple[str, ...] = ()
    # Longest wait without progress (connect, each upload write, the answer after the upload):
    # Deepgram answers only once the whole file is transcribed.
    timeout_s: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_file_bytes: int = MAX_FILE_BYTES
    chunk_seconds: float = 300.0  # chunks sent when a chain falls back to Deepgram mid-job
    max_concurrency: int = 4  # chunks of one job in flight (Deepgram allows 100 requests)


def http_base(url: str) -> str:
    """DEEPGRAM_URL (as the live engine takes it, ws:// or http://) as the REST base URL."""
    base = url.rstrip("/")
    return base.replace("wss://", "https://", 1).replace("ws://", "http://", 1)


class DeepgramFileEngine(FileEngine):
    name = "deepgram"
    can_diarize = True
    whole_file = True

    def __init__(
        self,
        api_key: str,
        options: DeepgramFileOptions | None = None,
        on_retry: Callable[[EngineError, float], None] | None = None,
    ) -> None:
        self.options = options or DeepgramFileOptions()
        self.chunk_seconds = self.options.chunk_seconds
        self.max_concurrency = self.options.max_concurrency
        self._on_retry = on_retry  # e.g. a metrics counter: (error, wait in seconds)
        environment = DeepgramClientEnvironment.PRODUCTION
        if self.options.url:
            http = http_base(self.options.url)
            ws = http.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
            environment = DeepgramClientEnvironment(
                base=http, production=ws, agent=ws, agent_rest=http
            )
        self._client = AsyncDeepgramClient(
            api_key=api_key, environment=environment, timeout=self.options.timeout_s
        )

    def __repr__(self) -> str:  # the SDK client holds the key: never show it
        return f"DeepgramFileEngine(model={self.options.model!r})"

    def supported_languages(self) -> frozenset[str]:
        return LANGUAGES

    def supports(self, language: str) -> bool:
        return language.split("-")[0].lower() in LANGUAGES

    def query(self, options: FileOptions) -> dict[str, Any]:
        """The `/v1/listen` parameters for a job (also what the tests check on the wire)."""
        o = self.options
        params: dict[str, Any] = {
            "model": o.model,
            "punctuate": True,
            "smart_format": True,
            "utterances": True,
            "diarize": options.diarize,
        }
        language = o.language or options.language
        if language == "auto":
            params["detect_language"] = True  # pre-recorded detects the dominant language
        else:
            base, _, region = language.partition("-")
            params["language"] = f"{base}-{region.upper()}" if len(region) == 2 else language
        if o.keyterms:
            params["keyterm"] = list(o.keyterms)
        return params

    def accepts_file_bytes(self, size: int) -> bool:
        """Whether a file this big can go whole (else the runner sends chunks)."""
        return size <= self.options.max_file_bytes

    async def transcribe_file(self, path: Path, options: FileOptions) -> list[FileSegment]:
        path = Path(path)
        size = (await asyncio.to_thread(path.stat)).st_size
        if not self.accepts_file_bytes(size):
            raise EngineError(
                f"deepgram takes files up to {self.options.max_file_bytes} bytes "
                f"(this one has {size})",
                retryable=False,
                reason="too_large",
            )

        async def attempt() -> list[FileSegment]:
            response = await self._post(_read_pieces(path), options, length=size)
            return readable_segments(response, options.diarize)

        return await with_retries(attempt, self.options.retry, self._on_retry)

    async def transcribe_chunk(self, chunk: AudioChunk, options: FileOptions) -> list[FileSegment]:
        if chunk.silent or not len(chunk.samples):
            return []  # no speech: not worth a (billed) request
        body = wav_bytes(chunk.samples)

        async def attempt() -> list[FileSegment]:
            response = await self._post(body, options, length=len(body))
            return readable_segments(response, options.diarize, offset_ms=chunk.start_ms)

        return await with_retries(attempt, self.options.retry, self._on_retry)

    async def _post(
        self, body: bytes | AsyncIterator[bytes], options: FileOptions, length: int
    ) -> ListenV1Response:
        request_options: Any = {
            "max_retries": 0,  # retried here (a streamed body cannot be replayed by the SDK)
            "timeout": self.options.timeout_s,
            # A streamed body with its length: httpx sends Content-Length, not chunks.
            "additional_headers": {"Content-Length": str(length)},
        }
        try:
            response = await self._client.listen.v1.media.transcribe_file(
                request=body, request_options=request_options, **self.query(options)
            )
        except ApiError as exc:
            raise status_error(exc.status_code, exc.headers) from None
        except httpx.TimeoutException:
            raise EngineError("deepgram timed out", reason="timeout") from None
        except httpx.HTTPError as exc:
            message = f"deepgram request failed ({type(exc).__name__})"
            raise EngineError(message, reason="connect") from None
        finally:
            if not isinstance(body, bytes):
                with contextlib.suppress(Exception):
                    await body.aclose()  # type: ignore[attr-defined]
        if not isinstance(response, ListenV1Response):
            raise EngineError("deepgram answered without a transcript", reason="bad_response")
        return response

    async def aclose(self) -> None:
        wrapper = getattr(self._client, "_client_wrapper", None)
        http = getattr(getattr(wrapper, "httpx_client", None), "httpx_client", None)
        if isinstance(http, httpx.AsyncClient):
            await http.aclose()


async def _read_pieces(path: Path) -> AsyncIterator[bytes]:
    """The file in `UPLOAD_PIECE`s, read off the event loop."""
    with open(path, "rb") as f:  # noqa: ASYNC230 - every read goes to a thread below
        while piece := await asyncio.to_thread(f.read, UPLOAD_PIECE):
            yield piece


def status_error(status: int | None, headers: dict[str, str] | None = None) -> EngineError:
    """An `EngineError` for a pre-recorded API status (429 carries its `Retry-After`)."""
    if status == 402:
        return EngineError("deepgram refused: no credit left (HTTP 402)", retryable=False,
                           reason="quota")  # fmt: skip
    if status == 413:
        return EngineError("deepgram refused the file as too large (HTTP 413)", retryable=False,
                           reason="too_large")  # fmt: skip
    if status is not None and 200 <= status < 300:
        return EngineError("deepgram answered with an unreadable body", reason="bad_response")
    if status == 429 or (status is not None and status >= 500):
        error = http_error(status)
        return ThrottledError(str(error), reason=error.reason, retry_after_s=retry_after_s(headers))
    if status in (401, 403, 400):
        return http_error(status)
    if status is not None and 400 <= status < 500:
        return EngineError(f"deepgram rejected the request (HTTP {status})", retryable=False,
                           reason="bad_request")  # fmt: skip
    return EngineError(f"deepgram request failed (HTTP {status})", reason="server_error")


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(0, round(seconds * 1000))


def _speaker(value: int | None, diarize: bool) -> str | None:
    return None if value is None or not diarize else f"S{value}"


def _word_text(word: Any) -> str:
    return getattr(word, "punctuated_word", None) or word.word or ""


def _turns(words: Sequence[Any], diarize: bool) -> list[list[Any]]:
    turns: list[list[Any]] = []
    for word in words:
        if turns and _speaker(turns[-1][-1].speaker, diarize) == _speaker(word.speaker, diarize):
            turns[-1].append(word)
        else:
            turns.append([word])
    return turns


def _segment(words: Sequence[Any], diarize: bool, offset_ms: int, text: str | None = None,
             confidence: float | None = None) -> FileSegment:  # fmt: skip
    if confidence is None:
        scores = [w.confidence for w in words if w.confidence is not None]
        confidence = sum(scores) / len(scores) if scores else None
    return FileSegment(
        text=text if text is not None else " ".join(_word_text(w) for w in words),
        start_ms=offset_ms + _ms(words[0].start),
        # A word without times must not end the segment before it starts.
        end_ms=offset_ms + max(_ms(words[-1].end), _ms(words[0].start)),
        speaker=_speaker(words[0].speaker, diarize),
        confidence=confidence,
    )


def readable_segments(
    response: ListenV1Response, diarize: bool, offset_ms: int = 0
) -> list[FileSegment]:
    """`response_segments`, or a retryable `bad_response` for a 200 whose JSON lacks the
    transcript's shape (`{}`, `"results": null`): the SDK parses it into a response of Nones."""
    if response.results is None:
        raise EngineError("deepgram answered without results", reason="bad_response")
    try:
        return response_segments(response, diarize, offset_ms)
    except (AttributeError, TypeError, IndexError, ValueError) as exc:
        message = f"deepgram's answer has an unreadable transcript ({type(exc).__name__})"
        raise EngineError(message, reason="bad_response") from None


def response_segments(
    response: ListenV1Response, diarize: bool, offset_ms: int = 0
) -> list[FileSegment]:
    """One segment per utterance (split where its words change speaker), in audio order; from
    the words, split at pauses and speaker changes, when the response has no utterances."""
    segments: list[FileSegment] = []
    utterances = response.results.utterances
    if utterances is not None:
        for utterance in utterances:
            text = (utterance.transcript or "").strip()
            words = list(utterance.words or ())
            if not text:
                continue
            turns = _turns(words, diarize) if words else []
            if len(turns) > 1:
                segments.extend(_segment(turn, diarize, offset_ms) for turn in turns)
                continue
            segments.append(
                FileSegment(
                    text=text,
                    start_ms=offset_ms + _ms(utterance.start),
                    end_ms=offset_ms + _ms(utterance.end),
                    speaker=_speaker(utterance.speaker, diarize),
                    confidence=utterance.confidence,
                )
            )
    else:
        channels = response.results.channels
        alternatives = channels[0].alternatives if channels else None
        words = list((alternatives[0].words or ()) if alternatives else ())
        run: list[Any] = []
        for word in words:
            if run and (
                (word.start or 0) - (run[-1].end or 0) >= UTTERANCE_GAP_S
                or _speaker(word.speaker, diarize) != _speaker(run[-1].speaker, diarize)
            ):
                segments.append(_segment(run, diarize, offset_ms))
                run = []
            run.append(word)
        if run:
            segments.append(_segment(run, diarize, offset_ms))
    segments.sort(key=lambda s: (s.start_ms, s.end_ms))
    return segments
