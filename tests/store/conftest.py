"""Store fixtures: every contract test runs against SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from store.migrate import open_store, upgrade
from store.sql import SqlTranscriptStore


class FakeClock:
    """Time that moves only when a test says so: freshness is tested without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
async def migrated_url(db_url: str) -> str:
    await upgrade(db_url)
    return db_url


@pytest.fixture
async def store(migrated_url: str) -> AsyncIterator[SqlTranscriptStore]:
    s = await open_store(migrated_url)
    yield s
    await s.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def clocked_store(migrated_url: str, clock: FakeClock) -> AsyncIterator[SqlTranscriptStore]:
    s = SqlTranscriptStore(migrated_url, clock=clock)
    yield s
    await s.aclose()
