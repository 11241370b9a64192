"""Meetings as resources: the list, one meeting, its transcript page by page or streamed whole,
and search across the tenant's finals (docs/protocol.md "Meetings API").

Roles `viewer` or `ops`; the token's tenant only, and only the token's `meetings` when the claim
is present (another tenant's meeting with the same id is never seen). Pages are keyset-paginated
with opaque cursors, so inserts never shift a page.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeGuard
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from fanout.messages import MeetingUpdatedMessage
from fanout.topics import status_topic
from gateway.auth import ROLE_ADMIN, ROLE_EDITOR, ROLE_INGEST, ROLE_OPS, ROLE_VIEWER, Principal
from gateway.dependency_errors import UNAVAILABLE_ERRORS
from gateway.http.api import authorize_any
from gateway.http.cursors import CursorSeal
from gateway.http.errors import HttpError
from gateway.http.params import Params, as_utc, json_body
from gateway.http.tenant_slots import TenantSlots
from gateway.ids import valid_id
from gateway.observability.logs import get_logger
from gateway.params import ParamError, bounded_int
from gateway.pipeline.stored_finals import correction_message
from gateway.services import Services
from gateway.text_rules import unclosed_bidi
from store.base import (
    MAX_SEGMENT_NO,
    STREAM_FRESH_WITHIN_S,
    FinalSegment,
    StreamInfo,
    TranscriptStore,
)
from store.catalog import (
    FinalChangedMeanwhile,
    MeetingFilter,
    MeetingLabels,
    MeetingPosition,
    MeetingSummary,
    SearchFilter,
    TooManySpeakerNames,
)
from store.exports import (
    Timeline,
    in_clock_order,
    json_item,
    media_type,
    stream,
    voiced_by_source,
)
from store.search import (
    MAX_QUERY_CHARS,
    POSITION_ROWS,
    QueryError,
    SearchPosition,
    parse_query,
    snippet,
)
from store.tips import StoredTip

READ_ROLES = (ROLE_VIEWER, ROLE_OPS)
EDIT_ROLES = (ROLE_EDITOR, ROLE_INGEST)
MAX_TITLE_CHARS = 200
MAX_LABEL_CHARS = 64
MAX_NAME_CHARS = 100
MAX_SPEAKERS = 100
MAX_TEXT_CHARS = 10_000
MAX_BODY_BYTES = 64 * 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_ROW_ID = 2**63 - 1  # a search cursor's rows: what the stores can bind
EXPORT_BATCH = 500  # finals read per query while streaming an export
EXPORT_RETRY_AFTER_S = 5  # a tenant's exports at their limit: one ends within seconds, usually
SEARCH_RETRY_AFTER_S = 1  # a tenant's searches at their limit: one ends within a second, usually
STREAM_PAGE = 100  # finals read per query of one stream, while SRT and WebVTT merge streams


log = get_logger("gateway.http.meetings")


def _services(request: Request) -> Services:
    return request.app.state.services


# -- cursors ------------------------------------------------------------------------------


def _cursors(request: Request) -> CursorSeal:
    cursors = _services(request).cursors
    assert cursors is not None
    return cursors


def _tenant_digest(tenant_id: str) -> str:
    return hashlib.sha256(json.dumps(["meetings", tenant_id]).encode()).hexdigest()[:16]


def _position(payload: dict[str, Any], tenant_id: str) -> MeetingPosition:
    # Tied to its tenant, as a search cursor is: another tenant's list went on below that
    # tenant's meeting's creation time, telling roughly when it was made.
    if "t" not in payload:  # issued by an earlier release, tied to no tenant
        raise HttpError(400, "cursor from an earlier release: start the listing again")
    if payload["t"] != _tenant_digest(tenant_id):
        raise HttpError(400, "cursor belongs to another tenant's listing")
    try:
        created = datetime.fromisoformat(payload["c"])
        meeting_id = payload["m"]
    except (KeyError, TypeError, ValueError):
        raise HttpError(400, "cursor is not one this server issued") from None
    if not isinstance(meeting_id, str) or not valid_id(meeting_id) or created.tzinfo is None:
        raise HttpError(400, "cursor is not one this server issued")
    return MeetingPosition(as_utc(created, "cursor is not one this server issued"), meeting_id)


def _link(request: Request, **params: object) -> str:
    query = {k: v for k, v in request.query_params.items() if k not in params}
    query.update({k: str(v) for k, v in params.items() if v is not None})
    return f"{request.url.path}?{urlencode(query)}"


# -- rendering ----------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def meeting_body(summary: MeetingSummary, *, streams: bool = False) -> dict[str, Any]:
    path = f"/api/v1/meetings/{summary.meeting_id}"
    body: dict[str, Any] = {
        "id": summary.meeting_id,
        "created_at": _iso(summary.created_at),
        "last_activity_at": _iso(summary.last_activity_at),
        "duration_s": summary.duration_ms / 1000,
        "final_count": summary.final_count,
        "last_segment_no": summary.last_segment_no,
        "sources": list(summary.sources),
        "engines": list(summary.engines),
        "speakers": list(summary.speakers),
        "live": summary.live,
        "title": summary.title,
        "speaker_names": summary.speaker_names,
        "links": {
            "self": path,
            "transcript": f"{path}/transcript",
            "viewer": f"/viewer?meeting={summary.meeting_id}",
        },
    }
    if streams:
        body["streams"] = [_stream_body(s) for s in summary.streams]
    return body


def tip_item(tip: StoredTip) -> dict[str, object]:
    """A live tip in the JSON export: as it was published, less the envelope."""
    return {
        "tip_no": tip.tip_no,
        "kind": tip.kind,
        "text": tip.text,
        "owner": tip.owner,
        "due": tip.due,
        "segment_nos": list(tip.segment_nos),
        "ts": tip.created_at.isoformat(),
    }


def named(finals: Sequence[FinalSegment], labels: MeetingLabels) -> Sequence[FinalSegment]:
    """`finals` with each speaker label replaced by the name people gave it, if any."""
    if not labels.speaker_names:
        return finals
    return [replace(f, speaker=labels.name(f.speaker)) for f in finals]


def _stream_body(stream: StreamInfo) -> dict[str, Any]:
    return {
        "stream_id": stream.stream_id,
        "source": stream.source,
        "engine": stream.engine,
        "engines": list(stream.engines),
        "sample_rate": stream.sample_rate,
        "channels": stream.channels,
        "started_at": _iso(stream.started_at),
        "audio_started_at": _iso(stream.audio_started_at),
        "ended_at": _iso(stream.ended_at),
        "audio_seconds": stream.audio_ms / 1000,
    }


# -- routes -------------------------------------------------------------------------------


async def list_meetings(request: Request) -> Response:
    principal = authorize_any(request, READ_ROLES)
    params = Params(request)
    limit = params.integer("limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    cursor = params.text("cursor") or None  # empty: as absent
    where = MeetingFilter(
        since=params.moment("since"),
        until=params.moment("until"),
        active=params.boolean("active"),
        meeting_ids=principal.meetings,
    )
    catalog = _services(request).catalog
    after = None
    if cursor is not None:
        after = _position(await _cursors(request).open("meetings", cursor), principal.tenant_id)
    page = await catalog.list_meetings(
        principal.tenant_id,
        limit=limit + 1,
        after=after,
        where=where,
        live_within_s=STREAM_FRESH_WITHIN_S,
    )
    more, page = len(page) > limit, page[:limit]
    next_link = None
    if more:
        last = page[-1]
        position = {
            "c": last.created_at.isoformat(),
            "m": last.meeting_id,
            "t": _tenant_digest(principal.tenant_id),
        }
        next_cursor = await _cursors(request).seal("meetings", position)
        next_link = _link(request, cursor=next_cursor)
    return JSONResponse({"meetings": [meeting_body(m) for m in page], "next": next_link})


async def get_meeting(request: Request) -> Response:
    meeting_id = request.path_params["meeting_id"]
    principal = authorize_any(request, READ_ROLES, meeting_id)
    summary = await _services(request).catalog.meeting(
        principal.tenant_id, meeting_id, live_within_s=STREAM_FRESH_WITHIN_S
    )
    if summary is None:
        raise HttpError(404, "meeting not found")
    return JSONResponse(meeting_body(summary, streams=True))


async def transcript(request: Request) -> Response:
    """A page of finals (`limit` given, JSON only) or the whole transcript in any export format,
    streamed from the database in batches."""
    meeting_id = request.path_params["meeting_id"]
    principal = authorize_any(request, READ_ROLES, meeting_id)
    params = Params(request)
    fmt = params.text("format") or "json"
    try:
        kind = media_type(fmt)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    after = params.optional_integer("after", low=0, high=MAX_SEGMENT_NO)
    since = params.optional_integer("since", low=0, high=MAX_SEGMENT_NO)  # the older name
    if after is not None and since is not None:
        raise HttpError(400, "give after or since, not both")
    after = after if after is not None else since or 0
    limit = params.optional_integer("limit", low=1, high=MAX_LIMIT * 5)
    services = _services(request)
    store = services.store
    tenant = principal.tenant_id
    if not await store.meeting_exists(tenant, meeting_id):
        raise HttpError(404, "meeting not found")
    labels = await services.catalog.labels(tenant, meeting_id)
    if limit is not None:
        if fmt != "json":
            raise HttpError(400, "limit pages the json format only; other formats come whole")
        page = await store.finals_after(tenant, meeting_id, after, limit=limit + 1)
        more, page = len(page) > limit, page[:limit]
        next_link = _link(request, after=page[-1].segment_no, since=None) if more else None
        timeline = Timeline(await store.stream_starts(tenant, meeting_id))
        return JSONResponse(
            {
                "meeting_id": meeting_id,
                "segments": [json_item(s, timeline) for s in named(page, labels)],
                "next": next_link,
            }
        )

    most = services.settings.exports_per_tenant
    _take_place(
        services,
        services.exports,
        "exports",
        tenant,
        most,
        f"{most} whole exports of this tenant are streaming from this process "
        "(EXPORTS_PER_TENANT); retry, or page the json format with limit",
        retry_after=EXPORT_RETRY_AFTER_S,
    )
    try:
        body = await _export(services, tenant, meeting_id, fmt, after, labels)
    except BaseException:
        services.exports.give_back(tenant)
        raise
    return _ExportResponse(
        body,
        media_type=kind,
        filename=f"{meeting_id}.{fmt}",
        ended=lambda: services.exports.give_back(tenant),
    )


def _take_place(
    services: Services,
    places: TenantSlots,
    limit: str,
    tenant: str,
    most: int,
    refusal: str,
    *,
    retry_after: int,
) -> None:
    """One of the tenant's `most` places in `places`, or 429 with `refusal` (counted in the
    rate-limit metric as `limit`). The caller gives it back."""
    if not places.take(tenant, most):
        services.metrics.limit_hit(limit, tenant)
        raise HttpError(429, refusal, retry_after=retry_after)


async def _still_there(store: TranscriptStore, tenant: str, meeting_id: str) -> None:
    """Raise ExportCutShort unless the meeting is known to exist still: a cut export costs a
    retry, one that ends looking whole while it is not loses the rest unseen."""
    try:
        exists = await store.meeting_exists(tenant, meeting_id)
    except UNAVAILABLE_ERRORS as exc:
        unknown = f"whether its meeting still exists is unknown ({type(exc).__name__})"
        raise ExportCutShort(unknown) from None
    if not exists:
        raise ExportCutShort("its meeting was deleted while it streamed")


class ExportCutShort(Exception):
    """An export that cannot end as whole: its meeting was deleted meanwhile, or that could not
    be checked."""


class _ExportResponse(StreamingResponse):
    """A streamed export that gives its tenant's slot back however the stream ends."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        media_type: str,
        filename: str,
        ended: Callable[[], None],
    ) -> None:
        # Meeting ids hold no quote or backslash (gateway.ids): the name needs no escaping.
        disposition = {"Content-Disposition": f'inline; filename="{filename}"'}
        super().__init__(body, media_type=media_type, headers=disposition)
        self._ended = ended

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ExportCutShort as cut:
            # Returning without the body's end: the server closes the connection unfinished.
            log.warning("export cut short", why=str(cut))
        finally:
            self._ended()


