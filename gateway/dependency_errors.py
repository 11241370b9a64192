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
