"""DATABASE_URL as operators write it, as the URL of the async driver the store runs on."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_BACKEND_ALIASES = {"postgres": "postgresql"}  # Heroku and many operators' spelling
# libpq's `sslmode` values, which asyncpg takes as its `ssl` argument (it refuses `sslmode`).
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SUPPORTED = "sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user@host:5432/db"


def async_database_url(url: str) -> str:
    """`url` on the store's drivers: `postgres://` and `postgresql://` (any driver named) become
    postgresql+asyncpg:// with libpq's `sslmode` passed as asyncpg's `ssl`, and `sqlite://`
    becomes sqlite+aiosqlite://. A URL already in that form is returned as it is, byte for
    byte (the outbox's files are named after it). ValueError says what is wrong."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"is not a database URL; use {SUPPORTED}") from None
    backend = parsed.get_backend_name()
    backend = _BACKEND_ALIASES.get(backend, backend)
    driver = ASYNC_DRIVERS.get(backend)
    if driver is None:
        raise ValueError(f"{backend!r} databases are not supported; use {SUPPORTED}")
    query = dict(parsed.query)
    mode = query.pop("sslmode", None)
    if parsed.drivername == driver and mode is None:
        return url
    if mode is not None:
        if backend != "postgresql" or mode not in SSL_MODES:
            raise ValueError(f"sslmode must be one of {', '.join(SSL_MODES)} (PostgreSQL only)")
        if "ssl" in query:
            raise ValueError("give sslmode or ssl, not both")
        query["ssl"] = mode
    return parsed.set(drivername=driver, query=query).render_as_string(hide_password=False)


def database_identity(url: str) -> str:
    """Which database `url` names, however it is reached: its kind, host, port and name, without
    user, password or options (a rotated password still names the same database)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    backend = _BACKEND_ALIASES.get(backend, backend)
    host = parsed.host or str(parsed.query.get("host") or "")
    port = parsed.port or str(parsed.query.get("port") or "")
    return f"{backend}://{host}:{port}/{parsed.database or ''}"
