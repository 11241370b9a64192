"""Log configuration with plain records: JSON lines, redaction of queries, credentials and
secret fields, and the readable console form."""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
from collections.abc import Iterator

import pytest
import structlog

from gateway.observability.logs import configure_logging, get_logger, redact_query

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """These tests configure logging onto pytest's captured stderr: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:], root.level = handlers, level
    structlog.configure(**config)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"/ws?token={JWT}", "/ws?[redacted]"),
        (f"/ws?x='&token={JWT}", "/ws?[redacted]"),  # a quote does not end the query
        (f'GET /a?x="&token={JWT} HTTP/1.1', "GET /a?[redacted] HTTP/1.1"),
        ("redis://:hunter2@redis:6379/0", "redis://[redacted]@redis:6379/0"),
        ("postgresql+asyncpg://gw:pw@db/gw", "postgresql+asyncpg://[redacted]@db/gw"),
        ("no query here", "no query here"),
        # A token a client put in the path, after `#` or `;`, percent-encoded or not.
        (f"/ws/ingest/meetings/h1%23token%3D{JWT}", "/ws/ingest/meetings/h1%23token%3D[redacted]"),
        (f"/ws/ingest/meetings/h1;token={JWT} 403", "/ws/ingest/meetings/h1;token=[redacted] 403"),
        # Whatever the secret looks like, and as uvicorn percent-encodes an absolute target.
        ("/viewer%3Btoken%3DNOTJWT-SECRET-1", "/viewer%3Btoken%3D[redacted]"),
        ("/viewer;api_key=abc123 200", "/viewer;api_key=[redacted] 200"),
        ("/v;x-api-key=ab/cd+ef== 200", "/v;x-api-key=[redacted] 200"),  # base64 holds '/'
        ("/v;passwd=hunter2&b=1", "/v;passwd=[redacted]&b=1"),
        ("http%3A//user%3Ap%40ss%40host/x", "http%3A//[redacted]%40host/x"),  # '@' in a password
        ("/api/v1/meetings/m1%3Ftoken=NOTJWT", "/api/v1/meetings/m1%3F[redacted]"),
        # Encoded twice (a path that holds a literal `%3F`): still a query to a reader.
        ("/api/v1/meetings/m1%253Ftoken%253DQS", "/api/v1/meetings/m1%253F[redacted]"),
        ("/viewer%253Btoken%253DNOTJWT-1 200", "/viewer%253Btoken%253D[redacted] 200"),
        (
            "http%3A//user%3ANOTJWT-SECRET%40host/api/v1/meetings",
            "http%3A//[redacted]%40host/api/v1/meetings",
        ),
        ("a 100%3A//b path with no credentials", "a 100%3A//b path with no credentials"),
        # websockets' DEBUG frame lines: a refresh message, cut in its middle when long.
        (
            '< TEXT \'{"type": "refresh", "token": "eyJhbGciOiJSUzI1N...Aw1oESV5FAA"}\'',
            '< TEXT \'{"type": "refresh", "token": "[redacted]"}\'',
        ),
        (
            '< TEXT \'{"token": "not-a-jwt"}\' [20 bytes]',
            '< TEXT \'{"token": "[redacted]"}\' [20 bytes]',
        ),
        ("cut: eyJhbGciOiJSUzI1N...", "cut: [redacted]"),
        (
            '{"access_token": "a", "client_secret": "b", "tokens_used": 5}',
            '{"access_token": "[redacted]", "client_secret": "[redacted]", "tokens_used": 5}',
        ),
        ('{"token": "ab\\"cd-rest", "n": 1}', '{"token": "[redacted]", "n": 1}'),
        ('{"token": "cut short\nnext line', '{"token": "[redacted]"\nnext line'),
        ("at 10:30 text: hello", "at 10:30 text: hello"),
        # websockets' DEBUG lines of a request head: a token that does not look like a JWT
        # (its JSON began with a space: `IHsi...`, and PyJWT verifies it) is still redacted.
        ("< authorization: Bearer IHsiYWxn.IHsic3Vi.n7EE", "< authorization: [redacted]"),
        ("< Sec-WebSocket-Protocol: IHsiYWxn", "< Sec-WebSocket-Protocol: [redacted]"),
        ("< host: 127.0.0.1:8000", "< host: 127.0.0.1:8000"),
        ("a message about the cookie: banner", "a message about the cookie: banner"),
        (
            "Is the configuration correct? See the logs",
            "Is the configuration correct? See the logs",
        ),
    ],
)
def test_redact_query(text: str, expected: str) -> None:
    assert redact_query(text) == expected


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_json_lines_for_uvicorn_and_our_own_records(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    access = logging.getLogger("uvicorn.access")
    access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.1:5", "GET", f"/t?x='&token={JWT}", "1.1", 200)
    logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" [accepted]', "c", f"/w?t={JWT}")
    log = get_logger("gateway.test")
    log.info("connected", url=f"redis://:{JWT}@h/0", api_key=JWT, token=JWT, note=f"?{JWT}")
    try:
        raise RuntimeError(f"boom /x?token={JWT}")
    except RuntimeError:
        log.exception("failed")
    out = lines(capsys)
    assert len(out) == 4
    records = [json.loads(line) for line in out]  # one object per line, traceback included
    assert JWT not in "\n".join(out)
    assert records[0]["path"] == "/t?[redacted]" and records[0]["status"] == 200
    assert records[1]["event"] == 'c - "WebSocket /w?[redacted]" [accepted]'
    assert (records[1]["client"], records[1]["path"], records[1]["status"]) == (
        *("c", "/w?[redacted]", 101),
    )
    assert records[2]["api_key"] == records[2]["token"] == "[redacted]"
    assert records[2]["url"] == "redis://[redacted]@h/0"
    assert "RuntimeError" in records[3]["exception"]
    # Workers' lines interleave on one stream: each says whose it is.
    assert all(record["pid"] == os.getpid() for record in records)


def test_websocket_handshake_lines_carry_client_path_and_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An operator filtering JSON logs by `path` or `client` missed every WebSocket: uvicorn
    logs handshakes on its error logger, as text only."""
    configure_logging("INFO", "json")
    error = logging.getLogger("uvicorn.error")
    error.info('%s - "WebSocket %s" 403', "10.0.0.2:7", f"/api/v1/ws/meetings/m?token={JWT}")
    error.info('%s - "WebSocket %s" %d', "10.0.0.3:8", "/api/v1/ws/meetings/m", 429)
    error.info("Application startup complete.")
    records = [json.loads(line) for line in lines(capsys)]
    assert [(r.get("client"), r.get("path"), r.get("status")) for r in records] == [
        ("10.0.0.2:7", "/api/v1/ws/meetings/m?[redacted]", 403),
        ("10.0.0.3:8", "/api/v1/ws/meetings/m", 429),
        (None, None, None),
    ]
    assert records[0]["method"] == "WebSocket"


