"""Structured logging (console or JSON) with query strings redacted everywhere.

Tokens travel in `?token=` for browsers, and uvicorn writes request paths with their query string
into its own log lines; `RedactQueryFilter` strips them from every record before it is emitted.
Transcript text and tokens are never logged at INFO or above by the gateway's own code.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

_QUERY = re.compile(r"\?[^\s\"']*")


def redact_query(text: str) -> str:
    return _QUERY.sub("?[redacted]", text)


class RedactQueryFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("uvicorn"):
            message = record.getMessage()
            redacted = redact_query(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


def _redact_event(_: object, __: str, event: dict[str, object]) -> dict[str, object]:
    for key in ("path", "url"):
        value = event.get(key)
        if isinstance(value, str):
            event[key] = redact_query(value)
    return event


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_event,
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
            # `"exc_info": true`.
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.processors.format_exc_info],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(RedactQueryFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # SQL echo and library chatter stay below INFO.
    for name in ("sqlalchemy.engine", "aiosqlite", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
