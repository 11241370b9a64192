"""Redis clients whose commands wait (bounded) for a pooled connection instead of failing.

redis-py's default asyncio pool raises at once when all its connections are busy, so a burst of
commands (a reconnect storm of viewers) fails with errors while Redis itself is healthy. A
`BlockingConnectionPool` makes the extra commands queue for a free connection for at most
`pool_timeout_s`; only a pool still exhausted after that is an error (reported as unavailable).

Every client also retries a command after a connection error or timeout, with exponential
backoff and jitter, on a fresh connection: after a Redis restart each pooled connection is dead,
and the first command on it would otherwise fail although Redis is back. Callers keep commands
safe to run twice (scripts keyed by an idempotency claim, compare-and-set, deduplicated messages).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

DEFAULT_MAX_CONNECTIONS = 50
DEFAULT_POOL_TIMEOUT_S = 5.0
DEFAULT_RETRIES = 3
# Errors after which a command is sent again on a new connection (the old one is discarded).
RETRY_ON = (RedisConnectionError, RedisTimeoutError)
RETRY_BACKOFF_BASE_S = 0.05
RETRY_BACKOFF_CAP_S = 0.5


def connection_retry(retries: int = DEFAULT_RETRIES) -> Retry:
    """redis-py's retry policy for our clients: `retries` more attempts after a connection
    error or timeout, waiting an exponentially growing, jittered delay (at most 0.5 s)."""
    backoff = ExponentialWithJitterBackoff(base=RETRY_BACKOFF_BASE_S, cap=RETRY_BACKOFF_CAP_S)
    return Retry(backoff, retries, supported_errors=RETRY_ON)


def blocking_client(
    url: str,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
    op_timeout_s: float,
    retries: int = DEFAULT_RETRIES,
    **connection_kwargs: Any,
) -> aredis.Redis:
    """A client owning a blocking pool of at most `max_connections` (closed with the client).

    Each command (and connecting) is bounded by `op_timeout_s`; redis-py retries a command
    `retries` times after a connection error or timeout (`connection_retry`), so every command
    sent through it must be safe to run twice.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        socket_timeout=op_timeout_s,
        socket_connect_timeout=op_timeout_s,
        retry=connection_retry(retries),
        retry_on_error=list(RETRY_ON),
        **connection_kwargs,
    )
    return aredis.Redis.from_pool(pool)
