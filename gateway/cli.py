"""`meeting-gateway`: serve, keys generate, token, db upgrade, dev-banner, recordings, meetings."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from pydantic import ValidationError

from gateway.config import Settings, database_url_setting

HEARTBEAT_PROTOCOL = "gateway.server.heartbeat:HeartbeatWebSocketProtocol"
# Request-head limits and head timeout (HTTP_MAX_* and HTTP_HEAD_TIMEOUT_S settings).
EDGE_PROTOCOL = "gateway.server.edge:EdgeH11Protocol"
# Frames over MAX_INGEST_MSG_BYTES are refused by the endpoint with an error message and 1009;
# this outer cap only stops absurd frames before they are buffered.
WS_MAX_SIZE = 1 << 20
STARTUP_FAILURE = 3  # uvicorn's exit status when the server did not start (uvicorn.config)
WORKER_STOP_MARGIN_S = 10.0  # past DRAIN_TIMEOUT_S, before a worker that has not stopped is killed


DB_WAIT_POLL_S = 2.0  # `db wait` checks the schema this often
DEV_TENANT = "dev"  # tenant (and user) of the dev banner's tokens, as the dev scripts mint them


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, not {text!r}")
    return value


def _fail(message: str, code: int = 2) -> int:
    print(f"meeting-gateway: {message}", file=sys.stderr)
    return code


def _cause(exc: BaseException) -> str:
    """`exc` in one line: its class and its message's first line (SQLAlchemy adds a second, a
    link to its docs)."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


async def redis_refusal(url: str) -> str | None:
    """Why the Redis at `url` refuses this client (a wrong password, an unknown user, a database
    index it lacks), in one line; None when it answers, or cannot be reached at all."""
    import redis.asyncio as aredis
    from redis.exceptions import (
        AuthenticationError,
        AuthorizationError,
        NoPermissionError,
        ResponseError,
    )

    client = aredis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        await client.ping()
    except (AuthenticationError, AuthorizationError, NoPermissionError) as exc:
        return _cause(exc)
    except ResponseError as exc:  # BUSY, LOADING and the like pass; these do not
        lasting = ("DB index is out of range", "not allowed in cluster mode")
        return _cause(exc) if any(text in str(exc) for text in lasting) else None
    except Exception:  # unreachable or timing out: the gateway starts and waits for it
        return None
    finally:
        await client.aclose()
    return None


def port_taken(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on now (another server holds it), or None when it can.
    Bound as uvicorn binds it (SO_REUSEADDR: a closed server's lingering connections do not
    count), then released at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


async def _open_and_close(database_url: str) -> None:
    from store.migrate import open_store

    store = await open_store(database_url)
    await store.aclose()


def _no_public_key(path: Path) -> str:
    """Why JWT_PUBLIC_KEY_PATH gave no key, in words that say what to fix: nothing there, not
    readable by this user, or nothing usable in it."""
    fix = (
        "run `meeting-gateway keys generate --dir keys` or set JWT_PUBLIC_KEY_PATH to an RSA "
        "public key PEM file or a directory of <kid>.pem files"
    )
    if not path.exists():
        return f"no JWT public key at {path}: {fix}"
    readable = os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0))
    if not readable:
        return f"JWT_PUBLIC_KEY_PATH: this user cannot read {path} (permission denied)"
    if path.is_dir():
        found = f"{path} holds no readable <kid>.pem or <kid>.pub file with an RSA public key"
    else:
        found = f"{path} is not an RSA public key PEM"
    return f"JWT_PUBLIC_KEY_PATH: {found}: {fix}"


