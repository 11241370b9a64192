"""DATABASE_URL as operators write it: which driver runs it, and what asyncpg connects with.

PostgreSQL URLs are libpq's (`sslmode`, `sslrootcert`, `target_session_attrs`, several hosts,
`host=/socket/dir`, ...): the store hands them to asyncpg's own DSN parser, which knows them,
rather than through SQLAlchemy's URL, whose options asyncpg would refuse as keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_BACKEND_ALIASES = {"postgres": "postgresql"}  # Heroku and many operators' spelling
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SUPPORTED = "sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user@host:5432/db"
CONNECT_TIMEOUT_S = 10.0  # unless the URL's connect_timeout says otherwise
COMMAND_TIMEOUT_S = 30.0


def _split(url: str) -> tuple[str, str]:
    """(backend, the rest after `://`); ValueError if `url` is no database URL we run."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ValueError(f"is not a database URL; use {SUPPORTED}")
    backend = scheme.split("+", 1)[0].lower()
    backend = _BACKEND_ALIASES.get(backend, backend)
    if backend not in ASYNC_DRIVERS:
        raise ValueError(f"{backend!r} databases are not supported; use {SUPPORTED}")
    return backend, rest


def is_sqlite_url(url: str) -> bool:
    return url.partition(":")[0].split("+", 1)[0].lower() == "sqlite"


def async_database_url(url: str) -> str:
    """`url` on the store's drivers: `postgres://` and `postgresql://` (any driver named) become
    postgresql+asyncpg://, `sqlite://` sqlite+aiosqlite://; nothing else changes, so a URL
    already in that form is returned byte for byte. ValueError says what is wrong."""
    backend, rest = _split(url)
    driver = ASYNC_DRIVERS[backend]
    if backend == "postgresql":
        libpq_dsn(f"{driver}://{rest}")  # its options are checked now, not at first connect
    return url if url.startswith(f"{driver}://") else f"{driver}://{rest}"


# asyncpg.connect's own keyword arguments, which earlier versions took from the URL's query
# (through SQLAlchemy): taken out of the DSN, or asyncpg would send them as server settings.
_ASYNCPG_ARGUMENTS = {
    "timeout": float,
    "command_timeout": float,
    "statement_cache_size": int,
    "max_cached_statement_lifetime": int,
    "max_cacheable_statement_size": int,
}


@dataclass(frozen=True)
class PostgresDsn:
    """What asyncpg.connect is given for a PostgreSQL DATABASE_URL."""

    dsn: str  # libpq's URL, parsed by asyncpg
    connect_timeout_s: float
    # SQLAlchemy's own cache of prepared statements (0 behind PgBouncer in transaction mode).
    prepared_statement_cache_size: int | None
    arguments: dict[str, float | int] = field(default_factory=dict)  # asyncpg.connect's


def libpq_dsn(url: str) -> PostgresDsn:
    """Split a postgresql+asyncpg URL into asyncpg's DSN and what is not libpq's: SQLAlchemy's
    `prepared_statement_cache_size`, libpq's `connect_timeout` (asyncpg takes it as an argument)
    and SQLAlchemy's spelling `ssl=<mode>` of libpq's `sslmode`."""
    _, rest = _split(url)
    address, _, query = rest.partition("?")
    options = parse_qsl(query, keep_blank_values=True)
    kept: list[tuple[str, str]] = []
    timeout, cache = CONNECT_TIMEOUT_S, None
    arguments: dict[str, float | int] = {}
    for name, value in options:
        try:
            if name in ("connect_timeout", "timeout"):
                timeout = float(value)
                if not timeout > 0:
                    raise ValueError
                continue
            if name == "prepared_statement_cache_size":
                cache = int(value)
                if cache < 0:
                    raise ValueError
                continue
            if name in _ASYNCPG_ARGUMENTS:
                arguments[name] = _ASYNCPG_ARGUMENTS[name](value)
                if arguments[name] < 0:
                    raise ValueError
                continue
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a positive number") from None
        if name in ("ssl", "sslmode"):
            mode = {"true": "require", "false": "disable"}.get(value.lower(), value)
            if mode not in SSL_MODES:
                raise ValueError(f"{name} must be one of {', '.join(SSL_MODES)}")
            name, value = "sslmode", mode
        kept.append((name, value))
    if sum(name == "sslmode" for name, _ in kept) > 1:
        raise ValueError("give sslmode (or ssl) once")
    dsn = f"postgresql://{address}" + (f"?{urlencode(kept)}" if kept else "")
    return PostgresDsn(dsn, timeout, cache, arguments)


def database_identity(url: str) -> str:
    """Which database `url` names, however it is reached: its kind, hosts, ports and name,
    without user, password or options (a rotated password still names the same database)."""
    backend, rest = _split(url)
    address, _, query = rest.partition("?")
    if backend == "sqlite":  # the file, wherever the path was given from
        return f"sqlite://{Path(address.removeprefix('/')).expanduser().resolve()}"
    hosts, _, database = address.rpartition("@")[2].partition("/")
    options = dict(parse_qsl(query))
    hosts = hosts or ",".join(filter(None, (options.get("host"), options.get("port"))))
    # `options` may set the schema (search_path): another schema is another database here.
    schema = f"?options={options['options']}" if "options" in options else ""
    return f"{backend}://{hosts}/{database or options.get('dbname', '')}{schema}"