async def _export(
    services: Services,
    tenant: str,
    meeting_id: str,
    fmt: str,
    after: int,
    labels: MeetingLabels,
) -> AsyncIterator[bytes]:
    """The whole transcript after `after` as `fmt`'s text, streamed."""
    store = services.store
    # The first finals are read before the answer starts, so an unavailable database is a 503,
    # not a cut-off 200.
    timeline = Timeline(await store.stream_starts(tenant, meeting_id))
    if fmt in ("srt", "vtt"):  # cues in start order: streams merged
        streams = []
        for stream_id, first_no, last_no in await store.final_streams(tenant, meeting_id):
            if last_no <= after:
                continue  # nothing of it to export

            def read(
                position: int, stream_id: str | None = stream_id, last_no: int = last_no
            ) -> Awaitable[FinalsPage]:
                return store.stream_finals_after(
                    tenant, meeting_id, stream_id, position, STREAM_PAGE, last_no
                )

            # From its first final to its last: a read walks no other stream's finals beyond.
            start = max(after, first_no - 1)
            opened = partial(_paged, read, start, STREAM_PAGE)
            streams.append((timeline.offset(stream_id), opened))
        finals = in_clock_order(streams, timeline)
    else:

        def read_all(position: int) -> Awaitable[FinalsPage]:
            return store.finals_after(tenant, meeting_id, position, limit=EXPORT_BATCH)

        finals = _paged(read_all, after, EXPORT_BATCH)
    first = await anext(finals, None)
    if first is None and not await store.meeting_exists(tenant, meeting_id):
        # Deleted since the request found it: not found, not an empty transcript that looks
        # whole (the answer has not started).
        raise HttpError(404, "meeting not found")

    # Subtitles and text say who spoke; without a speaker, which source (JSON has `source`).
    sources = () if fmt == "json" else await store.final_sources(tenant, meeting_id)

    def labelled(batch: Sequence[FinalSegment]) -> Sequence[FinalSegment]:
        return voiced_by_source(named(batch, labels), sources)

    async def batches() -> AsyncIterator[Sequence[FinalSegment]]:
        if first is None:
            return
        batch: list[FinalSegment] = [first]
        async for final in finals:
            batch.append(final)
            if len(batch) == EXPORT_BATCH:
                yield labelled(batch)
                batch = []
        if batch:
            yield labelled(batch)
        # Its finals ran out: the transcript's end, or the meeting deleted meanwhile (its
        # finals gone from the next page on). A deleted meeting's export must not end as if
        # whole: the connection is cut instead (a client sees the body incomplete).
        await _still_there(store, tenant, meeting_id)

    tips = []
    if fmt == "json" and services.live_tips is not None:  # the live tips citing these finals
        pages = services.live_tips.tips.pages_covering_after(tenant, meeting_id, after)
        tips = [tip_item(tip) async for page in pages for tip in page]
    return (part.encode() async for part in stream(fmt, meeting_id, batches(), tips, timeline))


