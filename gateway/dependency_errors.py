"""Which exceptions mean "a dependency (database, Redis) cannot be reached right now".

Those end a WebSocket with 4503 and a REST request with 503, logged as one warning line without a
traceback: the client should retry later, and there is no bug to debug. Drivers raise some of
them unwrapped: asyncpg's connect raises OSError (refused, DNS failure), TimeoutError, or its own
connection errors (server starting up or shutting down, too many connections) before SQLAlchemy
can wrap them; redis-py raises its ConnectionError/TimeoutError (including "pool exhausted").
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from fanout.bus import BusUnavailable
from fanout.coordinator import CoordinatorUnavailable
from store.errors import DATABASE_UNREACHABLE
from store.numbering import NumberingUnavailable

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    BusUnavailable,
    CoordinatorUnavailable,
    NumberingUnavailable,
    SQLAlchemyError,  # includes the pool's TimeoutError (pool exhausted) and wrapped DBAPI errors
    *DATABASE_UNREACHABLE,  # refused, DNS failure (OSError), timeouts, asyncpg connection errors
    RedisConnectionError,  # includes "no connection available" from an exhausted pool
    RedisTimeoutError,
)


def unavailable(exc: BaseException) -> tuple[str, str]:
    """(the log line, the client's message) for `exc`, one of UNAVAILABLE_ERRORS. No database
    connection free in time is said apart: the pool's connections are all in use (load), or
    held by attempts to reach a database that does not answer; the pool cannot tell which."""
    if isinstance(exc, PoolTimeoutError):
        return (
            "database pool exhausted",
            "no database connection was free in time: all of the pool's (DB_POOL_SIZE) are in "
            "use, or the database is not answering; retry later",
        )
    return "dependency unavailable", "a dependency is unavailable, retry later"
