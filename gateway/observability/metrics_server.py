"""`/metrics` on a port of its own (METRICS_PORT), so the main port, which the public edge reaches,
does not serve it at all.

A minimal HTTP/1.1 responder on the application's event loop: it reads one request head (bounded
in size and time), answers `GET /metrics` (or HEAD) with the Prometheus text, anything else with
404 or 405, and closes the connection (scrapers open one per scrape). With `serve --workers N`
every worker binds the same port with SO_REUSEPORT and the kernel picks one per connection; each
answers for the whole replica (gateway/observability/metrics.py, multiprocess directory).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from gateway.observability.logs import get_logger

log = get_logger("gateway.metrics_server")

MAX_HEAD_BYTES = 16384
HEAD_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0

Render = Callable[[], tuple[bytes, str]]  # (body, content type)


class MetricsPortUnavailable(RuntimeError):
    """METRICS_PORT could not be bound; the message says which address and why."""


@contextlib.asynccontextmanager
async def serving_metrics(
    render: Render, host: str, port: int, *, reuse_port: bool = False
) -> AsyncIterator[asyncio.Server]:
    """Serve `render()` as `/metrics` on host:port while the context is open."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _answer(reader, writer, render)
        except Exception as exc:  # a peer that vanished or sent nonsense: nothing to keep
            log.debug("metrics request failed", error=type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        server = await asyncio.start_server(
            handle, host, port, limit=MAX_HEAD_BYTES, reuse_port=reuse_port or None
        )
    except OSError as exc:
        raise MetricsPortUnavailable(
            f"cannot serve /metrics on {host}:{port} (METRICS_HOST, METRICS_PORT): "
            f"{exc.strerror or exc}"
        ) from None
    log.info("serving /metrics on its own port", host=host, port=port)
    try:
        yield server
    finally:
        server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await server.wait_closed()


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, render: Render
) -> None:
    try:
        async with asyncio.timeout(HEAD_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return  # slow, truncated or oversized head: close without an answer
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    method, target = (parts[0], parts[1]) if len(parts) == 3 else ("", "")
    path = target.split("?", 1)[0]
    if path != "/metrics":
        status, body, content_type = "404 Not Found", b"not found: only /metrics here\n", None
    elif method not in ("GET", "HEAD"):
        status, body, content_type = "405 Method Not Allowed", b"GET /metrics only\n", None
    else:
        status, (body, content_type) = "200 OK", render()
    headers = (
        f"HTTP/1.1 {status}\r\n"
        f"content-type: {content_type or 'text/plain; charset=utf-8'}\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode("latin-1")
    writer.write(headers if method == "HEAD" else headers + body)
    async with asyncio.timeout(WRITE_TIMEOUT_S):
        await writer.drain()
