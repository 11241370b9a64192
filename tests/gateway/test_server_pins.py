"""The uvicorn and Starlette versions gateway/server/ is written against: the installed ones are
in the ranges pinned in pyproject.toml (each with an upper bound), and the private names its
__init__ lists are there."""

from __future__ import annotations

import importlib.metadata
import inspect
from pathlib import Path

import pytest
import uvicorn
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from starlette.websockets import WebSocket
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

REPO = Path(__file__).resolve().parents[2]
RANGES = {"uvicorn": ">=0.35,<0.55", "starlette": ">=0.47,<1.11"}


def requirement(name: str) -> Requirement:
    lines = (REPO / "pyproject.toml").read_text().splitlines()
    (line,) = [
        ln
        for ln in lines
        if ln.strip().startswith(f'"{name}>') or ln.strip().startswith(f'"{name}=')
    ]
    return Requirement(line.strip().split('"')[1])


@pytest.mark.parametrize("name", sorted(RANGES))
def test_installed_version_is_in_the_pinned_range(name: str) -> None:
    pinned = requirement(name)
    assert pinned.specifier == SpecifierSet(RANGES[name]), "gateway/server/__init__.py names it"
    assert any(s.operator == "<" for s in pinned.specifier), f"{name} needs an upper bound"
    assert pinned.specifier.contains(importlib.metadata.version(name))
    # The installed distribution declares the same range (an editable install of this project).
    declared = [Requirement(r) for r in importlib.metadata.requires("meeting-gateway") or []]
    assert [r.specifier for r in declared if r.name == name] == [pinned.specifier]


def test_uvicorn_has_what_the_protocols_override() -> None:
    for name in (
        "connection_made",
        "connection_lost",
        "pause_writing",
        "resume_writing",
        "handle_connect",
        "send",
        "data_received",
        "keepalive_timeout",
    ):
        assert callable(getattr(WebSocketsSansIOProtocol, name)), name
    for name in (
        "data_received",
        "on_response_complete",
        "connection_made",
        "connection_lost",
        "pause_writing",
        "resume_writing",
    ):
        assert callable(getattr(H11Protocol, name)), name
    # The stalled-body timer asks whether uvicorn paused reading (the client is not at fault).
    import inspect

    assert "self.flow = FlowControl(transport)" in inspect.getsource(H11Protocol.connection_made)
    # A request's cycle closes through its own `transport` attribute, which the edge replaces
    # (a close waits for the request's body), and every close of a response goes through it.
    from uvicorn.protocols.http.h11_impl import RequestResponseCycle

    send = inspect.getsource(RequestResponseCycle.send)
    assert "self.transport.close()" in send and "self.transport = transport" in inspect.getsource(
        RequestResponseCycle.__init__
    )
    # A body discarded after an answer that ends the connection stops uvicorn's keep-alive timer.
    assert callable(H11Protocol._unset_keepalive_if_required)
    # Between requests the edge arms uvicorn's keep-alive timer itself (`_await_next_head`).
    assert callable(H11Protocol.timeout_keep_alive_handler)
    init = inspect.getsource(H11Protocol.__init__)
    assert "self.timeout_keep_alive_task" in init and "self.timeout_keep_alive =" in init


def test_uvicorn_run_asgi_does_what_the_parking_protocol_repeats() -> None:
    """DirectFramesProtocol replaces `run_asgi` with the same steps (gateway/server/__init__.py):
    a uvicorn whose `run_asgi` does more must be read again before the pin moves."""
    source = inspect.getsource(WebSocketsSansIOProtocol.run_asgi)
    steps = ("self.app(self.scope, self.receive, self.send)", "except ClientDisconnected")
    for step in (*steps, "send_500_response()", "self.transport.close()"):
        assert step in source, step
    assert source.count("self.") <= 12, "uvicorn's run_asgi changed: compare with _run_app"
    for name in ("send_500_response", "on_task_complete"):
        assert callable(getattr(WebSocketsSansIOProtocol, name)), name


def test_uvicorn_server_installs_handle_exit_for_the_signals() -> None:
    """GatewayServer overrides `handle_exit`: uvicorn must be what installs it."""
    source = inspect.getsource(uvicorn.Server.capture_signals)
    assert "self.handle_exit" in source
    assert {"should_exit", "force_exit", "started"} <= set(
        vars(uvicorn.Server(uvicorn.Config(None)))
    )
    from uvicorn.config import STARTUP_FAILURE

    assert STARTUP_FAILURE == 3


def test_starlette_has_the_private_names_relied_on() -> None:
    from starlette._exception_handler import wrap_app_handling_exceptions

    assert callable(wrap_app_handling_exceptions)

    async def receive() -> dict:
        return {}

    async def send(message: dict) -> None:
        return None

    scope = {"type": "websocket", "path": "/", "query_string": b"a=1", "headers": []}
    websocket = WebSocket(scope, receive=receive, send=send)
    assert websocket._receive is receive and websocket._send is send
    assert websocket.query_params["a"] == "1" and str(websocket.url).endswith("/?a=1")
    assert websocket.headers.get("x") is None
    from gateway.server.starlette_internals import PARSED_REQUEST_CACHES

    assert set(PARSED_REQUEST_CACHES) <= set(vars(websocket))
