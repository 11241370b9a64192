"""HTTP errors as the API answers them: a JSON body `{"error": {"status", "message"}}`, and
`Retry-After` for a refusal that will pass."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class HttpError(Exception):
    """An answer with a JSON error; `retry_after` (seconds) for a refusal that will pass."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


def error_response(status: int, message: str, *, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if status == 401:  # the scheme a request must use (RFC 6750, RFC 9110)
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        {"error": {"status": status, "message": message}}, status_code=status, headers=headers
    )


async def http_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return error_response(exc.status, exc.message, retry_after=exc.retry_after)
