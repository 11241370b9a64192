"""DATABASE_URL as operators write it: which driver runs it, and what asyncpg connects with.

PostgreSQL URLs are libpq's (`sslmode`, `sslrootcert`, `target_session_attrs`, several hosts,
`host=/socket/dir`, ...): the store hands them to asyncpg's own DSN parser, which knows them,
rather than through SQLAlchemy's URL, whose options asyncpg would refuse as keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_BACKEND_ALIASES = {"postgres": "postgresql"}  # Heroku and many operators' spelling
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SUPPORTED = "sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user@host:5432/db"
CONNECT_TIMEOUT_S = 10.0  # unless the URL's connect_timeout (or timeout) says otherwise
COMMAND_TIMEOUT_S = 30.0
# A migration's statement rewrites whole tables (about a minute per million finals): bounded
# only so a stuck server cannot hold an upgrade forever.
MIGRATION_COMMAND_TIMEOUT_S = 4 * 3600.0


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


# Numbers in the query that are not libpq's: asyncpg.connect's own keyword arguments, which
# earlier versions took from it (through SQLAlchemy), and SQLAlchemy's statement cache's size.
# Taken out of the DSN, or asyncpg would send them to the server as settings.
_NUMBERS = {
    "timeout": float,  # libpq's connect_timeout too
    "command_timeout": float,
    "statement_cache_size": int,
    "max_cached_statement_lifetime": int,
    "max_cacheable_statement_size": int,
    "prepared_statement_cache_size": int,
}


@dataclass(frozen=True)
class PostgresDsn:
    """What asyncpg.connect is given for a PostgreSQL DATABASE_URL."""

    dsn: str  # libpq's URL, parsed by asyncpg
    arguments: dict[str, float | int]  # asyncpg.connect's keyword arguments
    # SQLAlchemy's own cache of prepared statements (0 behind PgBouncer in transaction mode).
    prepared_statement_cache_size: int | None


def libpq_dsn(url: str, *, command_timeout_s: float | None = None) -> PostgresDsn:
    """Split a postgresql+asyncpg URL into asyncpg's DSN and what is not libpq's (`_NUMBERS`),
    with SQLAlchemy's spelling `ssl=<mode>` of libpq's `sslmode`. `command_timeout_s` bounds
    each statement (default COMMAND_TIMEOUT_S) unless the URL's `command_timeout` says
    otherwise."""
    _, rest = _split(url)
    address, _, query = rest.partition("?")
    kept: list[tuple[str, str]] = []
    numbers: dict[str, float | int] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        key = "timeout" if name == "connect_timeout" else name
        if key in _NUMBERS:
            try:
                number = _NUMBERS[key](value)
            except ValueError:
                number = -1
            if not number >= 0 or (number == 0 and key.endswith("timeout")):
                raise ValueError(f"{name}={value!r} is not a positive number")
            numbers[key] = number
            continue
        if name in ("ssl", "sslmode"):
            mode = {"true": "require", "false": "disable"}.get(value.lower(), value)
            if mode not in SSL_MODES:
                raise ValueError(f"{name} must be one of {', '.join(SSL_MODES)}")
            name, value = "sslmode", mode
        kept.append((name, value))
    if sum(name == "sslmode" for name, _ in kept) > 1:
        raise ValueError("give sslmode (or ssl) once")
    dsn = f"postgresql://{address}" + (f"?{urlencode(kept)}" if kept else "")
    cache = numbers.pop("prepared_statement_cache_size", None)
    limit = COMMAND_TIMEOUT_S if command_timeout_s is None else command_timeout_s
    arguments = {"timeout": CONNECT_TIMEOUT_S, "command_timeout": limit, **numbers}
    return PostgresDsn(dsn, arguments, None if cache is None else int(cache))


def sqlite_file(url: str) -> str | None:
    """The file path a SQLite URL names as given (None for other databases; empty or
    `:memory:` for an in-memory one)."""
    if not is_sqlite_url(url):
        return None
    from sqlalchemy.engine import make_url

    return make_url(url).database or ""


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
