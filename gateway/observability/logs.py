"""Structured logging (console or JSON) with query strings removed from everything logged.

Browsers send tokens in `?token=`, and uvicorn writes request paths with their query string into
its own lines (access log, "WebSocket /path?..." lines). Every record is redacted before it is
formatted: string arguments lose everything from their first `?` (uvicorn percent-encodes a `?`
inside a path, so the first one starts the query, whatever characters follow), and a message
without arguments loses each `?` and the non-space characters after it. structlog events get the
same treatment for every string value. With LOG_FORMAT=json each record, uvicorn's included, is
one JSON object on one line. The gateway's own code never logs transcript text or tokens at INFO
or above; connection lines carry tenant, meeting and connection/stream ids through contextvars.
A client's bad input that uvicorn reports as an ERROR with a traceback (CLIENT_FAULTS) becomes one
WARNING line, so no client can fill the log with tracebacks.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "?[redacted]"
_QUERY = re.compile(r"\?(?!\[redacted\])\S+")
# A query percent-encoded into a path (uvicorn logs `/m1%3Ftoken=...` as the client sent it),
# also encoded again (`%253F`: a path holding a literal `%3F`).
_ENCODED_QUERY = re.compile(r"(%(?:25)*3F)(?!\[redacted\])\S*", re.I)
# Credentials inside URLs (redis://:password@host, postgresql://user:password@host), and the
# same percent-encoded (an absolute request target `http://user:pw@host/` as uvicorn logs it).
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]*@")
_ENCODED_URL_CREDENTIALS = re.compile(r"(%3A(?://|%2F%2F))[^/\s]*%40", re.I)
# A secret-named parameter, whatever its value looks like (`;token=...`, `api-key=a/b+c`).
_SECRET_PARAM = re.compile(
    r"((?:token|secret|passw(?:or)?d|api[_-]?key|authorization|credentials?)(?:=|%(?:25)*3D))"
    r"(?!\[redacted\])[^&\s;]+",
    re.I,
)
# A JWT wherever it stands (a client that put its token in the path, after `#` or `;`), also
# its start alone (websockets' DEBUG frame lines cut a long message in its middle).
_JWT = re.compile(r"eyJ[\w-]{4,}(?:\.[\w-]*)*")
# A secret-named JSON field's string value (a `refresh` message in a DEBUG frame line).
# The key may hold the word among others (`access_token`, `client_secret`); the value ends at
# its closing quote (escaped quotes inside it included) or, cut short, at the end of its line.
_SECRET_JSON = re.compile(
    r"""(["'][\w-]{0,32}(?:token|secret|passw(?:or)?d|api[_-]?key|authorization|credentials?)"""
    r"""[\w-]{0,32}["']\s*:\s*)(?:"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?)""",
    re.I,
)
# A credential-bearing header in a logged request head (websockets' DEBUG lines: `< authorization:
# Bearer ...`, a header per line), whatever the credential looks like (a token need not start
# `eyJ`).
_SECRET_HEADER = re.compile(
    r"(?:^|(?<=[<>] ))((?:proxy-)?authorization|cookie|x-api-key|sec-websocket-protocol)"
    r"(\s*:\s*)(?!\[redacted\])[^\r\n]+",
    re.I | re.M,
)
# Fields whose value is a secret whatever it looks like.
_SECRET_FIELD = re.compile(r"token|secret|password|api_?key|authorization|credential", re.I)


# Replacements as functions, not `\1` templates: `re` parses a template with imports, which
# fail in a line logged while the interpreter shuts down (sys.meta_path is None then).
def _redact_encoded_credentials(match: re.Match[str]) -> str:
    return match.group(1) + "[redacted]%40"


def _redact_encoded_query(match: re.Match[str]) -> str:
    return match.group(1) + "[redacted]"


def _redact_param_value(match: re.Match[str]) -> str:
    return match.group(1) + "[redacted]"


def _redact_header_value(match: re.Match[str]) -> str:
    return match.group(1) + match.group(2) + "[redacted]"


def _redact_json_value(match: re.Match[str]) -> str:
    return match.group(1) + '"[redacted]"'


def redact_query(text: str) -> str:
    """`text` with every `?` and the non-space characters after it replaced, and credentials in
    URLs and JWTs anywhere removed."""
    if "?" in text:
        text = _QUERY.sub(REDACTED, text)
    if "%" in text:
        text = _ENCODED_QUERY.sub(_redact_encoded_query, text)
        text = _ENCODED_URL_CREDENTIALS.sub(_redact_encoded_credentials, text)
    if "@" in text:
        text = _URL_CREDENTIALS.sub("[redacted]@", text)
    if ":" in text:
        text = _SECRET_JSON.sub(_redact_json_value, text)
        text = _SECRET_HEADER.sub(_redact_header_value, text)
    if "eyJ" in text:
        text = _JWT.sub("[redacted]", text)
    if "=" in text or "%" in text:
        text = _SECRET_PARAM.sub(_redact_param_value, text)
    return text


def _redact_arg(value: object) -> object:
    if isinstance(value, str) and "?" in value:
        head, tail = value.split("?", 1)
        if tail[:1].isspace() or not tail:  # a question's mark, not a query
            return redact_query(value)
        return redact_query(head) + REDACTED
    if isinstance(value, str):
        return redact_query(value)
    if isinstance(value, bytes) and b"?" in value:
        return value.split(b"?", 1)[0] + REDACTED.encode()
    return value


class RedactQueryFilter(logging.Filter):
    """Removes query strings from stdlib records (uvicorn's and libraries') before formatting."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):  # a structlog event: redacted by its processors
            return True
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        elif isinstance(record.args, dict) and record.args:
            record.args = {key: _redact_arg(arg) for key, arg in record.args.items()}
        if isinstance(record.msg, str):
            redacted = redact_query(record.msg)
            if redacted != record.msg and record.args:
                # The format string itself held what is redacted: format it first, so its
                # placeholders still meet their arguments (uvicorn's access format holds none).
                try:
                    redacted = redact_query(record.getMessage())
                except Exception:
                    pass  # left as redacted: logging reports the mismatch without the values
                else:
                    record.args = ()
            record.msg = redacted
        return True


# uvicorn's records about what a client sent, logged as ERROR with a traceback although the
# server handled them (the connection closed with the right code): one WARNING line each instead,
# so a client cannot fill the log with tracebacks. Keyed by the start of uvicorn's message.
CLIENT_FAULTS = {
    "Invalid UTF-8 sequence received from client": (
        "invalid UTF-8 in a client's text message: connection closed 1007"
    ),
}


class ClientFaultFilter(logging.Filter):
    """Turns uvicorn's ERROR-with-traceback records about a client's bad input into one WARNING
    line without a traceback (CLIENT_FAULTS)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("uvicorn") or not isinstance(record.msg, str):
            return True
        for prefix, text in CLIENT_FAULTS.items():
            if record.msg.startswith(prefix):
                record.msg, record.args = text, ()
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                record.exc_info, record.exc_text, record.stack_info = None, None, None
                return logging.getLogger().isEnabledFor(logging.WARNING)
        return True


def _redact_event(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if key != "event" and _SECRET_FIELD.search(key) and value is not None:
            event[key] = "[redacted]"
        elif isinstance(value, str):
            event[key] = redact_query(value)
    return event


_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


# uvicorn's line for a WebSocket handshake: `client - "WebSocket path" [accepted]`, or `403`,
# or the status of a response the application sent instead (a third argument).
_WEBSOCKET_LINE = '%s - "WebSocket %s"'


def _access_fields(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """uvicorn's access lines, and its WebSocket handshake lines, as fields too (their
    arguments are already redacted)."""
    args = event.pop("positional_args", None)
    record = event.get("_record")
    if record is None or not isinstance(args, tuple):
        return event
    if record.name == "uvicorn.access" and len(args) == len(_ACCESS_FIELDS):
        event.update(zip(_ACCESS_FIELDS, args, strict=True))
    elif (
        record.name == "uvicorn.error"
        and isinstance(record.msg, str)
        and record.msg.startswith(_WEBSOCKET_LINE)
        and len(args) in (2, 3)
    ):
        if len(args) == 3:
            status = args[2]
        else:
            status = 101 if record.msg.endswith("[accepted]") else 403
        event.update(client=args[0], method="WebSocket", path=args[1], status=status)
    return event


def _add_pid(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The process id, read per line: `serve --workers N` lines interleave on one stream, and a
    worker started after a death has a new pid."""
    event["pid"] = os.getpid()
    return event


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_pid,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            # Render `log.exception` tracebacks here: JSON output would otherwise keep only
            # `"exc_info": true`. Redact after, so a traceback's text is covered too.
            structlog.processors.format_exc_info,
            _redact_event,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *shared,
                _access_fields,
                structlog.processors.format_exc_info,
                _redact_event,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            pass_foreign_args=True,  # for _access_fields
        )
    )
    handler.addFilter(ClientFaultFilter())
    handler.addFilter(RedactQueryFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(logging.NOTSET)  # LOG_LEVEL decides, whatever a server config set
        logger.disabled = False
    # SQL echo and library chatter stay below INFO; httpx's request lines show whole URLs (a
    # webhook URL may carry its secret in the path, as Slack's do).
    # Alembic's plugin set-up says seven lines at every start (its migrations' lines stay).
    for name in ("sqlalchemy.engine", "aiosqlite", "asyncio", "httpx", "alembic.runtime.plugins"):
        logging.getLogger(name).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