def test_console_is_readable_and_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "console")
    get_logger("gateway.test").info("joined", path=f"/m?token={JWT}", tenant="acme")
    (line,) = lines(capsys)
    assert not line.startswith("{")
    assert "joined" in line and "tenant=acme" in line and "path=/m?[redacted]" in line
    assert JWT not in line


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_clients_invalid_utf8_is_one_warning_line_without_traceback(
    capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """uvicorn logs it as ERROR with a traceback although the connection closed 1007 as it
    should: any client could fill the log with tracebacks."""
    configure_logging("INFO", fmt)
    uvicorn_error = logging.getLogger("uvicorn.error")
    try:
        b"\xff".decode()
    except UnicodeDecodeError:
        uvicorn_error.exception("Invalid UTF-8 sequence received from client.")
    (line,) = lines(capsys)
    assert "Traceback" not in line and "UnicodeDecodeError" not in line
    assert "invalid UTF-8" in line and "1007" in line
    if fmt == "json":
        record = json.loads(line)
        assert record["level"] == "warning" and "exception" not in record
    # Other uvicorn errors keep their level and traceback.
    try:
        raise RuntimeError("app bug")
    except RuntimeError:
        uvicorn_error.exception("Exception in ASGI application\n")
    out = "\n".join(lines(capsys))
    assert "RuntimeError" in out and "error" in out.lower()


def test_the_warning_is_dropped_below_warning_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("ERROR", "json")
    logging.getLogger("uvicorn.error").error("Invalid UTF-8 sequence received from client.")
    assert lines(capsys) == []


def test_a_format_string_holding_a_secret_still_meets_its_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("some.library").warning("using api_key=%s for user=%s", "SECRET", "bob")
    err = capsys.readouterr().err
    assert "SECRET" not in err and "Logging error" not in err
    assert "user=bob" in err


def test_an_http_clients_request_lines_stay_below_info(capsys: pytest.CaptureFixture[str]) -> None:
    """httpx logs each request's whole URL at INFO; a webhook URL may hold its secret in the path
    (as Slack's do)."""
    import httpx

    configure_logging("INFO", "json")
    secret_path = "https://hooks.example/services/T0/B0/sEcReTpAtH"
    with httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(204))) as http:
        assert http.post(secret_path).status_code == 204
    assert "sEcReTpAtH" not in capsys.readouterr().err


def test_redaction_imports_nothing_so_a_line_logged_at_interpreter_shutdown_is_redacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At shutdown `sys.meta_path` is None and any import fails: `re` imports to parse a `\\1`
    replacement template, which made asyncio's last error line a logging traceback."""

    def no_import(name: str, *args: object, **kwargs: object) -> object:
        raise ImportError(f"sys.meta_path is None (importing {name})")

    re.purge()  # as in a process that has not redacted yet: nothing cached hides an import
    text = "next=https%3A%2F%2Fuser%3Apw%40host secret=s3cr3t api_key=k-1"
    monkeypatch.setattr(builtins, "__import__", no_import)
    try:
        redacted = redact_query(text)
    finally:
        monkeypatch.undo()  # before pytest imports anything to report
    assert redacted == "next=https%3A%2F%2F[redacted]%40host secret=[redacted] api_key=[redacted]"


def test_an_argument_asking_a_question_keeps_its_words(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("redis").warning("error: %s", "is the configuration correct? see docs")
    logging.getLogger("uvicorn.error").warning("path %s", "/ws?token=NOTJWT")
    first, second = (json.loads(line)["event"] for line in lines(capsys))
    assert first == "error: is the configuration correct? see docs"
    assert second == "path /ws?[redacted]"
