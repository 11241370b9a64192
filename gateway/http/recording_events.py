"""A recording job's progress as Server-Sent Events: `GET /api/v1/recordings/{job_id}/events`.

`stage`, `progress`, `final` (one per stored final's number) and `end` events, each with the id
`f<last final>-p<audio ms>` that resumes the stream with Last-Event-ID; `: keep-alive` comments
while nothing happens. The stream ends with its job, at a drain (the client reconnects with its
id) and once its token expired or its key went.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.auth import ROLE_INGEST, ROLE_VIEWER, Unauthorized, bearer_token
from gateway.http.params import Params
from gateway.http.recordings import job_for, job_json, job_store, job_watch, services_of
from store.base import MAX_SEGMENT_NO
from store.jobs import SUCCEEDED, Job, job_final_numbers

SSE_KEEPALIVE_S = 15.0
# An events stream checks its token again this often: it ends (an `error` event) once the token
# expired or its key went, as a WebSocket does.
SSE_TOKEN_CHECK_S = 5.0
_EVENT_ID = re.compile(r"f([0-9]{1,10})-p(-1|[0-9]{1,15})")  # what _sse ids look like


def _sse(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def _parse_last_event_id(value: str | None) -> tuple[int, int]:
    """(last final's segment_no, audio ms done) from an id `f<no>-p<ms>`; (0, -1), a replay
    from the start, for none or for one this server could not have sent."""
    match = _EVENT_ID.fullmatch(value or "")
    if match is None or int(match[1]) > MAX_SEGMENT_NO:
        return 0, -1
    return int(match[1]), int(match[2])


def _stage_event(job: Job, last_final: int, last_ms: int) -> bytes:
    return _sse("stage", {"status": job.status, "stage": job.stage}, _event_id(last_final, last_ms))


def _event_id(last_final: int, last_ms: int) -> str:
    """`f<last final>-p<audio ms>`; before the first progress event (-1 here) the audio is 0."""
    return f"f{last_final}-p{max(last_ms, 0)}"


async def events(request: Request) -> Response:
    """`stage`, `progress`, `final` (one per stored final's number) and `end` events; the id
    `f<last final>-p<audio ms>` resumes with Last-Event-ID; `: keep-alive` comments."""
    query = Params(request)
    job = await job_for(request, (ROLE_VIEWER, ROLE_INGEST))
    jobs = job_store(request)
    last_final, last_ms = _parse_last_event_id(
        request.headers.get("last-event-id") or query.text("last_event_id")
    )
    if last_final > (job.last_segment_no or 0) or last_ms > job.audio_ms_done:
        last_final, last_ms = 0, -1  # ahead of the job: not an id this server sent
    services = services_of(request)
    token = bearer_token(request.headers, {}) or ""

    async def stream() -> AsyncIterator[bytes]:
        async with job_watch(request).watch(job.job_id) as watch:
            async for chunk in _job_events(watch):
                yield chunk

    async def _job_events(watch: Any) -> AsyncIterator[bytes]:
        nonlocal last_final, last_ms
        current: Job | None = job
        stage: str | None = None
        finals_read: int | None = None  # the job's count of finals when they were last read
        # Polls done before this stream began may hold an older row than the one it starts
        # from: wait for the next (its progress would go back, and its event ids).
        version = watch.version
        quiet_since = token_checked = time.monotonic()
        yield b"retry: 2000\n\n"
        while True:
            if current is None:  # its meeting was deleted, and the job with it
                yield _sse(
                    "end", {"id": job.job_id, "status": "deleted"}, _event_id(last_final, last_ms)
                )
                return
            out: list[bytes] = []
            # An ended job's last stage (`succeeded`, ...) follows its last finals and progress:
            # a client that stops at that stage has every final.
            new_stage = current.stage != stage
            stage = current.stage
            if new_stage and not current.ended:
                out.append(_stage_event(current, last_final, last_ms))
            if current.finals != finals_read:  # only when a chunk stored some since
                finals_read = current.finals
                for no in await job_final_numbers(jobs.engine, current.job_id, last_final):
                    last_final = no
                    out.append(_sse("final", {"segment_no": no}, _event_id(no, last_ms)))
            # A succeeded job's last progress says 1.0 even when its last chunk's audio was
            # already reported (the end of a file can fall short of its header's duration).
            finished = current.status == SUCCEEDED
            if current.audio_ms_done != last_ms or finished:
                last_ms = current.audio_ms_done
                out.append(_sse("progress", job_json(current), _event_id(last_final, last_ms)))
            if current.ended:
                if new_stage:
                    out.append(_stage_event(current, last_final, last_ms))
                out.append(_sse("end", job_json(current), _event_id(last_final, last_ms)))
                for chunk in out:
                    yield chunk
                return
            if out:
                quiet_since = time.monotonic()
                for chunk in out:
                    yield chunk
            elif time.monotonic() - quiet_since >= SSE_KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            if services.draining:  # the client reconnects (to another replica) with its id
                yield b": server restarting, reconnect\n\n"
                return
            if time.monotonic() - token_checked >= SSE_TOKEN_CHECK_S:
                token_checked = time.monotonic()
                try:
                    services.verifier.verify(token)
                except Unauthorized as exc:
                    yield _sse("error", {"message": str(exc)}, _event_id(last_final, last_ms))
                    return
            version, current = await watch.after(version)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


routes = [Route("/api/v1/recordings/{job_id}/events", events, methods=["GET"])]
