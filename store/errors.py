"""Exceptions that mean "the database cannot be reached right now" (not "a query is wrong"),
and those that mean "the database will never take these values".

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
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    StatementError,
)
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


def refused_for_its_values(exc: BaseException) -> bool:
    """Whether a write failed for the values it carried, so that trying it again cannot help:
    PostgreSQL's data exceptions (SQLSTATE class 22: a number out of range, a NUL in text, text
    its encoding cannot hold), or values refused before they were sent (a string where a number
    goes, half a surrogate pair on SQLite)."""
    if isinstance(exc, DBAPIError):
        return str(getattr(exc.orig, "pgcode", None) or "").startswith("22")
    if isinstance(exc, StatementError):  # raised while the statement was built: by a value,
        # or by the connection's own I/O (an OSError, which is no refusal)
        return isinstance(exc.orig, TypeError | ValueError)
    return isinstance(exc, UnicodeError)
