"""Query parameters read one rule at a time, each failure a 400 that names the rule.

Every parameter of the REST API is single-valued: one given twice is refused rather than
resolved (a page that reads the first value while the server checked the last is how a
check gets bypassed).
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request

from gateway.http.api import HttpError

MAX_PARAM_CHARS = 1024


class Params:
    def __init__(self, request: Request) -> None:
        self._query = request.query_params
        for key in self._query:
            if len(self._query.getlist(key)) > 1:
                raise HttpError(400, f"parameter {key!r} may be given once")

    def text(self, name: str) -> str | None:
        value = self._query.get(name)
        if value is not None and len(value) > MAX_PARAM_CHARS:
            raise HttpError(400, f"{name} is limited to {MAX_PARAM_CHARS} characters")
        return value

    def integer(self, name: str, default: int | None, *, low: int, high: int) -> int | None:
        raw = self.text(name)
        if raw is None or raw == "":
            return default
        if not raw.isascii() or not raw.lstrip("-").isdigit() or len(raw) > 20:
            raise HttpError(400, f"{name} must be an integer from {low} to {high}")
        value = int(raw)
        if not low <= value <= high:
            raise HttpError(400, f"{name} must be an integer from {low} to {high}")
        return value

    def boolean(self, name: str) -> bool | None:
        raw = self.text(name)
        if raw is None or raw == "":
            return None
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise HttpError(400, f"{name} must be true or false")

    def moment(self, name: str) -> datetime | None:
        """An ISO 8601 time; one without an offset is taken as UTC."""
        raw = self.text(name)
        if raw is None or raw == "":
            return None
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            raise HttpError(
                400, f"{name} must be an ISO 8601 time, e.g. 2026-12-03T09:30:00Z"
            ) from None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
