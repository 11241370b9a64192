"""A recording upload's body, streamed to disk as it arrives: raw, or the `file` part of a
multipart form with its option fields, under the byte cap and the disk budget."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from gateway.http.errors import HttpError
from gateway.http.multipart_preamble import PreambleSkipper, PreambleTooLong
from gateway.http.uploads_in_flight import InFlightUpload
from gateway.services import Services

OPTIONS = ("language", "engine", "diarize", "label", "split_channels")
FORM_FIELD_MAX_BYTES = 1024  # language, engine, diarize, label, split_channels as form fields
# Parts of a multipart upload: the file, its options and room for a client's extra fields (which
# are ignored). Without a cap, tens of thousands of tiny fields grew memory with no limit.
FORM_MAX_PARTS = 16
QUEUE_RETRY_AFTER_S = 30
DISK_BUDGET_USED = "the recordings disk budget is used up"
UPLOAD_DRAINING = "server restarting: no job was created, upload again"
DRAIN_RETRY_AFTER_S = 1


class UploadFile:
    """The body written to disk as it arrives, under the byte cap and the disk budget (what
    unended jobs hold, and every upload in progress)."""

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        in_flight: InFlightUpload,
        budget_left: Callable[[], Awaitable[int]],
        left_now: int,
    ) -> None:
        self.path, self.max_bytes = path, max_bytes
        self.size = 0
        self._in_flight, self._budget_left, self._left = in_flight, budget_left, left_now
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    async def make_room(self, incoming: int) -> None:
        """Before `incoming` more bytes: where the budget as last read would refuse them, read
        it again (jobs may have ended since the upload began), so `write` refuses only on a
        budget that is still used up."""
        if self._in_flight.uploads.bytes + incoming > self._left:
            self._left = await self._budget_left()

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        self._in_flight.add(len(data))
        if self.size > self.max_bytes:
            raise HttpError(413, f"the recording is larger than {self.max_bytes} bytes")
        if self._in_flight.uploads.bytes > self._left:
            raise HttpError(507, DISK_BUDGET_USED, retry_after=QUEUE_RETRY_AFTER_S)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


async def _body(request: Request, services: Services) -> AsyncIterator[bytes]:
    """The request's body as it comes; 503 once this replica drains (the server would cut the
    upload at its stop; no job exists yet, so the client sends it again, elsewhere)."""
    async for chunk in request.stream():
        if services.draining:
            raise HttpError(503, UPLOAD_DRAINING, retry_after=DRAIN_RETRY_AFTER_S)
        yield chunk


async def receive_raw(request: Request, services: Services, upload: UploadFile) -> None:
    async for chunk in _body(request, services):
        if chunk:
            await upload.make_room(len(chunk))
            upload.write(chunk)


async def receive_multipart(
    request: Request, services: Services, upload: UploadFile, boundary: bytes, others: list[str]
) -> dict[str, str]:
    """Stream the `file` part to `upload`; other parts are small option fields. The names of
    parts that are neither go to `others`."""
    fields: dict[str, str] = {}
    state: dict[str, Any] = {"name": None, "header": b"", "headers": {}, "value": bytearray()}
    seen_file = False
    parts = 0

    def on_part_begin() -> None:
        nonlocal parts
        parts += 1
        if parts > FORM_MAX_PARTS:
            raise HttpError(
                400,
                f"a multipart upload holds at most {FORM_MAX_PARTS} parts"
                " (the file and its options)",
            )
        state["headers"], state["name"], state["value"] = {}, None, bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        key = state["header"].lower()
        state["headers"][key] = state["headers"].get(key, b"") + data[start:end]

    def on_header_end() -> None:
        state["header"] = b""

    def on_headers_finished() -> None:
        nonlocal seen_file
        _, params = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if name == "file":
            if seen_file:
                raise HttpError(400, "only one file per upload")
            seen_file = True
        elif name not in OPTIONS:
            others.append(name)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["name"] == "file":
            upload.write(data[start:end])
        elif state["name"] in OPTIONS:  # other fields are ignored, their values not kept
            state["value"] += data[start:end]
            if len(state["value"]) > FORM_FIELD_MAX_BYTES:
                raise HttpError(
                    400,
                    f"form field {state['name']!r} is too long for an option"
                    " (the recording goes in the field 'file')",
                )

    def on_part_end() -> None:
        name = state["name"]
        if name in OPTIONS:  # others are ignored, as unknown query parameters are
            if name in fields:  # as a repeated query option: which one was meant?
                raise HttpError(400, f"form field {name!r} is given more than once")
            try:
                fields[name] = state["value"].decode()
            except UnicodeDecodeError:
                raise HttpError(400, f"form field {name!r} is not UTF-8") from None

    try:
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": on_part_begin,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
                "on_end": lambda: state.update(ended=True),
            },
        )
    except ValueError as exc:  # e.g. a boundary longer than multipart allows
        raise HttpError(400, f"the multipart boundary is not valid: {exc}") from None
    preamble = PreambleSkipper(boundary)
    async for chunk in _body(request, services):
        if chunk:
            await upload.make_room(len(chunk))  # (the file's part of it, or less)
            try:
                parser.write(preamble.feed(chunk))
            except HttpError:
                raise
            except PreambleTooLong as exc:
                raise HttpError(400, f"malformed multipart body: {exc}") from None
            except Exception as exc:
                reason = str(exc)[:200] or type(exc).__name__  # the parser says what it found
                raise HttpError(400, f"malformed multipart body: {reason}") from None
    parser.finalize()
    if not seen_file:
        raise HttpError(400, "multipart upload needs a 'file' field")
    if not state.get("ended"):  # cut short: the file may be part of one
        raise HttpError(400, "malformed multipart body: it ends before its closing boundary")
    return fields
