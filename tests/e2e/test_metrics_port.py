"""`/metrics` on a port of its own (METRICS_PORT): served there, by one worker or several, and no
longer on the main port that the public edge reaches."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.e2e.harness import Gateway, KeyPair, client_ssl_context, free_port, next_of


async def fetch(url: str, method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient(timeout=10, verify=client_ssl_context()) as client:
        return await client.request(method, url)


async def pong(ws: ClientConnection) -> None:
    """Ping and wait for the pong: the viewer is connected and counted."""
    await ws.send(json.dumps({"type": "ping"}))
    await next_of(ws, "pong")


async def test_metrics_port_serves_metrics_and_the_main_port_no_longer_does(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, meeting: str
) -> None:
    port = free_port()
    gw = start_gateway(METRICS_PORT=str(port))
    # Something to count, so the figures are the gateway's own.
    async with connect(gw.subscribe_url(meeting, keypair.token(roles=["viewer"]))) as ws:
        await pong(ws)
    main = await fetch(f"{gw.http}/metrics")
    assert main.status_code == 404
    assert "meeting_gateway_" not in main.text
    metrics = await fetch(f"http://127.0.0.1:{port}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'meeting_gateway_connections_opened_total{role="viewer",tenant="acme"}' in metrics.text
    assert (await fetch(f"http://127.0.0.1:{port}/")).status_code == 404
    assert (await fetch(f"http://127.0.0.1:{port}/metrics", "POST")).status_code == 405
    # The client routes stay on the main port only.
    assert (await fetch(f"{gw.http}/healthz")).status_code == 200
    assert (await fetch(f"http://127.0.0.1:{port}/healthz")).status_code == 404


async def test_every_worker_serves_the_metrics_port_for_the_whole_replica(
    start_gateway: Callable[..., Gateway],
    keypair: KeyPair,
    meeting: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """With `serve --workers 2` both workers bind METRICS_PORT (SO_REUSEPORT) and whichever
    answers reports the replica: a viewer on one worker shows on every scrape."""
    port = free_port()
    gw = start_gateway(
        None,
        "--workers",
        "2",
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=redis_prefix,
        METRICS_PORT=str(port),
    )
    line = 'meeting_gateway_connections{role="viewer",tenant="acme"} 1.0'
    async with connect(gw.subscribe_url(meeting, keypair.token(roles=["viewer"]))) as ws:
        await pong(ws)
        for _ in range(8):  # new connections: the kernel spreads them over the workers
            metrics = await fetch(f"http://127.0.0.1:{port}/metrics")
            assert metrics.status_code == 200
            assert line in metrics.text
    assert (await fetch(f"{gw.http}/metrics")).status_code == 404
