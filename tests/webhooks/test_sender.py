"""One delivery attempt against a real HTTP server on loopback: the host is resolved once and
the connection goes to the address that was checked, with the URL's Host header; a receiver
that does not answer in time is a failed attempt, not a hang."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from gateway.webhooks.sender import WebhookSender, trust_store
from store.webhooks import Delivery, Endpoint, Event, new_secret
from tests.e2e.test_webhooks import Receiver
from tests.tls import self_signed_cert


def _pair(url: str) -> tuple[Delivery, Endpoint]:
    now = datetime.now(UTC)
    endpoint = Endpoint("ep_1", "acme", url, ("meeting.ended",), new_secret(), None, "api", now)
    body = Event("meeting.ended", "acme", "m1").body()
    delivery = Delivery(
        "msg_1",
        "ep_1",
        "acme",
        "m1",
        "meeting.ended",
        body,
        "pending",
        0,
        now,
        None,
        None,
        now,
        None,
    )
    return delivery, endpoint


async def test_the_checked_address_is_the_one_connected_to() -> None:
    receiver = Receiver().start()
    lookups: list[str] = []
    answers = iter([["127.0.0.1"], ["10.9.9.9"]])  # a rebinding DNS: the second answer differs

    async def rebinding(host: str, port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    sender = WebhookSender(timeout_s=10, allow_private=True, resolver=rebinding)
    try:
        delivery, endpoint = _pair(f"http://hooks.example:{receiver.port}/in?x=1")
        outcome = await sender.send(delivery, endpoint)
        assert outcome.delivered and outcome.status_code == 204
        assert lookups == ["hooks.example"]  # resolved once, connected to that answer
        ((headers, body),) = receiver.received
        assert headers["host"] == f"hooks.example:{receiver.port}"
        assert Webhook(endpoint.secret).verify(body, headers)["data"]["meeting_id"] == "m1"
    finally:
        await sender.aclose()
        receiver.stop()


async def test_an_internationalised_host_is_sent_as_idna() -> None:
    receiver = Receiver().start()
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    sender = WebhookSender(timeout_s=10, allow_private=True, resolver=resolver)
    try:
        outcome = await sender.send(*_pair(f"http://Bücher.example:{receiver.port}/in"))
        assert outcome.delivered, outcome
        assert lookups == ["xn--bcher-kva.example"]
        ((headers, _),) = receiver.received
        assert headers["host"] == f"xn--bcher-kva.example:{receiver.port}"
    finally:
        await sender.aclose()
        receiver.stop()


async def test_a_receiver_that_never_answers_is_a_failed_attempt_within_the_timeout() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts connections, never answers
    port = listener.getsockname()[1]
    sender = WebhookSender(timeout_s=0.5, allow_private=True)
    try:
        outcome = await asyncio.wait_for(
            sender.send(*_pair(f"http://127.0.0.1:{port}/")), timeout=30
        )
        assert not outcome.delivered and outcome.error == "no answer within 0.5 s"
    finally:
        await sender.aclose()
        listener.close()


async def test_a_stored_url_the_client_cannot_build_is_a_failed_attempt() -> None:
    """An endpoint stored before URLs were checked as strictly: its delivery fails like any
    other attempt (and is retried, then given up), instead of raising out of the worker."""
    sender = WebhookSender(timeout_s=5, allow_private=False)
    try:
        outcome = await sender.send(*_pair("https://93.184.215.14/hook\x01"))
        assert not outcome.delivered and outcome.error is not None
        assert "not valid" in outcome.error
    finally:
        await sender.aclose()


async def test_a_receiver_with_an_internal_ca_is_reached_with_webhooks_ca_file(
    tmp_path: Path,
) -> None:
    # The sender reads no SSL_CERT_FILE (no environment at all): such receivers got nothing.
    key, cert = self_signed_cert(tmp_path)
    receiver = Receiver(tls=(key, cert)).start()
    trusting = WebhookSender(timeout_s=10, allow_private=True, ca_file=Path(cert))
    default = WebhookSender(timeout_s=10, allow_private=True)
    try:
        refused = await default.send(*_pair(receiver.url))
        assert not refused.delivered and "CERTIFICATE_VERIFY_FAILED" in (refused.error or "")
        outcome = await trusting.send(*_pair(receiver.url))
        assert outcome.delivered and outcome.status_code == 204, outcome
    finally:
        await trusting.aclose()
        await default.aclose()
        receiver.stop()


def test_the_trust_store_is_certifis_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # create_default_context() alone followed SSL_CERT_FILE and SSL_CERT_DIR: a stray value
    # left the sender trusting nothing (0 CAs), and a slim image has no system store at all.
    monkeypatch.setenv("SSL_CERT_FILE", "/dev/null")
    monkeypatch.setenv("SSL_CERT_DIR", "/nonexistent")
    assert len(trust_store().get_ca_certs()) > 100


async def test_a_malformed_answer_is_quoted_in_the_delivery_log_only() -> None:
    """A receiver's bytes (here its status line echoing the request line, the URL's path with
    it) go to the tenant's delivery log, never to the gateway's: its log gets their kind."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def echo_garbage() -> None:
        conn, _ = listener.accept()
        with conn:
            request = conn.recv(65536)
            conn.sendall(request.split(b"\r\n")[0] + b"\r\n\r\n")

    answering = asyncio.get_running_loop().run_in_executor(None, echo_garbage)
    sender = WebhookSender(timeout_s=10, allow_private=True)
    try:
        outcome = await sender.send(*_pair(f"http://127.0.0.1:{port}/in/PATHSECRET?q=TOKEN"))
        await answering
        assert not outcome.delivered and outcome.error is not None
        assert "PATHSECRET" in outcome.error and "TOKEN" not in outcome.error
        assert outcome.loggable_error == "RemoteProtocolError"
    finally:
        await sender.aclose()
        listener.close()
    # Errors the gateway words itself, or that quote nothing of the receiver's, are logged
    # as they are (an operator needs "connection refused").
    plain = WebhookSender(timeout_s=5, allow_private=True)
    try:
        outcome = await plain.send(*_pair("https://93.184.215.14/hook\x01"))
        assert outcome.loggable_error == outcome.error == "the endpoint's URL is not valid"
        outcome = await plain.send(*_pair(f"http://127.0.0.1:{port}/in"))  # closed now
        assert outcome.loggable_error == outcome.error and "ConnectError" in outcome.error
    finally:
        await plain.aclose()
