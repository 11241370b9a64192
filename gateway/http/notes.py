"""`GET/POST /api/v1/meetings/{id}/notes`: post-meeting notes.

Notes are made by the notes worker (gateway/pipeline/notes.py) when the meeting ends, when a
recording job succeeds, or on `POST` (202: requested), with the configured backend, and stored
with the meeting. `GET` returns the stored notes (`state: ready`, or `failed` with the error when
making them again failed); before they exist, or while newer ones are being made, it returns a
preview made now by the offline rules backend, over the finals stored so far, with the stored
row's `state` (`none`, `pending` or `failed`); previews
are made off the event loop, one at a time per process, at most PREVIEWS_PER_TENANT meetings'
for one tenant (then 429; gateway.pipeline.notes.NotesPreviews).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import Principal
from gateway.http.api import authorize_any
from gateway.http.errors import HttpError
from gateway.http.meetings import EDIT_ROLES, READ_ROLES
from gateway.pipeline.notes import PreviewsBusy, notes_body
from gateway.services import Services
from store.notes import FAILED, READY, NotesStore

PREVIEW_RETRY_AFTER_S = 5


async def meeting_notes(request: Request) -> Response:
    if request.method == "POST":
        return await _request_notes(request)
    principal, services, notes = await _meeting(request, READ_ROLES)
    meeting_id = request.path_params["meeting_id"]
    stored = await notes.get(principal.tenant_id, meeting_id)
    # Ready notes; or notes made before that could not be made again (a preview would hide them).
    if stored is not None and stored.body is not None and stored.state in (READY, FAILED):
        return JSONResponse(
            {
                "meeting_id": meeting_id,
                "state": stored.state,
                "backend": stored.backend,
                "finals": stored.finals,
                "generated_at": stored.generated_at.isoformat() if stored.generated_at else None,
                "error": stored.error if stored.state == FAILED else None,
                **stored.body,
            }
        )
    try:
        preview, finals = await services.notes_previews.preview(
            services.store, services.catalog, principal.tenant_id, meeting_id
        )
    except PreviewsBusy as busy:
        services.metrics.limit_hit("notes_previews", principal.tenant_id)
        raise HttpError(429, f"{busy}; retry", retry_after=PREVIEW_RETRY_AFTER_S) from None
    return JSONResponse(
        {
            "meeting_id": meeting_id,
            "state": stored.state if stored is not None else "none",
            "backend": preview.backend,
            "finals": finals,
            "generated_at": None,
            # Only a request given up says why: one being retried is not failed (yet).
            "error": stored.error if stored is not None and stored.state == FAILED else None,
            **notes_body(preview),
        }
    )


async def _request_notes(request: Request) -> Response:
    principal, _, notes = await _meeting(request, EDIT_ROLES)
    meeting_id = request.path_params["meeting_id"]
    if not await notes.request(principal.tenant_id, meeting_id, "request"):
        raise HttpError(404, "meeting not found")  # deleted since it was found
    return JSONResponse({"meeting_id": meeting_id, "state": "pending"}, status_code=202)


async def _meeting(
    request: Request, roles: tuple[str, ...]
) -> tuple[Principal, Services, NotesStore]:
    meeting_id = request.path_params["meeting_id"]
    principal = authorize_any(request, roles, meeting_id)
    services: Services = request.app.state.services
    if services.notes is None:
        raise HttpError(503, "notes need the SQL store")
    if not await services.store.meeting_exists(principal.tenant_id, meeting_id):
        raise HttpError(404, "meeting not found")
    return principal, services, services.notes
