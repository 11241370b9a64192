"""Recording routes: upload a file as a transcription job, read it, list, cancel (its events:
`gateway.http.recording_events`).

`POST /api/v1/meetings/{meeting_id}/recordings` streams the body (multipart field `file`, or raw
with an audio Content-Type) to RECORDINGS_DIR under the size cap, probes it (415/422 with the
reason), and queues a durable job (202). Every job route is tenant-scoped: another tenant's job is
a 404, as an unknown one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import ROLE_INGEST, ROLE_VIEWER, Forbidden, Principal, Unauthorized, bearer_token
from gateway.http.api import authorize, lacked
from gateway.http.errors import HttpError
from gateway.http.job_watch import JobWatch
from gateway.http.params import Params, storable
from gateway.http.upload_body import (
    DISK_BUDGET_USED,
    DRAIN_RETRY_AFTER_S,
    OPTIONS,
    QUEUE_RETRY_AFTER_S,
    UploadFile,
    receive_multipart,
    receive_raw,
)
from gateway.http.uploads_in_flight import InFlightUpload
from gateway.ids import ID_RULE, valid_id
from gateway.services import Services
from gateway.text_rules import unprintable
from ingest.engines.base import engine_name
from ingest.files.decode import MediaError, probe
from ingest.protocol import LANGUAGE_PATTERN
from shared.ignored_fields import ignored_names
from shared.tasks import cancel_and_wait
from store.jobs import (
    CANCELLED,
    QUEUED,
    RUNNING,
    Job,
    JobLimit,
    NewJob,
)

LANGUAGE_RE = re.compile(LANGUAGE_PATTERN)
RAW_TYPES = ("audio/", "video/", "application/ogg", "application/octet-stream")
# Each channel is transcribed on its own: the work grows with their number.
SPLIT_CHANNELS_MAX = 8
LABEL_MAX_LEN = 64
TENANT_DISK_SHARE_USED = (
    "this tenant's recordings hold its share of the disk budget (RECORDING_DISK_TENANT_SHARE); "
    "retry once some of its jobs have ended"
)
KEY_USED_ELSEWHERE = "Idempotency-Key already used for another meeting"


async def start_recordings(services: Services, stack: AsyncExitStack) -> None:
    """Build this replica's job runner (called once by the app's lifespan)."""
    from gateway.pipeline.recordings import RecordingRunner, build_file_engines
    from gateway.pipeline.upload_sweep import run_upload_sweep

    if services.jobs is None:
        return
    services.settings.recordings_dir.mkdir(parents=True, exist_ok=True)
    runner = RecordingRunner(
        services, services.jobs, build_file_engines(services.settings, services.metrics)
    )
    services.recordings = runner
    runner.start()
    stack.push_async_callback(runner.aclose)
    sweep = asyncio.create_task(
        run_upload_sweep(
            services.settings.recordings_dir,
            services.jobs,
            keep_ended=services.settings.recording_keep_audio,
        ),
        name="upload-sweep",
    )
    stack.push_async_callback(cancel_and_wait, sweep)


def services_of(request: Request) -> Services:
    return request.app.state.services


def job_watch(request: Request) -> JobWatch[Job]:
    watch = services_of(request).job_watch
    if watch is None:
        raise HttpError(503, "recordings need the SQL store")
    return watch


def job_store(request: Request) -> Any:
    jobs = services_of(request).jobs
    if jobs is None:
        raise HttpError(503, "recordings need the SQL store")
    return jobs


# -- representation ----------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_json(job: Job) -> dict[str, Any]:
    eta: float | None = None
    if job.status == RUNNING and job.started_at is not None and 0 < job.progress < 1:
        elapsed = (datetime.now(UTC) - job.started_at).total_seconds()
        eta = round(elapsed * (1 - job.progress) / job.progress, 1)
    base = f"/api/v1/recordings/{job.job_id}"
    return {
        "id": job.job_id,
        "meeting_id": job.meeting_id,
        "status": job.status,
        "stage": job.stage,
        "progress": round(job.progress, 4),
        "percent": round(job.progress * 100, 1),
        "audio_seconds_done": job.audio_ms_done / 1000,
        "audio_seconds_total": job.audio_ms_total / 1000,
        "eta_seconds": eta,
        "engine": job.engine,
        "engines": {name: ms / 1000 for name, ms in job.engines_used.items()},
        "attempts": job.attempts,
        "error": job.error,
        "finals": job.finals,
        "last_segment_no": job.last_segment_no,
        "label": job.label,
        "language": job.language,
        "diarize": job.diarize,
        "split_channels": job.split_channels,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "links": {
            "self": base,
            "events": f"{base}/events",
            "meeting_recordings": f"/api/v1/meetings/{job.meeting_id}/recordings",
            "transcript": f"/api/v1/meetings/{job.meeting_id}/transcript",
        },
    }


# -- upload ------------------------------------------------------------------------------------


def _options(
    query: Params, form: dict[str, str], services: Services, *, early: bool = False
) -> dict[str, Any]:
    """The upload's options from the form, else the query. `early`, before the body (and its
    form fields) came: the language is checked against the engines only if the query names it."""

    def pick(name: str, default: str | None = None) -> str | None:
        value = form.get(name)
        if value is None:
            value = query.text(name)
        elif not storable(value):
            raise HttpError(400, f"form field {name!r} must be Unicode text without NUL characters")
        return default if value is None or value == "" else value.strip()

    language = (pick("language", "en") or "en").lower()
    if not LANGUAGE_RE.match(language):
        raise HttpError(
            400, 'language must be a short language code such as "en", "tr", "en-US", or "auto"'
        )
    engine = pick("engine")
    if engine is not None:
        engine = engine_name(engine)  # "gcp" and "Google" name the google engine too
    runner = services.recordings
    offered = list(runner.engines) if runner is not None else []
    if engine is not None and engine not in offered:
        raise HttpError(400, f"engine must be one of {', '.join(offered) or 'none'}")
    # The engines that may take the job: the one named, else every one of the replica.
    if runner is None:
        candidates = []
    else:
        candidates = [runner.engines[engine]] if engine else list(runner.engines.values())
    checked = not (early and query.text("language") is None)
    if checked and candidates and not any(e.supports(language) for e in candidates):
        served = sorted(set().union(*(e.supported_languages() for e in candidates)))
        raise HttpError(
            400, f"no engine here transcribes {language!r}; languages: {', '.join(served)}"
        )
    # A job is diarized where an engine that may take it (one serving its language) can, unless
    # asked not to; asked where none can, it is not, and its JSON says so.
    can_diarize = any(c.can_diarize and c.supports(language) for c in candidates)
    diarize = _flag(pick("diarize"), "diarize", default=can_diarize) and can_diarize
    split_channels = _flag(pick("split_channels"), "split_channels", default=False)
    label = pick("label", "recording") or "recording"
    if len(label) > LABEL_MAX_LEN:
        raise HttpError(400, f"label must be at most {LABEL_MAX_LEN} characters")
    if any(unprintable(c) for c in label):
        # It is every final's `source`, shown in exports and pages, one line each.
        raise HttpError(400, "label must not hold control, format (bidi) characters or line breaks")
    return {
        "language": language,
        "engine": engine,
        "diarize": diarize,
        "label": label,
        "split_channels": split_channels,
    }


def _flag(value: str | None, name: str, *, default: bool) -> bool:
    """An option's true/false (also 1/0, yes/no); 400 for anything else."""
    if value is None:
        return default
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise HttpError(400, f"{name} must be true or false")
    return value.lower() in ("true", "1", "yes")