def _port_refusal(host: str, port: int, what: str, fix: str) -> str | None:
    reason = port_taken(host, port)
    if reason is None:
        return None
    if reason.startswith("cannot resolve"):  # a host that is no address: not a busy port
        return f"{what}: the host {host!r} cannot be listened on ({reason})"
    return f"{what} {host}:{port} is not available ({reason}; is a gateway already running?): {fix}"


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.auth import KeyRing
    from gateway.observability.logs import configure_logging

    settings = Settings()
    # Before anything logs (the key ring's warnings, the database check) and before uvicorn
    # starts: every line of a serving gateway, the supervisor's too, comes out in LOG_FORMAT.
    configure_logging(settings.log_level, settings.log_format)
    refusal = _port_refusal(
        args.host, args.port, "port", "stop what holds it, or choose another with --port"
    )
    if refusal is None and settings.metrics_port is not None:
        if settings.metrics_port == args.port:
            refusal = "METRICS_PORT must differ from --port"
        else:  # checked without SO_REUSEPORT, which workers share it with: another gateway's
            # workers holding it (with the option) refuse it too, rather than answering scrapes
            refusal = _port_refusal(
                settings.metrics_host,
                settings.metrics_port,
                "METRICS_PORT",
                "stop what holds it, or set another METRICS_PORT",
            )
    if refusal is not None:
        return _fail(refusal)
    key_path = settings.jwt_public_key_path
    try:
        KeyRing(key_path)
    except FileNotFoundError:
        return _fail(_no_public_key(key_path))
    if (args.ssl_keyfile is None) != (args.ssl_certfile is None):
        return _fail("--ssl-keyfile and --ssl-certfile go together")
    if args.ssl_keyfile is not None and (problem := _tls_problem(args)) is not None:
        return _fail(problem)
    if (problem := _unwritable_directory(settings)) is not None:
        return _fail(problem)
    if (problem := _missing_model_directory(settings)) is not None:
        return _fail(problem)
    if (problem := _unusable_ca_file(settings)) is not None:
        return _fail(problem)
    if (problem := _hold_sqlite_database(settings)) is not None:
        return _fail(problem)
    if args.workers > 1 and not settings.redis_url:
        return _fail(
            "--workers > 1 needs REDIS_URL: with the in-process bus each worker process would "
            "hold only part of a meeting's subscribers"
        )
    from gateway.engines import engine_names, google_credentials_problem
    from gateway.webhooks.endpoints_file import load_endpoints_file

    try:
        engine_names(settings)
        if (problem := google_credentials_problem(settings)) is not None:
            return _fail(problem)
        if settings.webhooks_file is not None:
            load_endpoints_file(
                settings.webhooks_file, allow_private=settings.webhooks_allow_private
            )
    except ValueError as exc:  # EndpointsFileError included
        return _fail(str(exc))
    if not settings.uses_sqlite:
        from store.errors import DATABASE_UNREACHABLE
        from store.migrate import is_up_to_date

        try:
            up_to_date = asyncio.run(is_up_to_date(settings.database_url))
        except DATABASE_UNREACHABLE as exc:
            # Finals may be waiting in the outbox: start, serve live traffic, check the schema
            # once the database answers (readyz stays 503 until then).
            import structlog

            structlog.get_logger("gateway").warning(
                "database unreachable: starting anyway, not ready until it answers",
                error=type(exc).__name__,
            )
            up_to_date = True
        except Exception as exc:
            return _fail(f"cannot reach the database ({_cause(exc)})", code=1)
        if not up_to_date:
            return _fail(
                "the database schema is not up to date: run `meeting-gateway db upgrade` "
                "(with the same DATABASE_URL) before starting the gateway",
                code=1,
            )
    if settings.uses_sqlite and args.workers > 1:
        # Migrated (and put in WAL mode) here, once, before the workers open it: two processes
        # making a new file's journal WAL at once could find it locked (a failed start).
        try:
            asyncio.run(_open_and_close(settings.database_url))
        except Exception as exc:
            return _fail(f"cannot open the database ({_cause(exc)})", code=1)
    if settings.redis_url and (refusal := asyncio.run(redis_refusal(settings.redis_url))):
        # Unreachable is waited out (unready until it answers); refused will not heal itself.
        return _fail(f"Redis refuses the gateway ({refusal}): check REDIS_URL", code=1)
    from gateway.shutdown_budget import server_shutdown_s

    try:
        metrics_dir = _prepare_multiprocess_metrics(args.workers)
    except OSError as exc:
        where = exc.filename or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        return _fail(f"PROMETHEUS_MULTIPROC_DIR: cannot use {where} ({exc.strerror})")
    config = uvicorn.Config(
        "gateway.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        http=EDGE_PROTOCOL,
        ws=HEARTBEAT_PROTOCOL,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        ws_max_size=WS_MAX_SIZE,
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
        proxy_headers=False,  # the app applies them (gateway/server/forwarded.py)
        timeout_keep_alive=settings.http_keepalive_s,
        log_config=None,
        # The app drains its connections first (gateway/drain.py); this bounds what is left.
        timeout_graceful_shutdown=server_shutdown_s(settings.drain_timeout_s),
    )
    try:
        if args.workers > 1:
            from gateway.server.workers import run_workers

            # The drain and both shutdowns fit in DRAIN_TIMEOUT_S; a worker past it (and a
            # margin for its start-up imports) is stuck, not draining.
            return run_workers(
                config, args.workers, settings.drain_timeout_s + WORKER_STOP_MARGIN_S
            )
        from gateway.server.server import GatewayServer

        server = GatewayServer(config)
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        return 0 if server.started else STARTUP_FAILURE
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _unwritable_directory(settings: Settings) -> str | None:
    """The first directory (or SQLite file) the gateway writes in that it cannot create or
    write, named by its setting (a read-only volume, or one owned by another user, is the usual
    first deploy)."""
    from store.urls import sqlite_file

    wanted = [("OUTBOX_DIR", settings.outbox_dir), ("RECORDINGS_DIR", settings.recordings_dir)]
    database = sqlite_file(settings.database_url)
    if database and not database.startswith("file:"):
        wanted.insert(0, ("DATABASE_URL", Path(database).expanduser().parent))
    for name, directory in wanted:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"{name}: cannot create the directory {directory} ({exc.strerror})"
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"{name}: cannot write in {directory} (running as uid {os.getuid()})"
    if database and not database.startswith("file:"):
        # The file and its journal too: one made by `sudo meeting-gateway db upgrade` (owned by
        # root) or made read-only served reads while every write failed, as an outage.
        path = Path(database).expanduser()
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if file.exists() and not os.access(file, os.R_OK | os.W_OK):
                return (
                    f"DATABASE_URL: cannot write {file} (running as uid {os.getuid()}; "
                    f"owned by uid {file.stat().st_uid}): give it to the gateway's user"
                )
    return None


