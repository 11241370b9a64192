"""File engines for the contract suite (`test_contract.py`), one fixture parametrized by name.

Each entry of `FILE_ENGINES` builds an engine from the test's request and returns it; the
fixture closes it after the test unless the factory marks it shared (`engine.shared = True`).
An entry may instead return an async context manager yielding the engine (the vendors' entries:
it starts their protocol-faithful fake, and closes engine and fake at its exit), since an async
fixture cannot be fetched with `request.getfixturevalue` from inside another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

from ingest.files.base import FileEngine
from ingest.files.local import LocalFileEngine
from tests.files.vendor_fakes import contract_deepgram, contract_google

_local: LocalFileEngine | None = None


def _local_engine(request: pytest.FixtureRequest) -> FileEngine:
    # One loaded model for the whole session (loading costs seconds on a loaded machine).
    global _local
    if _local is None:
        _local = LocalFileEngine()
        _local.shared = True
    return _local


FILE_ENGINES: dict[
    str,
    Callable[
        [pytest.FixtureRequest], FileEngine | contextlib.AbstractAsyncContextManager[FileEngine]
    ],
] = {
    "local": _local_engine,
    "deepgram": contract_deepgram,  # through tests/engines/fake_deepgram_batch.py
    "google": contract_google,  # through tests/engines/fake_google_batch.py
}


@pytest.fixture(params=sorted(FILE_ENGINES))
async def file_engine(request):
    made = FILE_ENGINES[request.param](request)
    if isinstance(made, contextlib.AbstractAsyncContextManager):
        async with made as engine:
            yield engine
        return
    engine = made
    yield engine
    if not getattr(engine, "shared", False):
        await engine.aclose()