async def upload(request: Request) -> Response:
    meeting_id = request.path_params["meeting_id"]
    principal = authorize(request, ROLE_INGEST, meeting_id)
    query = Params(request, reads=OPTIONS)  # a repeated option is refused before the upload
    services = services_of(request)
    settings = services.settings
    jobs = job_store(request)
    tenant = principal.tenant_id
    began = time.monotonic()
    if services.draining:
        raise HttpError(503, "server restarting, retry", retry_after=DRAIN_RETRY_AFTER_S)
    if (left_s := services.deletions.refused_for_s(tenant, meeting_id)) > 0:
        # Its deletion's sweeps would cancel the job after it was answered 202.
        wait_s = math.ceil(left_s)
        raise HttpError(
            409,
            f"the meeting was just deleted; it can be used again in {wait_s} s",
            retry_after=wait_s,
        )

    if len(request.headers.getlist("idempotency-key")) > 1:  # which one would the client mean?
        raise HttpError(400, "more than one Idempotency-Key header")
    key = request.headers.get("idempotency-key")
    if key is not None and (not (1 <= len(key) <= 255) or any(c < " " or c == "\x7f" for c in key)):
        raise HttpError(400, "Idempotency-Key must be 1 to 255 characters, none a control")
    if key is not None:
        existing = await jobs.by_key(tenant, key)
        if existing is not None:
            if existing.meeting_id != meeting_id:
                raise HttpError(409, KEY_USED_ELSEWHERE)
            # (The body is not read: only the query's fields can be named as ignored.)
            ignored = ignored_names(request.query_params.keys(), OPTIONS)
            return _accepted(existing, ignored, status_code=200)

    # What the request says of itself is refused before a place is taken (429s for a body too
    # large or a bad option, while other uploads held the places, said the wrong thing).
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.recording_max_bytes:
        raise HttpError(413, f"the recording is larger than {settings.recording_max_bytes} bytes")
    _options(query, {}, services, early=True)  # bad query options: refused before the body

    counts = await jobs.counts(tenant)
    if counts[QUEUED] >= settings.recording_queue_max:
        services.metrics.limit_hit("recording_queue", tenant)
        raise HttpError(
            429,
            f"{counts[QUEUED]} recordings already queued for this tenant",
            retry_after=QUEUE_RETRY_AFTER_S,
        )

    in_flight = services.uploads
    if in_flight.count(tenant) >= settings.recording_uploads_per_tenant:
        services.metrics.limit_hit("recording_uploads", tenant)
        raise HttpError(
            429,
            f"{in_flight.count(tenant)} uploads of this tenant are already in progress here",
            retry_after=QUEUE_RETRY_AFTER_S,
        )
    upload = in_flight.begin(tenant)  # at once: a burst of uploads all checked before any began
    try:
        return await _accept(request, query, services, jobs, tenant, meeting_id, began, key, upload)
    finally:
        upload.end()