_SQLITE_HOLD: list[int] = []  # the lock's descriptor, open for the life of the process


def _hold_sqlite_database(settings: Settings) -> str | None:
    """Take the SQLite database for this process (a lock file beside it): a second gateway on
    the same file numbered the same meetings apart and renumbered finals as it stored them."""
    import fcntl

    from store.urls import sqlite_file

    database = sqlite_file(settings.database_url)
    if not database or database.startswith("file:"):
        return None
    lock = Path(database).expanduser()
    lock = lock.with_name(lock.name + ".serve-lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return (
            f"DATABASE_URL: another gateway serves {database} (SQLite is for one process: "
            "stop it, or give this one its own DATABASE_URL, or use PostgreSQL for more)"
        )
    _SQLITE_HOLD.append(fd)
    return None


def _missing_model_directory(settings: Settings) -> str | None:
    """A model setting written as a path that names no directory: refused here, not with a
    traceback when the engine starts (a name is a model or hub repository, fetched then)."""
    for name, value in (
        ("LOCAL_FINALS_MODEL", settings.local_finals_model),
        ("LOCAL_RECORDINGS_MODEL", settings.local_recordings_model),
    ):
        if value is not None and value.startswith(("/", "./", "../", "~")):
            directory = Path(value).expanduser()
            if not (directory / "model.bin").is_file():
                what = "no directory" if not directory.is_dir() else "no model.bin in the directory"
                return (
                    f"{name}: {what} at {value}: give a directory holding a CTranslate2 "
                    "Whisper conversion, or a model name (tiny.en, base; pocketsphinx for the "
                    "live finals)"
                )
        elif value is not None and (problem := _unknown_model_name(value.strip())) is not None:
            return f"{name}: {problem}"
    return None


def _unusable_ca_file(settings: Settings) -> str | None:
    if settings.webhooks_ca_file is None:
        return None
    import ssl

    from gateway.webhooks.sender import trust_store

    try:
        trust_store(settings.webhooks_ca_file)
    except (OSError, ssl.SSLError) as exc:
        return (
            f"WEBHOOKS_CA_FILE: cannot load {settings.webhooks_ca_file} as PEM certificates ({exc})"
        )
    return None


def _unknown_model_name(value: str) -> str | None:
    """A name that is neither faster-whisper's (`tiny.eng`: its fetch failed in the lifespan,
    with a traceback) nor a hub repository (`owner/name`) nor an existing directory."""
    from faster_whisper import available_models

    if value.lower() == "pocketsphinx" or "/" in value or Path(value).is_dir():
        return None
    known = available_models()
    if value in known:
        return None
    return (
        f"no model named {value!r}: one of {', '.join(known)}, a hub repository (owner/name) "
        "or a directory (pocketsphinx for the live finals)"
    )


