"""Exceptions that mean "the database cannot be reached right now" (not "a query is wrong").

asyncpg raises some of them before SQLAlchemy can wrap them: OSError for a refused connection or a
DNS failure, TimeoutError, and its own connection errors (server starting up or shutting down, too
many connections). The pool raises sqlalchemy's TimeoutError when it is exhausted.
"""

from __future__ import annotations

from asyncpg.exceptions import (
    CannotConnectNowError,
    PostgresConnectionError,
    TooManyConnectionsError,
)
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

DATABASE_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    PoolTimeoutError,
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PostgresConnectionError,
    CannotConnectNowError,
    TooManyConnectionsError,
)
