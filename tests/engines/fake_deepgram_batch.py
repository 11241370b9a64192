"""A protocol-faithful fake of Deepgram's pre-recorded API: `POST /v1/listen` on localhost
(Starlette on uvicorn), for the official SDK's `listen.v1.media.transcribe_file`.

Checks `Authorization: Token <key>` (401 with Deepgram's error JSON otherwise), reads the body
(any audio PyAV decodes; 400 "failed to process audio" if it cannot), parses the query
(`model`, `language` or `detect_language`, `diarize`, `utterances`, `punctuate`,
`smart_format`, `utt_split`, `keyterm`, ...) and answers with the real response shape:
`metadata` (request_id, sha256, created, duration, channels, models, model_info) and `results`
with `channels[0].alternatives[0]` (transcript, confidence, words with `punctuated_word`, and
`speaker`/`speaker_confidence` only when diarizing) and `utterances` (only when asked).

"Recognition" is deterministic: the toy recognizer's tone words (`tests/engines/toy_asr.py`,
speakers encoded in the audio, utterances split at `utt_split` pauses); for real speech a
`TimedScript` (`tests/engines/batch_script.py`: a fixture's transcript, aligned to whatever
stretch of it was sent), or a list of sentences spread evenly over the audio's length (speakers
alternating by sentence). Knobs: `fail_with` answers the next requests with these
statuses (429 with `retry_after`), `answer_json` answers them 200 with these bodies, `delay_s`
holds every answer back (timeouts).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ingest.files.encoding import decode_s16
from tests.engines.batch_script import TimedScript
from tests.engines.toy_asr import ToyRecognizer, ToyWord
from tests.util import eventually

MODEL_UUID = "1ed36bac-f71c-4f3f-a31f-02fd6525c489"


@dataclass
class BatchRequest:
    """What one POST carried (the fake's record, for tests)."""

    query: dict[str, list[str]]
    headers: dict[str, str]
    body_bytes: int
    status: int = 0
    body_head: bytes = b""  # the first bytes (b"RIFF" for a WAV)


@dataclass
class FakeDeepgramBatch:
    api_key: str = "test-key"
    # Real speech: a TimedScript (aligned to the audio), or sentences spread over the audio.
    script: TimedScript | list[str] | None = None
    fail_with: list[int] = field(default_factory=list)  # statuses for the next requests
    retry_after: str | None = None  # the Retry-After header of a 429
    delay_s: float = 0.0
    answer_json: list[Any] = field(default_factory=list)  # 200 bodies for the next requests
    requests: list[BatchRequest] = field(default_factory=list)
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeDeepgramBatch:
        app = Starlette(routes=[Route("/v1/listen", self._listen, methods=["POST"])])
        self._server, self._task, self.port = await start_uvicorn(app)
        return self

    async def stop(self) -> None:
        await stop_uvicorn(self._server, self._task)

    async def _listen(self, request: Request) -> JSONResponse:
        query: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            query.setdefault(key, []).append(value)
        record = BatchRequest(query, {k.lower(): v for k, v in request.headers.items()}, 0)
        self.requests.append(record)
        response = await self._answer(request, query, record)
        record.status = response.status_code
        return response

    async def _answer(
        self, request: Request, query: dict[str, list[str]], record: BatchRequest
    ) -> JSONResponse:
        request_id = str(uuid.uuid4())
        if request.headers.get("authorization") != f"Token {self.api_key}":
            return _error(401, "INVALID_AUTH", "Invalid credentials.", request_id)
        body = await request.body()
        record.body_bytes, record.body_head = len(body), body[:4]
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a slow answer, for the client's timeout
        if self.fail_with:
            status = self.fail_with.pop(0)
            if status == 429:
                headers = {"Retry-After": self.retry_after} if self.retry_after else None
                return _error(429, "TOO_MANY_REQUESTS", "Too many requests.", request_id, headers)
            return _error(status, "INTERNAL_SERVER_ERROR", "Internal error.", request_id)
        if self.answer_json:  # a 200 whose body is not a transcript's shape
            return JSONResponse(self.answer_json.pop(0))
        try:
            samples, rate = decode_s16(body)
        except Exception:
            message = "Bad Request: failed to process audio: corrupt or unsupported data"
            return _error(400, "Bad Request", message, request_id)
        return JSONResponse(self.transcript(query, samples, rate, body, request_id))

    def transcript(
        self, query: dict[str, list[str]], samples: np.ndarray, rate: int, body: bytes,
        request_id: str,
    ) -> dict[str, Any]:  # fmt: skip
        def flag(name: str) -> bool:
            return query.get(name, ["false"])[-1] == "true"

        diarize, punctuate = flag("diarize"), flag("punctuate") or flag("smart_format")
        duration = len(samples) / rate
        split_s = float(query.get("utt_split", ["0.8"])[-1])
        sentences = heard(self.script, samples, rate, split_s)
        utterances: list[dict[str, Any]] = []
        all_words: list[dict[str, Any]] = []
        for sentence in sentences:
            for turn in _speaker_turns(sentence) if diarize else [sentence]:
                words = [_word(w, i, len(turn), punctuate, diarize) for i, w in enumerate(turn)]
                all_words += words
                utterance: dict[str, Any] = {
                    "start": turn[0].start_s,
                    "end": turn[-1].end_s,
                    "confidence": 0.93,
                    "channel": 0,
                    "transcript": " ".join(w["punctuated_word"] for w in words),
                    "words": words,
                    "id": str(uuid.uuid4()),
                }
                if diarize:
                    utterance["speaker"] = turn[0].speaker
                utterances.append(utterance)
        channel: dict[str, Any] = {
            "alternatives": [
                {
                    "transcript": " ".join(w["punctuated_word"] for w in all_words),
                    "confidence": 0.93,
                    "words": [{k: v for k, v in w.items()} for w in all_words],
                }
            ]
        }
        if flag("detect_language"):
            channel["detected_language"] = "en"
            channel["language_confidence"] = 0.99
        results: dict[str, Any] = {"channels": [channel]}
        if flag("utterances"):
            results["utterances"] = utterances
        metadata: dict[str, Any] = {
            "transaction_key": "deprecated",
            "request_id": request_id,
            "sha256": hashlib.sha256(body).hexdigest(),
            "created": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
            "duration": duration,
            "channels": 1,
            "models": [MODEL_UUID],
            "model_info": {
                MODEL_UUID: {"name": "general-nova-3", "version": "fake", "arch": "nova-3"}
            },
        }
        return {"metadata": metadata, "results": results}


async def start_uvicorn(app: Starlette) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """An HTTP server for `app` on a free localhost port, in this event loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await eventually(lambda: server.started, within=30, what="fake HTTP server started")
    return server, task, sock.getsockname()[1]


async def stop_uvicorn(server: uvicorn.Server | None, task: asyncio.Task[None] | None) -> None:
    if server is not None and task is not None:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def _error(
    status: int, code: str, message: str, request_id: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"err_code": code, "err_msg": message, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers=headers)


def heard(
    script: TimedScript | list[str] | None, samples: np.ndarray, rate: int, split_s: float
) -> list[list[ToyWord]]:
    """The fake's "recognition": sentences of words (see the module docstring)."""
    if isinstance(script, TimedScript):
        return script.words(samples, rate)
    if script:
        return _scripted(script, len(samples) / rate)
    return _toy(samples, rate, split_s)


def _toy(samples: np.ndarray, rate: int, split_s: float) -> list[list[ToyWord]]:
    recognizer = ToyRecognizer(rate, endpoint_ms=int(split_s * 1000))
    results = recognizer.feed(samples.astype("<i2").tobytes()) + recognizer.flush(False)
    return [list(r.words) for r in results if r.is_final and r.words]


def _scripted(script: list[str], duration: float) -> list[list[ToyWord]]:
    """Each sentence in an equal share of the audio, its words spread over 90 % of it."""
    share = duration / max(1, len(script))
    sentences = []
    for index, sentence in enumerate(script):
        texts = sentence.split()
        step = share * 0.9 / max(1, len(texts))
        start = index * share
        sentences.append(
            [
                ToyWord(text, start + i * step, start + (i + 0.8) * step, index % 2)
                for i, text in enumerate(texts)
            ]
        )
    return sentences


def _speaker_turns(words: list[ToyWord]) -> list[list[ToyWord]]:
    turns: list[list[ToyWord]] = []
    for word in words:
        if turns and turns[-1][-1].speaker == word.speaker:
            turns[-1].append(word)
        else:
            turns.append([word])
    return turns


def _word(w: ToyWord, index: int, count: int, punctuate: bool, diarize: bool) -> dict[str, Any]:
    text = w.text
    if punctuate:
        text = text.capitalize() if index == 0 else text
        text = text + "." if index == count - 1 else text
    word: dict[str, Any] = {
        "word": w.text.lower(),
        "start": round(w.start_s, 3),
        "end": round(w.end_s, 3),
        "confidence": 0.93,
        "punctuated_word": text,
    }
    if diarize:
        word["speaker"] = w.speaker
        word["speaker_confidence"] = 0.8
    return word