# What prometheus-client writes in PROMETHEUS_MULTIPROC_DIR: `counter_<pid>.db`,
# `gauge_livemax_<pid>.db`, `histogram_<pid>.db`, ...
PROMETHEUS_FILE = re.compile(r"(counter|histogram|summary|gauge_[a-z]+)_\d+\.db")


def _prepare_multiprocess_metrics(workers: int) -> str | None:
    """With several workers, give prometheus-client a directory they all write their values to.

    PROMETHEUS_MULTIPROC_DIR set by the operator is used (its stale files from an earlier run are
    removed); otherwise a fresh temporary directory, removed at exit (returned).
    """
    from gateway.observability.metrics import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    if given is not None and not given.strip():
        # Empty is unset, for prometheus-client too (it took "" as the working directory).
        del os.environ[MULTIPROC_ENV]
        given = None
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.iterdir():
            # prometheus-client's own files only: another file there (a SQLite database in the
            # same directory) is not a metric's.
            if PROMETHEUS_FILE.fullmatch(stale.name):
                stale.unlink(missing_ok=True)
        return None
    if workers <= 1:
        return None
    created = tempfile.mkdtemp(prefix="meeting-gateway-metrics-")
    os.environ[MULTIPROC_ENV] = created  # inherited by the worker processes
    return created


def _tls_problem(args: argparse.Namespace) -> str | None:
    """Why the TLS key and certificate cannot be served, or None (checked before the app starts,
    which uvicorn would only find when binding, with a traceback)."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            args.ssl_certfile, args.ssl_keyfile
        )
    except ssl.SSLError as exc:  # (an OSError too)
        return f"--ssl-certfile and --ssl-keyfile are not a PEM certificate and its key ({exc})"
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"cannot read the TLS files: {exc.strerror or exc}{where}"
    return None


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from gateway.tokens import generate_keypair

    try:
        private, public = generate_keypair(Path(args.dir), force=args.force)
    except FileExistsError as exc:
        return _fail(f"{exc} (use --force to replace it)")
    except OSError as exc:
        return _fail(f"cannot write the key pair in {args.dir}: {exc.strerror or exc}", code=1)
    print(f"private key: {private} (mode 0600, keep it secret)")
    print(f"public key:  {public} (JWT_PUBLIC_KEY_PATH)")
    return 0


def _mint(args: argparse.Namespace, **claims: object) -> str:
    """A token signed with `--key`, for the configured audience and issuer."""
    from gateway.client.tokens import dev_token

    settings = Settings()
    return dev_token(
        args.key,
        audience=getattr(args, "audience", None) or settings.jwt_audience,
        issuer=getattr(args, "issuer", None) or settings.jwt_issuer,
        **claims,  # type: ignore[arg-type]
    )


# The gateway refuses an `exp` past the year 9999 (datetime's limit).
LATEST_EXP = 253_402_300_799


def _token_problem(
    args: argparse.Namespace, roles: list[str], meetings: list[str] | None
) -> str | None:
    """Why the gateway would refuse a token with these claims, or None."""
    import time

    from gateway.ids import ID_RULE, valid_id

    if not valid_id(args.tenant):
        return f"--tenant must be {ID_RULE}"
    if not args.user.strip():
        return "--user must not be empty"
    if not roles:
        return "--roles needs at least one role: ingest, viewer, ops, editor, admin"
    if meetings == []:  # `--meetings "$MEETING"` with it unset: not a tenant-wide token
        return "--meetings names no meeting (leave the option out for a tenant-wide token)"
    if meetings is not None and (bad := [m for m in meetings if not valid_id(m)]):
        return f"--meetings: {bad[0]!r} is not a meeting id ({ID_RULE})"
    if not 1 <= args.ttl <= LATEST_EXP - int(time.time()):
        return "--ttl must be at least 1 second and end before the year 10000"
    return None


def cmd_token(args: argparse.Namespace) -> int:
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    given = args.meetings
    meetings = None if given is None else [m.strip() for m in given.split(",") if m.strip()]
    if (problem := _token_problem(args, roles, meetings)) is not None:
        return _fail(problem)
    try:
        token = _mint(
            args,
            tenant=args.tenant,
            user=args.user,
            roles=roles,
            meetings=meetings,
            ttl_s=args.ttl,
            kid=args.kid,
        )
    except ValidationError:
        raise  # the settings: told without their values (`main`)
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    print(token)
    return 0


class _BadOption(Exception):
    """A command-line option's value is refused (the message names the option)."""


