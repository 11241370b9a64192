"""Direct frame writes as the server offers them: the ASGI scope extension and the transports
that may take them. Server-neutral: the uvicorn protocol that offers the extension lives in
gateway/server/websocket.py; `fanout.delivery` uses the writer when it is there and falls back to
`websocket.send` when it is not."""

from __future__ import annotations

from typing import Any

DIRECT_FRAMES = "meeting_gateway.direct_frames"


def frame_writer(scope: Any) -> Any:
    """The direct `FrameWriter` of a WebSocket scope, or None when the server offers none."""
    extension = (scope.get("extensions") or {}).get(DIRECT_FRAMES)
    return None if extension is None else extension.get("writer")


def plain_socket_fd(transport: Any) -> int:
    """The descriptor bytes may be written to directly, or -1.

    Only a plain TCP transport qualifies: under TLS the socket carries encrypted records, so a
    frame written to its descriptor would go out in clear text and corrupt the TLS stream. Any
    transport with TLS, or without a socket of its own, keeps every frame on the queued path
    (`write`, through the transport)."""
    if transport.get_extra_info("sslcontext") is not None:
        return -1
    if transport.get_extra_info("ssl_object") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    return -1 if sock is None else sock.fileno()
