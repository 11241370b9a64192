"""A protocol-faithful fake of Google Speech v1's batch API on localhost: a `grpc.aio` server with
`google.cloud.speech.v1.Speech/LongRunningRecognize` and the `google.longrunning.Operations`
service (`GetOperation`, `CancelOperation`), using the vendor's own message types, for the
official `google-cloud-speech` client.

`LongRunningRecognize` validates the request as Google does (a `language_code`; inline
`content` of at most 10,485,760 bytes; a `uri` must be `gs://`; no diarization with a `latest_*`
model), decodes the audio (FLAC, WAV, ... through PyAV) and returns an `Operation` whose
`metadata` is `LongRunningRecognizeMetadata`. Each `GetOperation` advances `progress_percent` by
`progress_step`; at 100 the operation is done with a `LongRunningRecognizeResponse`: one result
per utterance (`result_end_time`, words with times relative to the audio sent), and with
diarization one more last result holding all the words with `speaker_tag` (from 1), as v1 does.

"Recognition" is deterministic, as in `fake_deepgram_batch`: tone words, or for real speech a
`TimedScript` aligned to the audio sent, or sentences spread over it. Knobs:
`reject_code` aborts every call (e.g. UNAUTHENTICATED), `fail_codes` aborts the next
`LongRunningRecognize` calls with these codes, `operation_errors` ends the next operations with
that status instead of a response, `poll_fail_codes` fails the next `GetOperation` calls.
`FakeCloudStorage` stands in for the bucket a `gs://` URI names (the JSON API's media upload
and delete).
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote

import grpc
import uvicorn
from google.cloud.speech_v1.types import cloud_speech
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2
from google.rpc import status_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingest.files.encoding import decode_s16
from tests.engines.batch_script import TimedScript
from tests.engines.fake_deepgram_batch import heard, start_uvicorn, stop_uvicorn
from tests.engines.toy_asr import ToyWord

MAX_INLINE_BYTES = 10_485_760
TYPE_PREFIX = "type.googleapis.com/google.cloud.speech.v1."


@dataclass
class FakeOperation:
    name: str
    request: cloud_speech.LongRunningRecognizeRequest
    response: cloud_speech.LongRunningRecognizeResponse | None
    error: grpc.StatusCode | None = None
    progress: int = 0
    polls: int = 0
    cancelled: bool = False
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))


@dataclass
class FakeGoogleBatch:
    script: TimedScript | list[str] | None = None  # see fake_deepgram_batch
    progress_step: int = 25  # percent per GetOperation
    reject_code: grpc.StatusCode | None = None
    fail_codes: list[grpc.StatusCode] = field(default_factory=list)
    operation_errors: list[grpc.StatusCode] = field(default_factory=list)
    poll_fail_codes: list[grpc.StatusCode] = field(default_factory=list)  # next GetOperations
    operations: list[FakeOperation] = field(default_factory=list)
    rejected: int = 0
    storage: FakeCloudStorage | None = None  # where `gs://` URIs are read from
    port: int = 0
    _server: grpc.aio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeGoogleBatch:
        self._server = grpc.aio.server()
        serialize = operations_pb2.Operation.SerializeToString
        speech = {
            "LongRunningRecognize": grpc.unary_unary_rpc_method_handler(
                self._long_running_recognize,
                request_deserializer=cloud_speech.LongRunningRecognizeRequest.deserialize,
                response_serializer=serialize,
            )
        }
        operations = {
            "GetOperation": grpc.unary_unary_rpc_method_handler(
                self._get_operation,
                request_deserializer=operations_pb2.GetOperationRequest.FromString,
                response_serializer=serialize,
            ),
            "CancelOperation": grpc.unary_unary_rpc_method_handler(
                self._cancel_operation,
                request_deserializer=operations_pb2.CancelOperationRequest.FromString,
                response_serializer=empty_pb2.Empty.SerializeToString,
            ),
        }
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler("google.cloud.speech.v1.Speech", speech),
                grpc.method_handlers_generic_handler("google.longrunning.Operations", operations),
            )
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.5)

    async def _long_running_recognize(
        self, request: cloud_speech.LongRunningRecognizeRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        if self.reject_code is not None:
            self.rejected += 1
            await context.abort(self.reject_code, "Request had invalid authentication credentials.")
        if self.fail_codes:
            await context.abort(self.fail_codes.pop(0), "The service is currently unavailable.")
        config = request.config
        if not config.language_code:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Invalid recognition 'config': "
                                "language_code is required.")  # fmt: skip
        diarize = config.diarization_config.enable_speaker_diarization
        if diarize and config.model.startswith("latest_"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Recognizer does not support "
                                "feature: speaker_diarization")  # fmt: skip
        if "uri" in request.audio:
            bucket, _, name = request.audio.uri.removeprefix("gs://").partition("/")
            if not request.audio.uri.startswith("gs://") or not name:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Invalid URI.")
            stored = self.storage.objects.get((bucket, name)) if self.storage else None
            if stored is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"No such object: {bucket}/{name}")
            assert stored is not None
            content = stored
        else:
            content = request.audio.content
        if len(content) > MAX_INLINE_BYTES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Request payload size exceeds "
                                f"the limit: {MAX_INLINE_BYTES} bytes.")  # fmt: skip
        try:
            samples, rate = decode_s16(content)
        except Exception:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Invalid audio content.")
        if config.sample_rate_hertz and config.sample_rate_hertz != rate:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hertz does not "
                                "match the audio's header.")  # fmt: skip
        duration = len(samples) / rate
        sentences = heard(self.script, samples, rate, 0.8)
        operation = FakeOperation(
            name=str(uuid.uuid4().int % 10**19),
            request=request,
            response=_response(sentences, diarize, config.language_code, duration),
            error=self.operation_errors.pop(0) if self.operation_errors else None,
        )
        self.operations.append(operation)
        return self._operation(operation)

    async def _get_operation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        if self.reject_code is not None:
            await context.abort(self.reject_code, "Request had invalid authentication credentials.")
        if self.poll_fail_codes:
            await context.abort(
                self.poll_fail_codes.pop(0), "The service is currently unavailable."
            )
        operation = next((o for o in self.operations if o.name == request.name), None)
        if operation is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Operation {request.name} not found.")
        assert operation is not None
        operation.polls += 1
        if not operation.cancelled:
            operation.progress = min(100, operation.progress + self.progress_step)
        return self._operation(operation)

    async def _cancel_operation(
        self, request: operations_pb2.CancelOperationRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        for operation in self.operations:
            if operation.name == request.name:
                operation.cancelled = True
        return empty_pb2.Empty()

    def _operation(self, operation: FakeOperation) -> operations_pb2.Operation:
        now = datetime.datetime.now(datetime.UTC)
        metadata = cloud_speech.LongRunningRecognizeMetadata(
            progress_percent=operation.progress,
            start_time=operation.started,
            last_update_time=now,
        )
        message = operations_pb2.Operation(
            name=operation.name,
            metadata=_any("LongRunningRecognizeMetadata", metadata),
        )
        if operation.cancelled:
            message.done = True
            message.error.CopyFrom(status_pb2.Status(code=grpc.StatusCode.CANCELLED.value[0],
                                                     message="Operation cancelled."))  # fmt: skip
        elif operation.progress >= 100:
            message.done = True
            if operation.error is not None:
                message.error.CopyFrom(
                    status_pb2.Status(code=operation.error.value[0], message="Operation failed.")
                )
            else:
                assert operation.response is not None
                message.response.CopyFrom(_any("LongRunningRecognizeResponse", operation.response))
        return message


@dataclass
class FakeCloudStorage:
    """The Cloud Storage JSON API's simple media upload and object delete, on localhost."""

    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    uploads: list[tuple[str, str, str]] = field(default_factory=list)  # bucket, name, type
    deleted: list[tuple[str, str]] = field(default_factory=list)
    reject_status: int | None = None  # answer every upload with this status (401, 403, 503)
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeCloudStorage:
        app = Starlette(
            routes=[
                Route("/upload/storage/v1/b/{bucket}/o", self._upload, methods=["POST"]),
                Route("/storage/v1/b/{bucket}/o/{name:path}", self._delete, methods=["DELETE"]),
            ]
        )
        self._server, self._task, self.port = await start_uvicorn(app)
        return self

    async def stop(self) -> None:
        await stop_uvicorn(self._server, self._task)

    async def _upload(self, request: Request) -> Response:
        bucket, name = request.path_params["bucket"], request.query_params.get("name", "")
        if self.reject_status is not None:
            self.uploads.append((bucket, name, "rejected"))
            error = {"code": self.reject_status, "message": "Permission denied on the bucket."}
            return JSONResponse({"error": error}, self.reject_status)
        if request.query_params.get("uploadType") != "media" or not name:
            return JSONResponse({"error": {"code": 400, "message": "Bad upload"}}, 400)
        data = await request.body()
        self.objects[(bucket, name)] = data
        self.uploads.append((bucket, name, request.headers.get("content-type", "")))
        return JSONResponse({"kind": "storage#object", "bucket": bucket, "name": name,
                             "size": str(len(data))})  # fmt: skip

    async def _delete(self, request: Request) -> Response:
        key = (request.path_params["bucket"], unquote(request.path_params["name"]))
        if self.objects.pop(key, None) is None:
            return JSONResponse({"error": {"code": 404, "message": "No such object"}}, 404)
        self.deleted.append(key)
        return Response(status_code=204)


