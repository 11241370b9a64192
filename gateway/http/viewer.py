"""`GET /viewer?meeting=ID`: the live viewer page, plain HTML/CSS/JS shipped in `gateway/static/`.

The page is static: it reads the meeting id from its own query string and the token from the URL
fragment (`#token=JWT`, which browsers never send to the server) or from a field the reader fills
in, then talks to the subscriber WebSocket and the transcript REST endpoint like any client.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.ids import ID_RULE, valid_id
from gateway.params import ParamError, single

STATIC_FILES = {"viewer.js": "text/javascript", "viewer.css": "text/css"}

# No inline script or style anywhere; the WebSocket and REST calls go to this origin only
# ('self' covers ws:/wss: to the same host in CSP Level 3 browsers).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


@cache
def _static(name: str) -> bytes:
    return resources.files("gateway").joinpath("static", name).read_bytes()


async def viewer_page(request: Request) -> Response:
    # No meeting: the page asks for one. A malformed one is refused here, with the rule, and so
    # is a repeated one (the page would follow the first, a check here the last).
    try:
        meeting = single(request.query_params, "meeting") or None  # empty: left out
    except ParamError as exc:
        return _bad_request(str(exc))
    if meeting is not None and not valid_id(meeting):
        return _bad_request(f"meeting must be {ID_RULE}")
    return Response(
        _static("viewer.html"),
        media_type="text/html; charset=utf-8",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-store"},
    )


def _bad_request(reason: str) -> Response:
    return PlainTextResponse(f"400 Bad Request: {reason}\n", 400, headers=SECURITY_HEADERS)


async def viewer_asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        return PlainTextResponse("404 Not Found\n", 404, headers=SECURITY_HEADERS)
    return Response(
        _static(name),
        media_type=f"{media_type}; charset=utf-8",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


routes = [
    Route("/viewer", viewer_page),
    Route("/viewer/static/{name}", viewer_asset),
]
