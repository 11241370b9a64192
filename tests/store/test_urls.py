"""DATABASE_URL as operators write it: the driver that runs it, and what asyncpg is given."""

from __future__ import annotations

import pytest

from store.urls import (
    COMMAND_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    async_database_url,
    database_identity,
    libpq_dsn,
)

CANONICAL = [
    "sqlite+aiosqlite:///./data/gateway.db",
    "sqlite+aiosqlite:///:memory:",
    "postgresql+asyncpg://user:p%40ss@db.example:5432/meetings",
    "postgresql+asyncpg://user@db/meetings?ssl=require",
    "postgresql+asyncpg://user@h1:5432,h2:5432/meetings?target_session_attrs=read-write",
]


@pytest.mark.parametrize("url", CANONICAL)
def test_a_url_on_the_async_drivers_is_kept_byte_for_byte(url: str) -> None:
    # The outbox's files were named after it by earlier versions: it must not change.
    assert async_database_url(url) == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:pw@db:5432/m", "postgresql+asyncpg://u:pw@db:5432/m"),
        ("postgresql://u@db/m?sslmode=require", "postgresql+asyncpg://u@db/m?sslmode=require"),
        ("postgresql+psycopg2://u@db/m", "postgresql+asyncpg://u@db/m"),
        ("postgres://u:p%40ss@db/m", "postgresql+asyncpg://u:p%40ss@db/m"),
        ("sqlite:///data/g.db", "sqlite+aiosqlite:///data/g.db"),
        ("sqlite:///my data/g.db", "sqlite+aiosqlite:///my data/g.db"),
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
        ("postgresql://u@db/m?sslmode=require&ssl=disable", "give sslmode (or ssl) once"),
        ("postgresql://u@db/m?connect_timeout=soon", "connect_timeout='soon' is not a positive"),
        ("postgresql://u@db/m?command_timeout=0", "command_timeout='0' is not a positive"),
        ("postgresql://u@db/m?statement_cache_size=nan", "statement_cache_size='nan' is not"),
    ],
)
def test_what_cannot_work_is_named(url: str, says: str) -> None:
    with pytest.raises(ValueError) as raised:
        async_database_url(url)
    assert says in str(raised.value)


def test_asyncpg_gets_libpq_options_and_the_rest_is_taken_out() -> None:
    target = libpq_dsn(
        "postgresql+asyncpg://gw:p%40ss@h1:5432,h2:5433/m?ssl=verify-full&sslrootcert=/ca.pem"
        "&connect_timeout=4&application_name=gw&prepared_statement_cache_size=0"
    )
    assert target.dsn == (
        "postgresql://gw:p%40ss@h1:5432,h2:5433/m"
        "?sslmode=verify-full&sslrootcert=%2Fca.pem&application_name=gw"
    )
    assert target.arguments == {"timeout": 4.0, "command_timeout": COMMAND_TIMEOUT_S}
    assert target.prepared_statement_cache_size == 0
    plain = libpq_dsn("postgresql+asyncpg://gw@db/m")
    assert plain.dsn == "postgresql://gw@db/m"
    assert plain.arguments == {"timeout": CONNECT_TIMEOUT_S, "command_timeout": COMMAND_TIMEOUT_S}
    assert plain.prepared_statement_cache_size is None
    tuned = libpq_dsn("postgres://gw@db/m?command_timeout=60&statement_cache_size=0")
    assert tuned.arguments == {
        "timeout": CONNECT_TIMEOUT_S,
        "command_timeout": 60.0,
        "statement_cache_size": 0,
    }


def test_a_database_is_named_without_who_connects_or_how() -> None:
    same = {
        database_identity("postgresql+asyncpg://gw:old@db:5432/m"),
        database_identity("postgres://other:new@db:5432/m?sslmode=require"),
    }
    assert same == {"postgresql://db:5432/m"}
    assert database_identity("postgresql+asyncpg://gw@/m?host=/run/pg") == "postgresql:///run/pg/m"
    assert database_identity("postgresql+asyncpg://gw@db:5432/other") != same.pop()
    schema = "postgresql+asyncpg://gw@db:5432/m?options=-csearch_path%3Dtenant_a"
    assert database_identity(schema) != database_identity("postgres://gw@db:5432/m")
    # SQLite: the file itself (a path with an `@` is no user@host).
    assert database_identity("sqlite+aiosqlite:////srv/a@x/gw.db") == "sqlite:///srv/a@x/gw.db"
    assert database_identity("sqlite:////srv/b@x/gw.db") == "sqlite:///srv/b@x/gw.db"


@pytest.mark.parametrize(
    "options",
    [
        "?application_name=gw-{tag}&connect_timeout=5&sslmode=disable",
        # asyncpg's own arguments, which earlier versions took from the query (SQLAlchemy).
        "?command_timeout=60&statement_cache_size=0&timeout=5&application_name=gw-{tag}",
        # libpq's socket form, and several hosts tried in turn (the first refuses).
        "?host=/var/run/postgresql&application_name=gw-{tag}",
        "@multihost?application_name=gw-{tag}&target_session_attrs=read-write",
    ],
)
async def test_libpq_urls_reach_postgresql(pg_url: str, options: str) -> None:
    from sqlalchemy import text

    from store.sql import create_engine

    tag = options[:6].strip("?@=")
    name = pg_url.rsplit("/", 1)[1]
    if options.startswith("@multihost"):
        url = f"postgres://postgres@127.0.0.1:1,127.0.0.1:5432/{name}"
        options = options.removeprefix("@multihost")
    elif "host=/" in options:
        url = f"postgresql://postgres@/{name}"
    else:
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    engine = create_engine(async_database_url(url + options.format(tag=tag)))
    try:
        async with engine.connect() as conn:
            seen = await conn.execute(text("SELECT current_setting('application_name')"))
            assert seen.scalar_one() == f"gw-{tag}"
    finally:
        await engine.dispose()