def _database_url(args: argparse.Namespace) -> str:
    """--database-url, else DATABASE_URL (Settings reports a bad one as for `serve`)."""
    if not args.database_url:
        return Settings().database_url
    try:
        return database_url_setting(args.database_url)
    except ValueError as exc:
        raise _BadOption(f"--database-url: {exc}") from None


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from store.migrate import NewerSchema, current_revision, upgrade

    try:
        url = _database_url(args)
    except _BadOption as exc:
        return _fail(str(exc))
    try:
        asyncio.run(upgrade(url))
        revision = asyncio.run(current_revision(url))
    except NewerSchema as newer:  # a rollback re-running its release's Job: no fault
        print(f"{newer}: nothing to do (this release runs on it)")
        return 0
    except Exception as exc:
        return _fail(f"migration failed ({_cause(exc)})", code=1)
    print(f"database at head revision {revision}")
    return 0


def _seconds(text: str) -> float:
    """A finite number of seconds, 0 or more (nan never gave up, looping without a pause)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more: {text}")
    return value


def cmd_db_wait(args: argparse.Namespace) -> int:
    """Wait until the database's schema serves this release (a pod's init container: the
    db-upgrade Job may still be running). SQLite is migrated by `serve` itself."""
    from store.migrate import current_revision, schema_is_usable
    from store.urls import is_sqlite_url

    try:
        url = _database_url(args)
    except _BadOption as exc:
        return _fail(str(exc))
    if is_sqlite_url(url):
        # Said, so a pod whose DATABASE_URL did not reach it shows why it did not wait.
        if args.database_url:
            where = "--database-url is SQLite"
        elif os.environ.get("DATABASE_URL"):
            where = "DATABASE_URL is SQLite"
        else:
            where = "DATABASE_URL is unset: the default SQLite file"
        print(f"{where} (`serve` migrates it itself): nothing to wait for")
        return 0
    deadline = time.monotonic() + args.timeout
    said = ""
    while True:
        try:
            revision = asyncio.run(current_revision(url))
            if schema_is_usable(revision):
                print(f"database schema {revision} serves this release")
                return 0
            why = f"the database schema is {revision or 'empty'}: waiting for `db upgrade`"
        except Exception as exc:
            why = f"database not answering ({_cause(exc)})"
        if why != said:  # each new state once, not every 2 s
            print(why, file=sys.stderr, flush=True)
            said = why
        if time.monotonic() >= deadline:
            return _fail(f"gave up after {args.timeout:g} s: {why}", code=1)
        time.sleep(min(DB_WAIT_POLL_S, max(0.0, deadline - time.monotonic())))


def cmd_dev_banner(args: argparse.Namespace) -> int:
    """Print ready-to-paste commands that stream a sample into a meeting and watch it live."""

    def token(roles: list[str]) -> str:
        return _mint(
            args,
            tenant=DEV_TENANT,
            user=DEV_TENANT,
            roles=roles,
            meetings=[args.meeting],
            ttl_s=24 * 3600,
        )

    if args.check_free:
        # Before minting anything: tokens printed for a gateway that cannot start mislead.
        refusal = _port_refusal(
            args.host,
            args.port,
            "port",
            f"stop what holds it, or run `make run PORT={args.port + 1}`",
        )
        if refusal is not None:
            return _fail(refusal)
    from gateway.ids import ID_RULE, valid_id

    if not valid_id(args.meeting):
        return _fail(f"--meeting must be {ID_RULE}")
    try:
        ingest, viewer = token(["ingest"]), token(["viewer"])
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    url = f"http://{args.host}:{args.port}"
    py = shlex.quote(sys.executable)
    # Absolute paths: the commands are pasted into new terminals, which open elsewhere.
    scripts = Path.cwd() / "scripts"
    subscribe = shlex.quote(str(scripts / "dev_subscribe_ws.py"))
    send = shlex.quote(str(scripts / "dev_send_pcm.py"))
    sample = Path(args.sample).resolve()
    wav = f"--wav {shlex.quote(str(sample))}" if sample.exists() else "--create-test-wav"
    print(
        f"""
meeting-gateway on {url} (embedded defaults: SQLite, in-process bus, local engine)
Tokens below: tenant '{DEV_TENANT}', user '{DEV_TENANT}', meeting '{args.meeting}' only, 24 hours.

Watch meeting '{args.meeting}' live (in a second terminal):
  {py} {subscribe} --url {url} --meeting {args.meeting} --token {viewer}

Or watch it in a browser:
  {url}/viewer?meeting={args.meeting}#token={viewer}