FinalsPage = list[FinalSegment]


async def _paged(
    read: Callable[[int], Awaitable[FinalsPage]], position: int, size: int
) -> AsyncIterator[FinalSegment]:
    """Finals page by page after number `position`: `read(n)` gives up to `size` after n."""
    while page := await read(position):
        for final in page:
            yield final
        if len(page) < size:
            return
        position = page[-1].segment_no


async def search(request: Request) -> Response:
    params = Params(request)
    # A meeting named outside the token's `meetings` claim is 403, as everywhere else.
    principal = authorize_any(request, READ_ROLES, params.text("meeting"))
    q = params.text("q", max_chars=MAX_QUERY_CHARS)  # one limit, one message, however long
    if q is None:
        raise HttpError(400, "q is required")
    try:
        terms = parse_query(q)
    except QueryError as exc:
        raise HttpError(400, str(exc)) from None
    limit = params.integer("limit", 20, low=1, high=MAX_LIMIT)
    where = SearchFilter(
        meeting_id=params.text("meeting"),
        speaker=params.text("speaker"),
        since=params.moment("since"),
        until=params.moment("until"),
        meeting_ids=principal.meetings,
    )
    # The cursor holds where the last page ended, the newest final the first page could see
    # (finals stored since do not shift the pages) and a digest of the query, so it cannot be
    # replayed against another one.
    digest = _search_digest(principal, q, where)
    services = _services(request)
    catalog = services.catalog
    cursor = params.text("cursor") or None  # empty: as absent
    after = None
    if cursor is not None:
        horizon, after = _search_position(await _cursors(request).open("search", cursor), digest)
    # A search reads the index every tenant's finals share: many at once from one tenant
    # would slow every other tenant's requests on the replica.
    tenant, most = principal.tenant_id, services.settings.searches_per_tenant
    _take_place(
        services,
        services.searches,
        "searches",
        tenant,
        most,
        f"{most} searches of this tenant are running in this process (SEARCHES_PER_TENANT); retry",
        retry_after=SEARCH_RETRY_AFTER_S,
    )
    try:
        if cursor is None:
            horizon = await catalog.search_horizon(tenant)
        hits = await catalog.search(
            tenant, terms, limit=limit + 1, after=after, where=replace(where, up_to_row=horizon)
        )
    finally:
        services.searches.give_back(tenant)
    more, hits = len(hits) > limit, hits[:limit]
    labels = {m: await catalog.labels(principal.tenant_id, m) for m in {h.meeting_id for h in hits}}
    results = []
    for hit in hits:
        found = snippet(hit.text, terms)
        results.append(
            {
                "meeting_id": hit.meeting_id,
                "segment_no": hit.segment_no,
                "start_ms": hit.start_ms,
                "end_ms": hit.end_ms,
                "speaker": labels[hit.meeting_id].name(hit.speaker),
                "speaker_label": hit.speaker,
                "source": hit.source,
                "created_at": _iso(hit.created_at),
                "score": round(hit.score, 6),
                "snippet": found.text,
                "highlights": [list(span) for span in found.highlights],
                "snippet_html": found.as_html(),
                "links": {
                    "meeting": f"/api/v1/meetings/{hit.meeting_id}",
                    "transcript": f"/api/v1/meetings/{hit.meeting_id}/transcript"
                    f"?after={hit.segment_no - 1}&limit=20",
                },
            }
        )
    next_link = None
    if more:
        # The hits shown last, this page's and the pages' before it: one a correction scored
        # lower since is not shown again (`page_after`).
        shown = [*(after.rows if after is not None else ()), *(hit.row_id for hit in hits)]
        rows = shown[-POSITION_ROWS:]
        position = {"h": digest, "t": horizon, "s": hits[-1].score, "r": rows}
        next_link = _link(request, cursor=await _cursors(request).seal("search", position))
    return JSONResponse({"results": results, "next": next_link})