async def _accept(
    request: Request,
    query: Params,
    services: Services,
    jobs: Any,
    tenant: str,
    meeting_id: str,
    began: float,
    key: str | None,
    upload: InFlightUpload,
) -> Response:
    """The upload's body to disk and its job, once it holds its place among the uploads."""
    settings = services.settings

    async def budget_left() -> int:  # for uploads in progress (`uploads.bytes`)
        return settings.recording_disk_budget_bytes - await jobs.queued_bytes()

    tenant_budget = int(settings.recording_disk_budget_bytes * settings.recording_disk_tenant_share)
    left_now = await budget_left()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if upload.uploads.bytes + int(declared) > left_now:
            raise HttpError(507, DISK_BUDGET_USED, retry_after=QUEUE_RETRY_AFTER_S)
        if await jobs.queued_bytes(tenant) + int(declared) > tenant_budget:
            raise HttpError(507, TENANT_DISK_SHARE_USED, retry_after=QUEUE_RETRY_AFTER_S)

    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    content_type_s = content_type.decode("latin-1").lower()
    directory = settings.recordings_dir
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{uuid.uuid4().hex}.upload"
    upload_file = UploadFile(path, settings.recording_max_bytes, upload, budget_left, left_now)
    keep = False
    try:
        form: dict[str, str] = {}
        other_fields: list[str] = []
        try:
            if content_type_s == "multipart/form-data":
                boundary = params.get(b"boundary")
                if not boundary:
                    raise HttpError(400, "multipart body without a boundary")
                form = await receive_multipart(
                    request, services, upload_file, boundary, other_fields
                )
            elif content_type_s.startswith(RAW_TYPES):
                await receive_raw(request, services, upload_file)
            else:
                raise HttpError(
                    415,
                    "send the recording as multipart/form-data (field 'file') "
                    "or raw with an audio Content-Type",
                )
        except ClientDisconnect:
            raise HttpError(400, "the upload ended early") from None
        finally:
            upload_file.close()
        options = _options(query, form, services)
        ignored = ignored_names([*request.query_params.keys(), *other_fields], OPTIONS)
        if upload_file.size == 0:
            raise HttpError(422, "the recording is empty")
        if await jobs.queued_bytes() + upload_file.size > settings.recording_disk_budget_bytes:
            raise HttpError(507, DISK_BUDGET_USED, retry_after=QUEUE_RETRY_AFTER_S)
        try:
            info = await asyncio.to_thread(probe, path)
        except MediaError as exc:
            raise HttpError(exc.status, exc.reason) from None
        if (
            info.duration_ms is not None
            and info.duration_ms > settings.recording_max_seconds * 1000
        ):
            raise HttpError(
                413,
                f"the recording lasts {info.duration_ms / 1000:.1f} s, "
                f"more than {settings.recording_max_seconds:g} s (RECORDING_MAX_SECONDS)",
            )
        if options["split_channels"] and info.channels > SPLIT_CHANNELS_MAX:
            raise HttpError(
                422,
                f"the recording has {info.channels} channels; split_channels transcribes "
                f"at most {SPLIT_CHANNELS_MAX}",
            )
        if services.deletions.deleted_since(tenant, meeting_id, began):
            # The deletion's sweeps may be over: a job now would bring the meeting back.
            raise HttpError(409, "the meeting was deleted while this recording was uploading")
        try:
            job, created = await jobs.create(
                NewJob(
                    tenant_id=tenant,
                    meeting_id=meeting_id,
                    file_path=str(path),
                    file_bytes=upload_file.size,
                    # 0: the container does not say (a MediaRecorder WebM); decoding finds out,
                    # and the runner enforces RECORDING_MAX_SECONDS as it goes.
                    audio_ms_total=info.duration_ms or 0,
                    label=options["label"],
                    language=options["language"],
                    diarize=options["diarize"],
                    split_channels=options["split_channels"],
                    engine=options["engine"],
                    idempotency_key=key,
                ),
                max_queued=settings.recording_queue_max,
                disk_budget=settings.recording_disk_budget_bytes,
                tenant_disk_budget=tenant_budget,
            )
        except JobLimit as exc:  # uploads that raced this one took what was left
            if exc.kind == "queue":
                services.metrics.limit_hit("recording_queue", tenant)
                message = f"{exc.limit} recordings already queued for this tenant"
                raise HttpError(429, message, retry_after=QUEUE_RETRY_AFTER_S) from None
            if exc.kind == "tenant_disk":
                message = TENANT_DISK_SHARE_USED
                raise HttpError(507, message, retry_after=QUEUE_RETRY_AFTER_S) from None
            raise HttpError(507, DISK_BUDGET_USED, retry_after=QUEUE_RETRY_AFTER_S) from None
        keep = created
    finally:
        if not keep:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    if not created:  # the same key won a race since the check above
        if job.meeting_id != meeting_id:
            raise HttpError(409, KEY_USED_ELSEWHERE)
        return _accepted(job, ignored, status_code=200)
    services.metrics.recording_state(QUEUED)
    if services.recordings is not None:
        services.recordings.wake()
    return _accepted(
        job, ignored, status_code=202, headers={"Location": f"/api/v1/recordings/{job.job_id}"}
    )


