"""What real drivers raise when a dependency cannot be reached is classed as "unavailable"
(4503 / 503), not as a bug (1011 / 500): refused, DNS failure, timeout, pool exhausted."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.dependency_errors import UNAVAILABLE_ERRORS
from shared.redis_pool import blocking_client
from tests.conftest import PG_ADMIN_DSN
from tests.util import eventually, free_port

PG_URL = PG_ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://")


async def _select_one(url: str) -> None:
    engine = create_async_engine(url, connect_args={"timeout": 2})
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


# Ids, not the URLs: a free port differs between pytest-xdist workers, which must collect alike.
@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres", id="refused"),
        pytest.param("postgresql+asyncpg://postgres@no-such-host.invalid:5432/postgres", id="dns"),
    ],
)
async def test_unreachable_database(url: str) -> None:
    url = url.format(port=free_port())
    with pytest.raises(UNAVAILABLE_ERRORS):
        await _select_one(url)


async def test_database_pool_exhausted() -> None:
    engine = create_async_engine(PG_URL, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        async with engine.connect():
            with pytest.raises(UNAVAILABLE_ERRORS):
                async with engine.connect():
                    pass
    finally:
        await engine.dispose()


async def test_database_that_does_not_answer_in_time() -> None:
    # A listening socket that never speaks PostgreSQL: the connect times out.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UNAVAILABLE_ERRORS):
            await _select_one(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres")
    finally:
        server.close()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis://127.0.0.1:{port}/0", id="refused"),
        pytest.param("redis://no-such-host.invalid:6379/0", id="dns"),
    ],
)
async def test_unreachable_redis(url: str) -> None:
    url = url.format(port=free_port())
    client = aredis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        with pytest.raises(UNAVAILABLE_ERRORS):
            await client.ping()
    finally:
        await client.aclose()


async def test_redis_pool_exhausted(redis_url: str, redis_prefix: str) -> None:
    name = f"{redis_prefix}pool-test".replace(":", "-")
    client = blocking_client(
        redis_url,
        max_connections=1,
        pool_timeout_s=0.2,
        op_timeout_s=10.0,  # above the BLPOP's own 3 s: the read must outlast it
        retries=0,
        client_name=name,
    )
    admin = aredis.Redis.from_url(redis_url)
    try:
        blocker = asyncio.create_task(client.blpop([f"{redis_prefix}never-pushed"], timeout=3))

        async def only_connection_taken() -> bool:
            clients = await admin.client_list()
            return any(c["name"] == name and c["cmd"] == "blpop" for c in clients)

        await eventually(only_connection_taken, what="BLPOP holding the only connection")
        with pytest.raises(UNAVAILABLE_ERRORS):
            await client.ping()
        await blocker
    finally:
        await client.aclose()
        await admin.aclose()
