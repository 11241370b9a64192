"""Proxy headers applied by the application (gateway.server.forwarded), as uvicorn would."""

from __future__ import annotations

from typing import Any

from gateway.server.forwarded import ForwardedHeaders


def scope(kind: str, client: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    scheme = "ws" if kind == "websocket" else "http"
    return {"type": kind, "client": (client, 50000), "scheme": scheme, "headers": list(headers)}


FORWARDED = ((b"x-forwarded-for", b"203.0.113.7, 10.0.0.2"), (b"x-forwarded-proto", b"https"))


def test_a_trusted_proxy_names_the_client_and_scheme() -> None:
    http, ws = scope("http", "10.0.0.2", *FORWARDED), scope("websocket", "10.0.0.2", *FORWARDED)
    forwarded = ForwardedHeaders("10.0.0.0/8")
    forwarded.apply(http)
    forwarded.apply(ws)
    assert http["client"] == ("203.0.113.7", 0) and http["scheme"] == "https"
    assert ws["client"] == ("203.0.113.7", 0) and ws["scheme"] == "wss"


def test_an_untrusted_peer_and_the_lifespan_are_left_alone() -> None:
    untrusted = scope("http", "198.51.100.1", *FORWARDED)
    ForwardedHeaders().apply(untrusted)  # only 127.0.0.1 by default
    assert untrusted["client"] == ("198.51.100.1", 50000) and untrusted["scheme"] == "http"
    lifespan: dict[str, Any] = {"type": "lifespan"}
    ForwardedHeaders("*").apply(lifespan)
    assert lifespan == {"type": "lifespan"}


def test_a_forwarded_client_that_is_no_address_is_not_believed() -> None:
    # It would stand in every log line of the connection as its client.
    for claimed in (b"SECRET-TEXT", b"evil\x1b[31m", b"2001:db8::7"):
        request = scope("http", "10.0.0.2", (b"x-forwarded-for", claimed))
        ForwardedHeaders("10.0.0.0/8").apply(request)
        believed = claimed == b"2001:db8::7"
        expected = ("2001:db8::7", 0) if believed else ("10.0.0.2", 50000)
        assert request["client"] == expected, claimed