def _accepted(job: Job, ignored: tuple[str, ...], **response: Any) -> JSONResponse:
    """The upload's answer: the job, and the query and form fields that are not options (they
    are ignored, as a newer client's would be; named, a misspelled option does not go unseen)."""
    body = job_json(job)
    if ignored:
        body["ignored_options"] = list(ignored)
    return JSONResponse(body, **response)


# -- reading and cancelling --------------------------------------------------------------------


def _principal(request: Request, roles: tuple[str, ...]) -> Principal:
    services = services_of(request)
    try:
        principal = services.verifier.verify(bearer_token(request.headers, {}))
    except Unauthorized as exc:
        services.metrics.auth_failed("unauthorized")
        raise HttpError(401, str(exc)) from None
    if not any(role in principal.roles for role in roles):
        services.metrics.auth_failed("forbidden")
        raise HttpError(403, f"token lacks the {lacked(roles)} role")
    return principal


async def job_for(request: Request, roles: tuple[str, ...]) -> Job:
    principal = _principal(request, roles)
    job_id = request.path_params["job_id"]
    job = await job_store(request).get(job_id, principal.tenant_id) if valid_id(job_id) else None
    if job is None:
        raise HttpError(404, "no such recording")
    try:
        principal.require(next(r for r in roles if r in principal.roles), job.meeting_id)
    except Forbidden as exc:
        raise HttpError(403, str(exc)) from None
    return job


