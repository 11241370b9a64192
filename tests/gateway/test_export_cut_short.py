"""An export whose meeting is deleted while it streams must not end as if whole: it stopped at
the deletion with a normal end (42,700 of 200,000 cues, and the client could not tell)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from gateway.http.errors import HttpError
from gateway.http.meetings import ExportCutShort, _export, _ExportResponse
from store.base import NewFinal
from tests.gateway.in_process import built_services
from tests.gateway.serving import serving_app

T, M = "acme", "m-export-deleted"


async def test_finals_that_run_out_because_the_meeting_went_are_not_an_end(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with built_services(sqlite_url, tmp_path) as services:
        for n in range(1, 1201):  # three pages of the export's reads
            final = NewFinal(f"line {n}", n * 1000, n * 1000 + 500, "mic")
            await services.store.store_numbered_final(T, M, n, final, datetime.now(UTC))
        labels = await services.catalog.labels(T, M)
        body = await _export(services, T, M, "txt", 0, labels)
        first = await anext(body)  # the first page is out
        assert first.startswith(b"[00:00:01] line 1")
        assert await services.catalog.delete_meeting(T, M)
        with pytest.raises(ExportCutShort):
            async for _ in body:
                pass

        # Gone before the first read (deleted since the request found it): not found, not an
        # empty transcript ending as if whole.
        with pytest.raises(HttpError) as gone:
            await _export(services, T, M, "srt", 0, labels)
        assert gone.value.status == 404
        await services.store.claim_meeting(T, "m-empty")
        whole = await _export(services, T, "m-empty", "txt", 0, labels)
        assert [part async for part in whole] == []  # a meeting with nothing to export


async def test_the_client_sees_a_cut_export_as_incomplete() -> None:
    async def cut() -> AsyncIterator[bytes]:
        yield b"[00:00:01] line 1\n"
        raise ExportCutShort

    async def export(_: Request) -> _ExportResponse:
        return _ExportResponse(cut(), media_type="text/plain", filename="m.txt", ended=lambda: None)

    app = Starlette(routes=[Route("/export", export)])
    async with serving_app(app, http="h11") as (port, _):
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream("GET", f"http://127.0.0.1:{port}/export") as answer:
                    async for _ in answer.aiter_bytes():
                        pass
