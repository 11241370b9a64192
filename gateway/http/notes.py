"""`GET /api/v1/meetings/{id}/notes`: post-meeting notes over the stored transcript.

Made on request by the offline `rules` backend (`ingest/insights/rules.py`): a short extractive
summary, decisions, action items (owner and due date where said) and questions. They are
deterministic and cheap, so they are computed from the finals each time rather than stored:
a meeting that grows, or whose speakers are renamed, gets current notes.
"""

from __future__ import annotations

from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.http.api import HttpError, authorize_any
from gateway.http.meetings import EXPORT_BATCH, READ_ROLES, named
from gateway.http.params import Params
from gateway.services import Services
from ingest.insights.base import FinalLine
from ingest.insights.rules import notes_of


async def meeting_notes(request: Request) -> Response:
    meeting_id = request.path_params["meeting_id"]
    principal = authorize_any(request, READ_ROLES, meeting_id)
    Params(request)  # refuses duplicated parameters
    services: Services = request.app.state.services
    store, tenant = services.store, principal.tenant_id
    if not await store.meeting_exists(tenant, meeting_id):
        raise HttpError(404, "meeting not found")
    labels = await services.catalog.labels(tenant, meeting_id)
    lines: list[FinalLine] = []
    position = 0
    while batch := await store.finals_after(tenant, meeting_id, position, limit=EXPORT_BATCH):
        lines.extend(
            FinalLine(f.segment_no, f.text, f.start_ms / 1000, f.speaker, f.source)
            for f in named(batch, labels)
        )
        position = batch[-1].segment_no
    notes = notes_of(lines)
    body = asdict(notes)
    body.pop("extra", None)
    return JSONResponse({"meeting_id": meeting_id, "finals": len(lines), **body})