async def get_job(request: Request) -> Response:
    return JSONResponse(job_json(await job_for(request, (ROLE_VIEWER, ROLE_INGEST))))


async def list_jobs(request: Request) -> Response:
    meeting_id = request.path_params["meeting_id"]
    principal = _principal(request, (ROLE_VIEWER, ROLE_INGEST))
    if not valid_id(meeting_id):
        raise HttpError(400, f"meeting id must be {ID_RULE}")
    try:
        principal.require(
            next(r for r in (ROLE_VIEWER, ROLE_INGEST) if r in principal.roles), meeting_id
        )
    except Forbidden as exc:
        raise HttpError(403, str(exc)) from None
    jobs = await job_store(request).list_for_meeting(principal.tenant_id, meeting_id)
    if not jobs and not await services_of(request).store.meeting_exists(
        principal.tenant_id, meeting_id
    ):
        raise HttpError(404, "meeting not found")
    return JSONResponse({"meeting_id": meeting_id, "recordings": [job_json(j) for j in jobs]})


async def cancel_job(request: Request) -> Response:
    job = await job_for(request, (ROLE_INGEST,))
    updated = await job_store(request).cancel(job.job_id, job.tenant_id)
    if updated is None:  # its meeting was deleted meanwhile, and the job with it
        raise HttpError(404, "no such recording")
    if job.status != CANCELLED and updated.status == CANCELLED and updated.lease_owner is None:
        # Ended here (queued, or its runner gone), never to be claimed: no runner counts it or
        # removes its file (nor the disk budget counts it), so that is done now.
        services_of(request).metrics.recording_state(CANCELLED)
        if not services_of(request).settings.recording_keep_audio:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(Path(job.file_path).unlink, missing_ok=True)
    return JSONResponse(job_json(updated), status_code=202 if not updated.ended else 200)


routes = [
    Route("/api/v1/meetings/{meeting_id}/recordings", upload, methods=["POST"]),
    Route("/api/v1/meetings/{meeting_id}/recordings", list_jobs, methods=["GET"]),
    Route("/api/v1/recordings/{job_id}", get_job, methods=["GET"]),
    Route("/api/v1/recordings/{job_id}", cancel_job, methods=["DELETE"]),
]