def _search_position(payload: dict[str, Any], digest: str) -> tuple[int, SearchPosition]:
    if payload.get("h") != digest:
        raise HttpError(400, "cursor belongs to another search")
    horizon, score, rows = payload.get("t"), payload.get("s"), payload.get("r")
    if not (
        _row(horizon)
        and isinstance(rows, list)
        and 0 < len(rows) <= POSITION_ROWS
        and all(_row(row) for row in rows)
        and isinstance(score, float)
        and math.isfinite(score)
    ):
        raise HttpError(400, "cursor is not one this server issued")
    return horizon, SearchPosition(tuple(rows), score)


def _row(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= MAX_ROW_ID


def _search_digest(principal: Principal, q: str, where: SearchFilter) -> str:
    key = json.dumps(
        [
            principal.tenant_id,
            q,
            where.meeting_id,
            where.speaker,
            _iso(where.since),
            _iso(where.until),
        ]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# -- edits --------------------------------------------------------------------------------


def _bounded_text(value: object, name: str, limit: int, *, compose: bool = True) -> str:
    # Something to see: a zero-width space or a BOM alone is nothing (a final corrected to one
    # vanished from the SRT, WebVTT and text exports, which drop empty lines).
    if not isinstance(value, str) or not any(unicodedata.category(c)[0] not in "CZ" for c in value):
        raise HttpError(400, f"{name} must be a non-empty string (a visible character at least)")
    # Composed (NFC), as finals from engines are: search finds a word typed with separate
    # combining accents (macOS input, pasted file names) only in this form. Not a speaker
    # label: an engine's identifier, matched exactly.
    value = value.strip()
    if compose:
        value = unicodedata.normalize("NFC", value)
    if len(value) > limit:
        raise HttpError(400, f"{name} is limited to {limit} characters")
    if unclosed_bidi(value):
        # An unclosed override reverses what follows it: the rest of an export's line, the
        # viewer's "(corrected)" mark, the meeting id beside a title.
        raise HttpError(
            400,
            f"{name} holds a bidi embedding, override or isolate (U+202A to U+202E, U+2066 to "
            "U+2068) that is not closed (U+202C, U+2069) within it",
        )
    return value


async def _announce(request: Request, principal: Principal, meeting_id: str, data: bytes) -> None:
    """Tell the meeting's viewers; the edit is stored whatever happens to this message."""
    topic = status_topic(principal.tenant_id, meeting_id)
    try:
        await _services(request).bus.publish(topic, data)
    except Exception as exc:  # a viewer that missed it sees the edit on its next load
        log.warning("edit not announced to viewers", error=type(exc).__name__)


async def edit_meeting(request: Request) -> Response:
    """PATCH: `{"title": str|null, "speakers": {"Speaker 1": "Ayşe", "Speaker 2": null}}`."""
    meeting_id = request.path_params["meeting_id"]
    principal = authorize_any(request, EDIT_ROLES, meeting_id)
    body = await json_body(request, MAX_BODY_BYTES)
    unknown = set(body) - {"title", "speakers"}
    if unknown:
        raise HttpError(400, f"unknown fields: {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    if "title" in body:
        raw = body["title"]
        changes["title"] = None if raw is None else _bounded_text(raw, "title", MAX_TITLE_CHARS)
    if "speakers" in body:
        speakers = body["speakers"]
        if not isinstance(speakers, dict) or len(speakers) > MAX_SPEAKERS:
            raise HttpError(400, f"speakers must be an object of at most {MAX_SPEAKERS} labels")
        changes["speakers"] = {
            _bounded_text(label, "a speaker label", MAX_LABEL_CHARS, compose=False): (
                None if name is None else _bounded_text(name, "a speaker name", MAX_NAME_CHARS)
            )
            for label, name in speakers.items()
        }
    if not changes:
        raise HttpError(400, "give title, speakers or both")
    catalog = _services(request).catalog
    try:
        labels = await catalog.edit_meeting(
            principal.tenant_id, meeting_id, **changes, max_names=MAX_SPEAKERS
        )
    except TooManySpeakerNames:
        raise HttpError(
            400,
            f"a meeting holds at most {MAX_SPEAKERS} speaker names: remove some (null)",
        ) from None
    if labels is None:
        raise HttpError(404, "meeting not found")
    log.info(
        "meeting edited",
        tenant=principal.tenant_id,
        meeting_id=meeting_id,
        fields=sorted(changes),
        by=principal.subject,
    )
    message = MeetingUpdatedMessage(
        meeting_id=meeting_id, title=labels.title, speaker_names=labels.speaker_names
    )
    await _announce(request, principal, meeting_id, message.encode())
    summary = await catalog.meeting(
        principal.tenant_id, meeting_id, live_within_s=STREAM_FRESH_WITHIN_S
    )
    if summary is None:  # deleted since the edit (which viewers were told of, and went with it)
        raise HttpError(404, "meeting not found")
    return JSONResponse(meeting_body(summary, streams=True))


async def correct_segment(request: Request) -> Response:
    """PATCH: `{"text": "..."}` replaces a stored final's text; the original is kept."""
    meeting_id = request.path_params["meeting_id"]
    principal = authorize_any(request, EDIT_ROLES, meeting_id)
    try:
        number = bounded_int(request.path_params["segment_no"], "segment number", 1, MAX_SEGMENT_NO)
    except ParamError as exc:
        raise HttpError(400, str(exc)) from None
    body = await json_body(request, MAX_BODY_BYTES)
    if "text" not in body or not set(body) <= {"text", "previous_text"}:
        raise HttpError(400, 'the body must be {"text": "..."}, with "previous_text" optional')
    text = _bounded_text(body["text"], "text", MAX_TEXT_CHARS)
    previous = body.get("previous_text")
    if previous is not None:
        previous = _bounded_text(previous, "previous_text", MAX_TEXT_CHARS)
    try:
        fixed = await _services(request).catalog.correct_final(
            principal.tenant_id,
            meeting_id,
            number,
            text,
            editor=principal.subject,
            previous_text=previous,
        )
    except FinalChangedMeanwhile as changed:
        by = f" by {changed.edited_by}" if changed.edited_by else ""
        message = f"the final's text is no longer previous_text (corrected{by}): read it again"
        raise HttpError(409, message) from None
    if fixed is None:
        raise HttpError(404, "no stored final with that number in this meeting")
    log.info(
        "final corrected",
        tenant=principal.tenant_id,
        meeting_id=meeting_id,
        segment_no=fixed.segment_no,
        by=principal.subject,
    )
    message = correction_message(meeting_id, fixed, fixed.edited_by)
    await _announce(request, principal, meeting_id, message)
    return JSONResponse(
        {
            "meeting_id": meeting_id,
            "segment_no": fixed.segment_no,
            "text": fixed.text,
            "original_text": fixed.original_text,
            "edited_by": fixed.edited_by,
            "edited_at": _iso(fixed.edited_at),
        }
    )


async def delete_meeting(request: Request) -> Response:
    """DELETE (role admin): the meeting's sockets end 4404 on every replica, then its finals,
    streams, search entries and Redis keys go. Idempotent: 204 either way."""
    meeting_id = request.path_params["meeting_id"]
    principal = authorize_any(request, (ROLE_ADMIN,), meeting_id)
    deleted = await _services(request).deletions.delete(principal.tenant_id, meeting_id)
    # The audit line: who deleted what, when (the log's timestamp); no transcript text.
    log.info(
        "meeting deleted",
        tenant=principal.tenant_id,
        meeting_id=meeting_id,
        by=principal.subject,
        existed=deleted,
    )
    return Response(status_code=204)
