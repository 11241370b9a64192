"""DATABASE_URL as operators write it, on the store's async drivers."""

from __future__ import annotations

import pytest

from store.urls import async_database_url, database_identity

CANONICAL = [
    "sqlite+aiosqlite:///./data/gateway.db",
    "sqlite+aiosqlite:///:memory:",
    "postgresql+asyncpg://user:p%40ss@db.example:5432/meetings",
    "postgresql+asyncpg://user@db/meetings?ssl=require",
]


@pytest.mark.parametrize("url", CANONICAL)
def test_a_url_on_the_async_drivers_is_kept_byte_for_byte(url: str) -> None:
    # The outbox's files are named after it: a working deployment's URL must not change.
    assert async_database_url(url) == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:pw@db:5432/m", "postgresql+asyncpg://u:pw@db:5432/m"),
        ("postgresql://u@db/m", "postgresql+asyncpg://u@db/m"),
        ("postgresql+psycopg2://u@db/m", "postgresql+asyncpg://u@db/m"),
        ("postgresql://u@db/m?sslmode=require", "postgresql+asyncpg://u@db/m?ssl=require"),
        (
            "postgresql+asyncpg://u@db/m?sslmode=verify-full",
            "postgresql+asyncpg://u@db/m?ssl=verify-full",
        ),
        ("sqlite:///data/g.db", "sqlite+aiosqlite:///data/g.db"),
        ("postgres://u:p%40ss@db/m", "postgresql+asyncpg://u:p%40ss@db/m"),
    ],
)
def test_other_spellings_move_to_the_async_drivers(url: str, expected: str) -> None:
    assert async_database_url(url) == expected


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u@db/m", "'mysql' databases are not supported; use sqlite+aiosqlite"),
        ("not a url", "is not a database URL"),
        ("postgresql://u@db/m?sslmode=sometimes", "sslmode must be one of disable, allow"),
        ("sqlite:///g.db?sslmode=require", "(PostgreSQL only)"),
        ("postgresql://u@db/m?sslmode=require&ssl=disable", "give sslmode or ssl, not both"),
    ],
)
def test_what_cannot_work_is_named(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=None) as raised:
        async_database_url(url)
    assert says in str(raised.value)


def test_a_database_is_named_without_who_connects_or_how() -> None:
    same = {
        database_identity("postgresql+asyncpg://gw:old@db:5432/m"),
        database_identity("postgres://other:new@db:5432/m?sslmode=require"),
    }
    assert same == {"postgresql://db:5432/m"}
    assert database_identity("postgresql+asyncpg://gw@/m?host=/run/pg") == "postgresql:///run/pg:/m"
    assert database_identity("postgresql+asyncpg://gw@db:5432/other") != same.pop()
