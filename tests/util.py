"""Test helpers: wait for a condition (never sleep blindly) and a private Redis server."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aredis


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    within: float = 30.0,  # a deadline for a machine several times slower than a fast one
    interval: float = 0.01,
    what: str = "condition",
) -> None:
    """Poll `predicate` until it is true; fail the test after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {within}s")
        await asyncio.sleep(interval)


def wait_until(predicate: Callable[[], Any], what: str, within: float = 120.0) -> Any:
    """Poll `predicate` (from a test's own thread) until it returns something true, and return
    that; fail after `within` seconds (a deadline for a machine several times slower)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {within}s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test's own, for stopping and restarting without disturbing the
    shared one (the shared server must never be paused or restarted by a test)."""

    def __init__(self, workdir: Path, *, tls: tuple[str, str] | None = None) -> None:
        """With `tls` (key and certificate files), it listens for TLS only (`url`: rediss)."""
        self.port = free_port()
        self.workdir = workdir
        self.tls = tls
        # Also a socket file (`unix_url`): in a short directory, as its path is limited to 107
        # bytes and a test's tmp_path can be longer.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="redis-", dir="/tmp"))
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_dir / 'redis.sock'}?db=0"

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[1]}"
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> aredis.Redis:
        return aredis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    async def start(self) -> None:
        args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.socket_dir.mkdir(exist_ok=True)  # (stop removes it)
        args += ["--unixsocket", str(self.socket_dir / "redis.sock"), "--unixsocketperm", "700"]
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            key, cert = self.tls
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-key-file", key, "--tls-cert-file", cert, "--tls-ca-cert-file", cert]
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server",
            *args,
            "--dir",
            str(self.workdir),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

        async def up() -> bool:
            client = self.client()
            try:
                return bool(await client.ping())
            except Exception:
                return False
            finally:
                await client.aclose()

        await eventually(up, within=10, interval=0.05, what="private redis-server up")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def metric_value(metrics: object, name: str, **labels: str) -> float:
    """A sample of the gateway's one metrics module (`Metrics`), 0 when never counted."""
    registry = metrics.registry  # type: ignore[attr-defined]
    return registry.get_sample_value(f"meeting_gateway_{name}", labels) or 0.0


async def sessions_waiting_on_locks(pg_url: str) -> int:
    """How many sessions of `pg_url`'s PostgreSQL database wait on a lock now (a new
    connection each call: pg_stat_activity is a snapshot held until a transaction ends)."""
    import asyncpg

    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        )
    finally:
        await conn.close()