def _any(type_name: str, message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.type_url = TYPE_PREFIX + type_name
    packed.value = type(message).serialize(message)  # type: ignore[attr-defined]
    return packed


def _seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=round(value, 3))


def _words(words: list[ToyWord], tags: bool) -> list[cloud_speech.WordInfo]:
    return [
        cloud_speech.WordInfo(
            word=w.text,
            start_time=_seconds(w.start_s),
            end_time=_seconds(w.end_s),
            confidence=0.9,
            speaker_tag=w.speaker + 1 if tags else 0,
        )
        for w in words
    ]


def _response(
    sentences: list[list[ToyWord]], diarize: bool, language: str, duration: float
) -> cloud_speech.LongRunningRecognizeResponse:
    results = []
    for index, words in enumerate(sentences):
        # A result ends where the next utterance starts (or the audio ends), as Google's do.
        end = sentences[index + 1][0].start_s if index + 1 < len(sentences) else duration
        alternative = cloud_speech.SpeechRecognitionAlternative(
            transcript=" ".join(w.text for w in words),
            confidence=0.9,
            words=_words(words, tags=False),
        )
        results.append(
            cloud_speech.SpeechRecognitionResult(
                alternatives=[alternative],
                result_end_time=_seconds(end),
                language_code=language.lower(),
            )
        )
    if diarize and sentences:
        everything = [w for words in sentences for w in words]
        alternative = cloud_speech.SpeechRecognitionAlternative(words=_words(everything, True))
        results.append(
            cloud_speech.SpeechRecognitionResult(
                alternatives=[alternative],
                result_end_time=_seconds(duration),
                language_code=language.lower(),
            )
        )
    return cloud_speech.LongRunningRecognizeResponse(
        results=results,
        total_billed_time=datetime.timedelta(seconds=int(duration) + 1),
        request_id=uuid.uuid4().int % 10**18,
    )
