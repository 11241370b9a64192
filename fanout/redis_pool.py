"""Redis clients whose commands wait (bounded) for a pooled connection instead of failing.

redis-py's default asyncio pool raises at once when all its connections are busy, so a burst of
commands (a reconnect storm of viewers) fails with errors while Redis itself is healthy. A
`BlockingConnectionPool` makes the extra commands queue for a free connection for at most
`pool_timeout_s`; only a pool still exhausted after that is an error (reported as unavailable).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

DEFAULT_MAX_CONNECTIONS = 50
DEFAULT_POOL_TIMEOUT_S = 5.0


def blocking_client(
    url: str,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
    op_timeout_s: float,
    retries: int,
    **connection_kwargs: Any,
) -> aredis.Redis:
    """A client owning a blocking pool of at most `max_connections` (closed with the client).

    Each command (and connecting) is bounded by `op_timeout_s`; redis-py retries a command
    `retries` times after a connection error, with a short jittered backoff: give 0 for commands
    that must not run twice (PUBLISH), more only where the command is idempotent.
    """
    retry = (
        Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries)
        if retries
        else Retry(NoBackoff(), 0)
    )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        socket_timeout=op_timeout_s,
        socket_connect_timeout=op_timeout_s,
        retry=retry,
        **connection_kwargs,
    )
    return aredis.Redis.from_pool(pool)