Stream a sample recording into it (in a third terminal):
  {py} {send} --url {url} --meeting {args.meeting} {wav} --token {ingest}

Transcript afterwards:
  curl -sS -H "Authorization: Bearer {viewer}" \\
    "{url}/api/v1/meetings/{args.meeting}/transcript?format=srt"
""",
        flush=True,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gateway.client.bootstrap import DefaultsHelpFormatter as Help

    parser = argparse.ArgumentParser(prog="meeting-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway", formatter_class=Help)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=_port, default=8000, help="port to listen on")
    serve.add_argument(
        "--workers", type=_positive, default=1, help="processes (needs REDIS_URL if > 1)"
    )
    serve.add_argument("--ssl-keyfile", help="serve TLS with this PEM private key")
    serve.add_argument("--ssl-certfile", help="the PEM certificate (chain) for --ssl-keyfile")
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="key material").add_subparsers(dest="keys", required=True)
    generate = keys.add_parser("generate", help="write an RS256 key pair", formatter_class=Help)
    generate.add_argument("--dir", default="keys", help="where jwt.key and jwt.pub go")
    generate.add_argument("--force", action="store_true", help="replace an existing key pair")
    generate.set_defaults(func=cmd_keys_generate)

    token = sub.add_parser("token", help="mint a JWT (development and tests)", formatter_class=Help)
    token.add_argument("--tenant", required=True, help="tenant_id claim")
    token.add_argument("--user", required=True, help="sub claim")
    token.add_argument(
        "--roles", required=True, help="comma-separated: ingest,viewer,ops,editor,admin"
    )
    token.add_argument("--meetings", help="comma-separated meeting ids the token is bound to")
    token.add_argument("--ttl", type=int, default=3600, help="seconds")
    token.add_argument("--key", default="keys/jwt.key", help="private key to sign with")
    token.add_argument("--kid", help="key id header (for a directory of public keys)")
    token.add_argument("--audience", help="default: JWT_AUDIENCE")
    token.add_argument("--issuer", help="default: JWT_ISSUER")
    token.set_defaults(func=cmd_token)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db", required=True)
    db_upgrade = db.add_parser(
        "upgrade", help="apply migrations (SQLite or PostgreSQL)", formatter_class=Help
    )
    db_upgrade.add_argument("--database-url", help="default: DATABASE_URL")
    db_upgrade.set_defaults(func=cmd_db_upgrade)
    db_wait = db.add_parser(
        "wait",
        help="wait until the schema serves this release (an init container)",
        formatter_class=Help,
    )
    db_wait.add_argument("--database-url", help="default: DATABASE_URL")
    db_wait.add_argument(
        "--timeout", type=_seconds, default=600.0, help="seconds (0 or more), then exit 1"
    )
    db_wait.set_defaults(func=cmd_db_wait)

    banner = sub.add_parser(
        "dev-banner",
        help="print commands to try a running dev gateway",
        description=textwrap.fill(
            f"Prints commands with fresh tokens for tenant '{DEV_TENANT}' (user '{DEV_TENANT}', "
            "valid 24 hours for --meeting only) that stream into and watch a gateway on "
            "--host:--port.",
            width=78,
        ),
        formatter_class=Help,
    )
    banner.add_argument("--host", default="127.0.0.1", help="the gateway's address")
    banner.add_argument("--port", type=_port, default=8000, help="the gateway's port")
    banner.add_argument(
        "--check-free",
        action="store_true",
        help="first check that --host:--port is free and fail if not (`make run` does, before "
        "starting the gateway there)",
    )
    banner.add_argument("--meeting", default="demo", help="meeting the tokens are bound to")
    banner.add_argument("--key", default="keys/jwt.key", help="private key to sign with")
    banner.add_argument(
        "--sample",
        default="tests/fixtures/two_sentences_16k_mono.wav",
        help="WAV the streaming command sends",
    )
    banner.set_defaults(func=cmd_dev_banner)

    from gateway.client import purge, recordings  # meetings purge; recordings upload|status|cancel

    recordings.add_parser(sub)
    purge.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:
        return _fail(settings_problems(exc))


def settings_problems(exc: ValidationError) -> str:
    """What is wrong with the environment's settings, one line each, naming the variable and
    never its value (an API key must not reach the logs through a misspelt neighbour)."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        names = [str(part).upper() for part in error["loc"]]
        where = ".".join(names) if names else "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "invalid settings:\n  " + "\n  ".join(lines)


if __name__ == "__main__":
    sys.exit(main())
