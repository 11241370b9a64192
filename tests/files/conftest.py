"""File engines for the contract suite (`test_contract.py`), one fixture parametrized by name.

Each entry of `FILE_ENGINES` builds an engine from the test's request (so a vendor entry can
start its protocol-faithful fake with `request.getfixturevalue(...)`) and returns it; the
fixture closes it after the test unless the factory marks it shared (`engine.shared = True`).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ingest.files.base import FileEngine
from ingest.files.local import LocalFileEngine

_local: LocalFileEngine | None = None


def _local_engine(request: pytest.FixtureRequest) -> FileEngine:
    # One loaded model for the whole session (loading costs seconds on a loaded machine).
    global _local
    if _local is None:
        _local = LocalFileEngine()
        _local.shared = True
    return _local


FILE_ENGINES: dict[str, Callable[[pytest.FixtureRequest], FileEngine]] = {
    "local": _local_engine,
}


@pytest.fixture(params=sorted(FILE_ENGINES))
async def file_engine(request):
    engine = FILE_ENGINES[request.param](request)
    yield engine
    if not getattr(engine, "shared", False):
        await engine.aclose()
