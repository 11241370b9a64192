"""The OpenAPI document of the REST API, served at `/api/v1/openapi.json` so clients can be
generated. docs/protocol.md is the prose; this is the same contract as data, and
tests/gateway/test_openapi.py fails when a REST route is missing from it or it names a route
the app does not have. The WebSocket endpoints are described in docs/protocol.md only (OpenAPI
has no words for them).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from store.webhooks import EVENT_TYPES

VERSION = "1"

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
            "required": ["status", "message"],
        }
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def _path(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


def _json(
    schema: dict[str, Any], description: str = "OK", headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = {"description": description, "content": {"application/json": {"schema": schema}}}
    return response if headers is None else {**response, "headers": headers}


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


# Every 429 and 507, and the answers that say when to come back, carry it.
_RETRY_AFTER = {"Retry-After": _header("seconds to wait before retrying", {"type": "integer"})}


def _retry(description: str) -> dict[str, Any]:
    """An Error answer that says, in Retry-After, when to try again."""
    return _json(_ref("Error"), description, _RETRY_AFTER)


# An upload's answer: its job, and the query and form fields that are not options, if any.
_UPLOADED = {
    "allOf": [
        _ref("RecordingJob"),
        {
            "type": "object",
            "properties": {
                "ignored_options": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "fields sent that are not options, ignored (at most 16, "
                    "each cut to 64 characters); absent when there were none",
                }
            },
        },
    ]
}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "a parameter breaks its rule (the message names it)",
        401: "no valid token",
        403: "the token lacks the role, or is bound to other meetings",
        404: "the tenant has no such meeting (or webhook endpoint)",
        409: "the final's text is no longer `previous_text` (another correction came first)",
        413: "the body is too large",
        415: "the body is not JSON",
        503: "a dependency (database, bus) is unavailable, or the database's connections are "
        "all in use; retry after Retry-After",
    }
    answers = {str(s): _json(_ref("Error"), reasons[s]) for s in statuses}
    if "401" in answers:  # RFC 6750: the scheme to use
        answers["401"]["headers"] = {"WWW-Authenticate": _header("Bearer")}
    if "503" in answers:
        answers["503"]["headers"] = _RETRY_AFTER
    return answers


_STRING = {"type": "string"}
_INT = {"type": "integer"}
_TIME = {"type": "string", "format": "date-time"}
_MEETING_ID = _path("meeting_id")
_LIMIT = _query("limit", _INT, "page size")
_CURSOR = _query("cursor", _STRING, "from the previous page's `next` link")
_SINCE = _query("since", _TIME, "at or after (ISO 8601; UTC without an offset)")
_UNTIL = _query("until", _TIME, "before (ISO 8601)")
_BEARER = [{"bearer": []}]

_COUNTS = {"type": "object", "additionalProperties": _INT}  # by role, type, limit or code


def _null_or(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


GATEWAY_STATS = {
    "type": "object",
    "description": "docs/protocol.md, REST API: this replica's figures for the token's tenant",
    "properties": {
        "replica_id": _STRING,
        "tenant": _STRING,
        "uptime_s": {"type": "number"},
        "started_at": _TIME,
        "connections": _COUNTS,
        "connections_total": _COUNTS,
        "closes_by_code": _COUNTS,
        "active_meetings": _INT,
        "ingest_streams": _INT,
        "heartbeat_timeouts": _INT,
        "messages_in": _INT,
        "messages_out": _INT,
        "messages_delivered": _COUNTS,
        "audio_frames_in": _INT,
        "partials_published": _INT,
        "finals_published": _INT,
        "finals_replayed": _INT,
        "partials_coalesced": _INT,
        "publish_failures": _INT,
        "rate_limit_rejections": _COUNTS,
        "outbox": {
            "type": "object",
            "properties": {
                "depth": _INT,
                "oldest_age_s": {"type": "number"},
                "store_reachable": {"type": "boolean"},
            },
            "required": ["depth", "oldest_age_s", "store_reachable"],
        },
    },
}
GATEWAY_STATS["required"] = list(GATEWAY_STATS["properties"])

MEETING_STATS = {
    "type": "object",
    "description": "docs/protocol.md, REST API; what the database or Redis would say is null "
    "while it is down, and `unavailable` names which",
    "properties": {
        "meeting_id": _STRING,
        "subscribers": _null_or(_INT),
        "local_subscribers": _INT,
        "ingest_streams": _null_or(
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "stream_id": _STRING,
                        "source": _STRING,
                        "engine": _null_or(_STRING),
                        "audio_seconds": {"type": "number"},
                        "frames": _INT,
                        "sample_rate": _INT,
                        "channels": _INT,
                        "started_at": _TIME,
                    },
                    "required": [
                        "stream_id",
                        "source",
                        "engine",
                        "audio_seconds",
                        "frames",
                        "sample_rate",
                        "channels",
                        "started_at",
                    ],
                },
            }
        ),
        "final_count": _null_or(_INT),
        "last_segment_no": _null_or(_INT),
        "unavailable": {
            "type": "array",
            "items": {"type": "string", "enum": ["database", "bus"]},
            "description": "absent when every dependency answered",
        },
    },
    "required": [
        "meeting_id",
        "subscribers",
        "local_subscribers",
        "ingest_streams",
        "final_count",
        "last_segment_no",
    ],
}

SEGMENT = {
    "type": "object",
    "properties": {
        "segment_no": _INT,
        "text": _STRING,
        "start_ms": _INT,
        "end_ms": _INT,
        "speaker": {"type": "string", "nullable": True},
        "confidence": {"type": "number", "nullable": True},
        "source": _STRING,
        "stream_id": {
            "type": "string",
            "nullable": True,
            "description": "the stream it came from (a meeting's streams[]); null when unknown",
        },
        "meeting_start_ms": {
            **_INT,
            "description": "start on the meeting's clock (from its first stream's start), as "
            "SRT, WebVTT and text place it; start_ms is on its own stream's clock",
        },
        "meeting_end_ms": {**_INT, "description": "end on the meeting's clock"},
    },
    "required": ["segment_no", "text", "start_ms", "end_ms", "speaker", "confidence", "source"],
}
STREAM = {
    "type": "object",
    "properties": {
        "stream_id": _STRING,
        "source": _STRING,
        "engine": {**_STRING, "description": "serving now, or the one it ended on"},
        "engines": {"type": "array", "items": _STRING, "description": "every one, in order"},
        "sample_rate": _INT,
        "channels": _INT,
        "started_at": _TIME,
        "audio_started_at": {
            **_TIME,
            "nullable": True,
            "description": "when its audio began, for a stream that resumed another (its "
            "handshake's resumes): before started_at; exports place it from here",
        },
        "ended_at": {**_TIME, "nullable": True},
        "audio_seconds": {"type": "number"},
    },
}
STREAM["required"] = list(STREAM["properties"])
MEETING = {
    "type": "object",
    "properties": {
        "id": _STRING,
        "created_at": _TIME,
        "last_activity_at": _TIME,
        "duration_s": {"type": "number"},
        "final_count": _INT,
        "last_segment_no": _INT,
        "sources": {"type": "array", "items": _STRING},
        "engines": {"type": "array", "items": _STRING},
        "speakers": {"type": "array", "items": _STRING},
        "live": {"type": "boolean"},
        "title": {"type": "string", "nullable": True},
        "speaker_names": {"type": "object", "additionalProperties": _STRING},
        "links": {"type": "object", "additionalProperties": _STRING},
        "streams": {
            "type": "array",
            "items": _ref("Stream"),
            "description": "one meeting's answer only (not in the list)",
        },
    },
}
MEETING["required"] = [name for name in MEETING["properties"] if name != "streams"]
SEARCH_HIT = {
    "type": "object",
    "properties": {
        "meeting_id": _STRING,
        "segment_no": _INT,
        "start_ms": _INT,
        "end_ms": _INT,
        "speaker": {"type": "string", "nullable": True},
        "speaker_label": {"type": "string", "nullable": True},
        "source": _STRING,
        "created_at": _TIME,
        "score": {"type": "number"},
        "snippet": _STRING,
        "highlights": {
            "type": "array",
            "items": {"type": "array", "items": _INT, "minItems": 2, "maxItems": 2},
        },
        "snippet_html": _STRING,
        "links": {"type": "object", "additionalProperties": _STRING},
    },
}
SEARCH_HIT["required"] = list(SEARCH_HIT["properties"])
_NEXT = {"type": "string", "nullable": True, "description": "the next page, or null"}
TIP = {
    "type": "object",
    "properties": {
        "tip_no": _INT,
        "kind": _STRING,
        "text": _STRING,
        "owner": {"type": "string", "nullable": True},
        "due": {"type": "string", "nullable": True},
        "segment_nos": {"type": "array", "items": _INT},
        "ts": _TIME,
    },
    "required": ["tip_no", "kind", "text", "owner", "due", "segment_nos", "ts"],
}
RECORDING_JOB_FIELDS = [
    "id",
    "status",
    "meeting_id",
    "stage",
    "progress",
    "percent",
    "audio_seconds_done",
    "audio_seconds_total",
    "eta_seconds",
    "engine",
    "engines",
    "attempts",
    "error",
    "finals",
    "last_segment_no",
    "label",
    "language",
    "diarize",
    "split_channels",
    "created_at",
    "started_at",
    "finished_at",
    "links",
]
_ENDPOINT_ID = _path("endpoint_id")
_WEBHOOK_EVENT = {"type": "string", "enum": list(EVENT_TYPES)}
_NULLABLE_STRING = {"type": "string", "nullable": True}
WEBHOOK_ENDPOINT = {
    "type": "object",
    "description": "docs/protocol.md, Webhooks",
    "properties": {
        "id": _STRING,
        "url": _STRING,
        "events": {"type": "array", "items": _WEBHOOK_EVENT},
        "description": _NULLABLE_STRING,
        "source": {"type": "string", "enum": ["api", "file"]},
        "created_at": _TIME,
        "secret": {
            "type": "string",
            "description": "whsec_...; in the answers of creation and rotation only",
        },
        "previous_secret_expires_at": {
            **_TIME,
            "description": "after a rotation: until then the old secret signs too",
        },
        "links": {"type": "object", "additionalProperties": _STRING},
    },
    "required": ["id", "url", "events", "description", "source", "created_at", "links"],
}
WEBHOOK_DELIVERY = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "the webhook-id header"},
        "event": _WEBHOOK_EVENT,
        "meeting_id": _STRING,
        "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
        "attempts": _INT,
        "last_status_code": {"type": "integer", "nullable": True},
        "last_error": _NULLABLE_STRING,
        "created_at": _TIME,
        "next_attempt_at": {**_TIME, "nullable": True},
        "delivered_at": {**_TIME, "nullable": True},
    },
}
WEBHOOK_DELIVERY["required"] = list(WEBHOOK_DELIVERY["properties"])

PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/meetings": {
        "get": {
            "summary": "The tenant's meetings, newest first",
            "parameters": [
                _LIMIT,
                _CURSOR,
                _query("active", {"type": "boolean"}, "a stream is live (true) or none (false)"),
                _SINCE,
                _UNTIL,
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "meetings": {"type": "array", "items": _ref("Meeting")},
                            "next": _NEXT,
                        },
                    }
                ),
                **_errors(400, 401, 403, 503),
            },
        }
    },
    "/api/v1/meetings/{meeting_id}": {
        "get": {
            "summary": "One meeting, with its streams",
            "parameters": [_MEETING_ID],
            "responses": {"200": _json(_ref("Meeting")), **_errors(400, 401, 403, 404, 503)},
        },
        "patch": {
            "summary": "Set the title and speaker names (role editor or ingest)",
            "parameters": [_MEETING_ID],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "title": {"type": "string", "nullable": True, "maxLength": 200},
                                "speakers": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string", "nullable": True},
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(_ref("Meeting")),
                **_errors(400, 401, 403, 404, 413, 415, 503),
            },
        },
        "delete": {
            "summary": "Delete the meeting everywhere (role admin); idempotent",
            "parameters": [_MEETING_ID],
            "responses": {
                "204": {"description": "deleted, or nothing there"},
                **_errors(400, 401, 403, 503),
            },
        },
    },
    "/api/v1/meetings/{meeting_id}/segments/{segment_no}": {
        "patch": {
            "summary": "Correct a stored final's text; the original is kept",
            "parameters": [_MEETING_ID, _path("segment_no", _INT)],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "text": {"type": "string", "maxLength": 10000},
                                # Made from this text: 409 if the final has another now.
                                "previous_text": {"type": "string", "maxLength": 10000},
                            },
                            "required": ["text"],
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "meeting_id": _STRING,
                            "segment_no": _INT,
                            "text": _STRING,
                            "original_text": _STRING,
                            "edited_by": _STRING,
                            "edited_at": _TIME,
                        },
                    }
                ),
                **_errors(400, 401, 403, 404, 409, 413, 415, 503),
            },
        }
    },
    "/api/v1/meetings/{meeting_id}/notes": {
        "get": {
            "summary": "Post-meeting notes: the stored ones (state ready), else a rules preview",
            "parameters": [_MEETING_ID],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "meeting_id": _STRING,
                            "finals": _INT,
                            "summary": _STRING,
                            "decisions": {"type": "array", "items": _STRING},
                            "action_items": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "text": _STRING,
                                        "owner": _NULLABLE_STRING,
                                        "due": _NULLABLE_STRING,
                                    },
                                },
                            },
                            "questions": {"type": "array", "items": _STRING},
                            "backend": _STRING,
                            "state": {
                                "type": "string",
                                "enum": ["ready", "pending", "failed", "none"],
                            },
                            "generated_at": _NULLABLE_STRING,
                            "error": _NULLABLE_STRING,
                        },
                    },
                    "the notes",
                ),
                **_errors(400, 401, 403, 404, 503),
                "429": _retry("previews of two other meetings of the tenant queued"),
            },
        },
        "post": {
            "summary": "Make the meeting's notes again (role editor or ingest)",
            "parameters": [_MEETING_ID],
            "responses": {
                "202": _json(
                    {
                        "type": "object",
                        "properties": {
                            "meeting_id": _STRING,
                            "state": {"type": "string", "enum": ["pending"]},
                        },
                    },
                    "requested",
                ),
                **_errors(400, 401, 403, 404, 503),
            },
        },
    },
    "/api/v1/meetings/{meeting_id}/transcript": {
        "get": {
            "summary": "Finals: whole in an export format, or a JSON page with `limit`",
            "parameters": [
                _MEETING_ID,
                _query("format", {"type": "string", "enum": ["json", "srt", "vtt", "txt"]}, ""),
                _query("after", _INT, "finals with a larger segment_no (since= is the old name)"),
                _query("since", _INT, "the older name of after"),
                _query("limit", _INT, "a page of at most this many (json only)"),
            ],
            "responses": {
                "200": {
                    "description": "the transcript",
                    "headers": {
                        "Content-Disposition": _header(
                            'a whole export: inline; filename="{meeting_id}.{format}"'
                        )
                    },
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "meeting_id": _STRING,
                                    "segments": {"type": "array", "items": _ref("Segment")},
                                    "next": {**_NEXT, "description": "a page's (limit) only"},
                                    "tips": {
                                        "type": "array",
                                        "items": TIP,
                                        "description": "a whole export's only: the live tips "
                                        "citing its finals",
                                    },
                                },
                                "required": ["meeting_id", "segments"],
                            }
                        },
                        "application/x-subrip": {"schema": _STRING},
                        "text/vtt": {"schema": _STRING},
                        "text/plain": {"schema": _STRING},
                    },
                },
                **_errors(400, 401, 403, 404, 503),
                "429": _retry("EXPORTS_PER_TENANT whole exports of the tenant streaming"),
            },
        }
    },
    "/api/v1/search": {
        "get": {
            "summary": "Full-text search over the tenant's finals, best first",
            "parameters": [
                {**_query("q", _STRING, 'words, "phrases" and prefixes (budg*)'), "required": True},
                _query("meeting", _STRING, "one meeting"),
                _query("speaker", _STRING, "the engine's speaker label"),
                _SINCE,
                _UNTIL,
                _LIMIT,
                _CURSOR,
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "results": {"type": "array", "items": _ref("SearchHit")},
                            "next": _NEXT,
                        },
                    }
                ),
                **_errors(400, 401, 403, 503),
                "429": _retry("SEARCHES_PER_TENANT searches of the tenant running"),
            },
        }
    },
    "/api/v1/meetings/{meeting_id}/recordings": {
        "post": {
            "summary": "Upload a recording to transcribe into the meeting (role ingest)",
            "parameters": [
                _MEETING_ID,
                _query("language", _STRING, "en, tr, ..., or auto"),
                _query("engine", _STRING, "one of the configured engines; default the chain"),
                _query("diarize", {"type": "boolean"}, "speakers where the engine can"),
                _query("label", _STRING, "the finals' source (default recording)"),
                _query(
                    "split_channels",
                    {"type": "boolean"},
                    "transcribe each channel on its own; speaker ch1, ch2, ... (default false)",
                ),
                {"name": "Idempotency-Key", "in": "header", "schema": _STRING},
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    },
                    **{
                        media: {"schema": {"type": "string", "format": "binary"}}
                        for media in (
                            "audio/*",
                            "video/*",
                            "application/ogg",
                            "application/octet-stream",
                        )
                    },
                },
            },
            "responses": {
                "202": _json(
                    _UPLOADED,
                    "queued",
                    {"Location": _header("the job: /api/v1/recordings/{job_id}")},
                ),
                "200": _json(_UPLOADED, "the job of this Idempotency-Key"),
                **_errors(400, 401, 403, 413, 415),
                "503": _retry("a dependency is unavailable, or the replica is draining"),
                "409": _json(
                    _ref("Error"),
                    "Idempotency-Key used for another meeting, or the meeting was deleted "
                    "(within 2 minutes: Retry-After says how long is left; or while the body "
                    "came)",
                    _RETRY_AFTER,
                ),
                "422": _json(
                    _ref("Error"), "the file cannot be decoded (or split_channels on over 8)"
                ),
                "429": _retry(
                    "the tenant's queue is full, or RECORDING_UPLOADS_PER_TENANT of its uploads "
                    "are coming in"
                ),
                "507": _retry("the disk budget, or the tenant's share of it, is used up"),
            },
        },
        "get": {
            "summary": "The meeting's recording jobs (role viewer or ingest)",
            "parameters": [_MEETING_ID],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "meeting_id": _STRING,
                            "recordings": {"type": "array", "items": _ref("RecordingJob")},
                        },
                        "required": ["meeting_id", "recordings"],
                    },
                    "the jobs, oldest first",
                ),
                **_errors(400, 401, 403, 404, 503),
            },
        },
    },
    "/api/v1/recordings/{job_id}": {
        "get": {
            "summary": "A recording job: status, stage, progress, ETA, engine, error",
            "parameters": [_path("job_id")],
            "responses": {"200": _json(_ref("RecordingJob")), **_errors(401, 403, 404, 503)},
        },
        "delete": {
            "summary": "Cancel a queued or running job (role ingest); stored finals stay",
            "parameters": [_path("job_id")],
            "responses": {
                "200": _json(_ref("RecordingJob"), "cancelled (or had already ended)"),
                "202": _json(_ref("RecordingJob"), "running: cancelled within about a second"),
                **_errors(401, 403, 404, 503),
            },
        },
    },
    "/api/v1/recordings/{job_id}/events": {
        "get": {
            "summary": "Server-Sent Events: stage, progress, final, end (Last-Event-ID resumes)",
            "parameters": [
                _path("job_id"),
                {"name": "Last-Event-ID", "in": "header", "schema": _STRING},
                _query("last_event_id", _STRING, "as the header, for clients that cannot set it"),
            ],
            "responses": {
                "200": {
                    "description": "an event stream",
                    "content": {"text/event-stream": {"schema": _STRING}},
                },
                **_errors(400, 401, 403, 404, 503),
            },
        }
    },
    "/api/v1/ws/stats": {
        "get": {
            "summary": "This replica's figures for the token's tenant (role ops)",
            "responses": {"200": _json(_ref("GatewayStats")), **_errors(401, 403)},
        }
    },
    "/api/v1/ws/meetings/{meeting_id}/stats": {
        "get": {
            "summary": "A meeting's subscribers, streams and finals (role ops)",
            "parameters": [_MEETING_ID],
            "responses": {"200": _json(_ref("MeetingStats")), **_errors(400, 401, 403, 503)},
        }
    },
    "/api/v1/webhooks": {
        "post": {
            "summary": "Register a webhook endpoint for the tenant (role admin)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "url": {"type": "string", "maxLength": 2048},
                                "events": {"type": "array", "items": _WEBHOOK_EVENT},
                                "description": {"type": "string", "maxLength": 200},
                            },
                            "required": ["url"],
                        }
                    }
                },
            },
            "responses": {
                "201": _json(_ref("WebhookEndpoint"), "created; `secret` is shown this once"),
                **_errors(400, 401, 403, 413, 415, 503),
                "409": _json(
                    _ref("Error"), "the tenant has 20 endpoints already, or one for this url"
                ),
            },
        },
        "get": {
            "summary": "The tenant's webhook endpoints (role admin)",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "webhooks": {"type": "array", "items": _ref("WebhookEndpoint")}
                        },
                    }
                ),
                **_errors(400, 401, 403, 503),
            },
        },
    },
    "/api/v1/webhooks/{endpoint_id}": {
        "get": {
            "summary": "One webhook endpoint (role admin)",
            "parameters": [_ENDPOINT_ID],
            "responses": {
                "200": _json(_ref("WebhookEndpoint")),
                **_errors(400, 401, 403, 404, 503),
            },
        },
        "delete": {
            "summary": "Remove a webhook endpoint and its pending deliveries (role admin)",
            "parameters": [_ENDPOINT_ID],
            "responses": {
                "204": {"description": "removed"},
                **_errors(400, 401, 403, 404, 503),
                "409": _json(_ref("Error"), "defined in WEBHOOKS_FILE"),
            },
        },
    },
    "/api/v1/webhooks/{endpoint_id}/deliveries": {
        "get": {
            "summary": "The endpoint's deliveries, newest first (role admin)",
            "parameters": [_ENDPOINT_ID, _LIMIT, _CURSOR],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "deliveries": {"type": "array", "items": _ref("WebhookDelivery")},
                            "next": _NEXT,
                        },
                    }
                ),
                **_errors(400, 401, 403, 404, 503),
            },
        }
    },
    "/api/v1/webhooks/{endpoint_id}/secret": {
        "post": {
            "summary": "Rotate the endpoint's signing secret (role admin)",
            "parameters": [
                _ENDPOINT_ID,
                _query(
                    "grace_s",
                    {"type": "integer", "minimum": 0, "maximum": 604800},
                    "how long the old secret signs beside the new one (default 86400)",
                ),
            ],
            "responses": {
                "200": _json(_ref("WebhookEndpoint"), "the new `secret`, shown this once"),
                **_errors(400, 401, 403, 404, 503),
                "409": _json(_ref("Error"), "defined in WEBHOOKS_FILE"),
            },
        }
    },
    "/api/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": _json({"type": "object"})},
        }
    },
    **{
        path: {
            "get": {
                "summary": f"The {what} WebSocket (docs/protocol.md); a plain HTTP request is 426",
                "security": [],
                "parameters": [_MEETING_ID],
                "responses": {
                    "101": {"description": "a WebSocket client's upgrade"},
                    "426": _json(_ref("Error"), "not a WebSocket upgrade"),
                },
            }
        }
        for path, what in (
            ("/api/v1/ws/ingest/meetings/{meeting_id}", "ingest"),
            ("/api/v1/ws/meetings/{meeting_id}", "viewer"),
        )
    },
    "/healthz": {
        "get": {
            "summary": "The process is up",
            "security": [],
            "responses": {"200": _json({"type": "object"})},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Database and bus answer and the replica is not draining (`engines` is "
            "reported, not required)",
            "security": [],
            "responses": {
                "200": _json({"type": "object"}),
                "503": _json({"type": "object"}, "not ready; `checks` names what failed"),
            },
        }
    },
    "/readyz/ingest": {
        "get": {
            "summary": "As /readyz, and an engine can take a stream (a route of ingest alone)",
            "security": [],
            "responses": {
                "200": _json({"type": "object"}),
                "503": _json({"type": "object"}, "not ready; `checks` names what failed"),
            },
        }
    },
    "/readyz/live": {
        "get": {
            "summary": "As /readyz, with the database reported, not required, once its schema "
            "was checked (live streams and viewers ride out its outage)",
            "security": [],
            "responses": {
                "200": _json({"type": "object"}),
                "503": _json({"type": "object"}, "not ready; `checks` names what failed"),
            },
        }
    },
    "/viewer": {
        "get": {
            "summary": "The live viewer page (HTML)",
            "security": [],
            "parameters": [
                _query("meeting", _STRING, "the meeting to watch; without it the page asks")
            ],
            "responses": {
                "200": {"description": "the page", "content": {"text/html": {"schema": _STRING}}},
                "400": {"description": "a malformed or repeated meeting id, with the rule"},
            },
        }
    },
    "/viewer/static/{name}": {
        "get": {
            "summary": "The viewer page's script and style sheet",
            "security": [],
            "parameters": [_path("name")],
            "responses": {"200": {"description": "the file"}, "404": {"description": "no such"}},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus text format (unless METRICS_PORT moves it to its own port)",
            "security": [],
            "responses": {
                "200": {"description": "metrics", "content": {"text/plain": {"schema": _STRING}}}
            },
        }
    },
}


# Each operation's name for generated clients (a method's name) and its group, stable: a
# client's code calls these.
OPERATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("get", "/api/v1/meetings"): ("listMeetings", "meetings"),
    ("get", "/api/v1/meetings/{meeting_id}"): ("getMeeting", "meetings"),
    ("patch", "/api/v1/meetings/{meeting_id}"): ("editMeeting", "meetings"),
    ("delete", "/api/v1/meetings/{meeting_id}"): ("deleteMeeting", "meetings"),
    ("patch", "/api/v1/meetings/{meeting_id}/segments/{segment_no}"): (
        "correctSegment",
        "meetings",
    ),
    ("get", "/api/v1/meetings/{meeting_id}/notes"): ("getNotes", "notes"),
    ("post", "/api/v1/meetings/{meeting_id}/notes"): ("requestNotes", "notes"),
    ("get", "/api/v1/meetings/{meeting_id}/transcript"): ("getTranscript", "meetings"),
    ("get", "/api/v1/search"): ("search", "search"),
    ("post", "/api/v1/meetings/{meeting_id}/recordings"): ("uploadRecording", "recordings"),
    ("get", "/api/v1/meetings/{meeting_id}/recordings"): ("listRecordings", "recordings"),
    ("get", "/api/v1/recordings/{job_id}"): ("getRecording", "recordings"),
    ("delete", "/api/v1/recordings/{job_id}"): ("cancelRecording", "recordings"),
    ("get", "/api/v1/recordings/{job_id}/events"): ("recordingEvents", "recordings"),
    ("get", "/api/v1/ws/stats"): ("gatewayStats", "operations"),
    ("get", "/api/v1/ws/meetings/{meeting_id}/stats"): ("meetingStats", "operations"),
    ("post", "/api/v1/webhooks"): ("createWebhook", "webhooks"),
    ("get", "/api/v1/webhooks"): ("listWebhooks", "webhooks"),
    ("get", "/api/v1/webhooks/{endpoint_id}"): ("getWebhook", "webhooks"),
    ("delete", "/api/v1/webhooks/{endpoint_id}"): ("deleteWebhook", "webhooks"),
    ("get", "/api/v1/webhooks/{endpoint_id}/deliveries"): ("listWebhookDeliveries", "webhooks"),
    ("post", "/api/v1/webhooks/{endpoint_id}/secret"): ("rotateWebhookSecret", "webhooks"),
    ("get", "/api/v1/openapi.json"): ("getOpenApi", "operations"),
    ("get", "/api/v1/ws/ingest/meetings/{meeting_id}"): ("ingestSocket", "websockets"),
    ("get", "/api/v1/ws/meetings/{meeting_id}"): ("viewerSocket", "websockets"),
    ("get", "/healthz"): ("healthz", "operations"),
    ("get", "/readyz"): ("readyz", "operations"),
    ("get", "/readyz/ingest"): ("readyzIngest", "operations"),
    ("get", "/readyz/live"): ("readyzLive", "operations"),
    ("get", "/viewer"): ("viewerPage", "viewer"),
    ("get", "/viewer/static/{name}"): ("viewerStatic", "viewer"),
    ("get", "/metrics"): ("metrics", "operations"),
}


def _named(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        path: {
            method: {
                "operationId": OPERATIONS[method, path][0],
                "tags": [OPERATIONS[method, path][1]],
                **operation,
            }
            for method, operation in operations.items()
        }
        for path, operations in paths.items()
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "meeting-gateway",
            "version": VERSION,
            "description": "REST API of the meeting-gateway; the WebSocket endpoints and every "
            "message are in docs/protocol.md.",
        },
        "security": _BEARER,
        "paths": _named(PATHS),
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "Error": _ERROR,
                "GatewayStats": GATEWAY_STATS,
                "MeetingStats": MEETING_STATS,
                "Segment": SEGMENT,
                "Stream": STREAM,
                "Meeting": MEETING,
                "SearchHit": SEARCH_HIT,
                "WebhookEndpoint": WEBHOOK_ENDPOINT,
                "WebhookDelivery": WEBHOOK_DELIVERY,
                "RecordingJob": {
                    "type": "object",
                    "description": "docs/protocol.md, Recordings",
                    "properties": {
                        "id": _STRING,
                        "status": {
                            "type": "string",
                            "enum": ["queued", "running", "succeeded", "failed", "cancelled"],
                        },
                        "meeting_id": _STRING,
                        "stage": _STRING,
                        "progress": {"type": "number"},
                        "percent": {"type": "number"},
                        "audio_seconds_done": {"type": "number"},
                        "audio_seconds_total": {"type": "number"},
                        "eta_seconds": {"type": "number", "nullable": True},
                        "engine": {"type": "string", "nullable": True},
                        "engines": {"type": "object", "additionalProperties": {"type": "number"}},
                        "attempts": {"type": "integer"},
                        "error": {"type": "string", "nullable": True},
                        "finals": {"type": "integer"},
                        "last_segment_no": {"type": "integer", "nullable": True},
                        "label": _STRING,
                        "language": _STRING,
                        "diarize": {"type": "boolean"},
                        "split_channels": {"type": "boolean"},
                        "created_at": _TIME,
                        "started_at": {**_TIME, "nullable": True},
                        "finished_at": {**_TIME, "nullable": True},
                        "links": {"type": "object", "additionalProperties": _STRING},
                    },
                    "required": RECORDING_JOB_FIELDS,
                },
            },
        },
    }


_DOCUMENT = document()


async def openapi(_: Request) -> Response:
    return JSONResponse(_DOCUMENT)
