"""Shared fixtures: real PostgreSQL and Redis on this machine, isolated per test run."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.util import PrivateRedis

PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
SHARED_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FIXTURES = Path(__file__).parent / "fixtures"

RUN_ID = uuid.uuid4().hex[:8]


def _ensure_services() -> None:
    """The machine starts PostgreSQL and Redis; start them again if one has stopped."""
    ping = subprocess.run(["redis-cli", "-u", SHARED_REDIS_URL, "ping"], capture_output=True)
    if ping.returncode:
        subprocess.run(
            "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
            "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
            shell=True,
            check=True,
        )
    if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432"]).returncode:
        subprocess.run(
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            shell=True,
            check=True,
        )
        subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-t", "30"], check=True)


def _delete_run_keys() -> None:
    """This run's keys in the shared Redis (every test prefix starts `t{RUN_ID}`): numbering
    marks live for days, and each run would leave thousands behind."""
    import redis

    client = redis.Redis.from_url(SHARED_REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"t{RUN_ID}*", count=1000))
        for at in range(0, len(keys), 500):
            client.unlink(*keys[at : at + 500])
    finally:
        client.close()


@pytest.fixture(scope="session", autouse=True)
def _services() -> Iterator[None]:
    _ensure_services()
    yield
    _delete_run_keys()


@pytest.fixture
def redis_prefix() -> str:
    """A key/channel prefix no other test or run shares."""
    return f"t{RUN_ID}{uuid.uuid4().hex[:6]}:"


@pytest.fixture
def redis_url() -> str:
    return SHARED_REDIS_URL


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database (dropped afterwards), as a SQLAlchemy asyncpg URL."""
    import asyncpg

    name = f"mg_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def fixtures_dir() -> Iterator[Path]:
    yield FIXTURES


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A throwaway redis-server on a free port, for tests that pause, kill or restart it."""
    server = PrivateRedis(tmp_path)
    await server.start()
    yield server
    await server.stop()
