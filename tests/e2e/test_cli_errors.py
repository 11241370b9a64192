"""Mistakes at the command line get one line saying what is wrong and a non-zero exit, never a
traceback: bad ports, TLS files, keys and claims, and a gateway the recordings commands cannot
reach (following a job backs off and gives up instead of spinning)."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.client.recordings import follow
from tests.e2e.harness import REPO
from tests.e2e.test_quickstart import cli


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("keys")
    assert cli("keys", "generate", "--dir", str(where)).returncode == 0
    return where


def refused(*args: str, code: int = 2, says: str, cwd: Path | None = None, **env: str) -> None:
    result = cli(*args, env=env, **({"cwd": cwd} if cwd else {}))
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert says in result.stderr, result.stderr


def test_ports_out_of_range_are_refused_before_anything_starts() -> None:
    refused("serve", "--port", "99999", says="--port: must be a port from 0 to 65535")
    refused("dev-banner", "--port", "-1", says="--port: must be a port from 0 to 65535")


def test_missing_or_mismatched_tls_files(keys: Path, tmp_path: Path) -> None:
    env = {"JWT_PUBLIC_KEY_PATH": str(keys / "jwt.pub")}
    missing = (
        "--ssl-keyfile",
        str(tmp_path / "no.key"),
        "--ssl-certfile",
        str(tmp_path / "no.pem"),
    )
    refused("serve", "--port", "0", *missing, says="cannot read the TLS files", **env)
    garbage = tmp_path / "cert.pem"
    garbage.write_text("not a certificate\n")
    files = ("--ssl-keyfile", str(keys / "jwt.key"), "--ssl-certfile", str(garbage))
    refused("serve", "--port", "0", *files, says="not a PEM certificate and its key", **env)


def test_keys_in_a_place_that_cannot_hold_them() -> None:
    refused(
        "keys", "generate", "--dir", "/proc/no-such-dir", code=1, says="cannot write the key pair"
    )


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("", "cannot read"),  # the directory itself
        ("jwt.pub", "is not an RSA private key PEM"),
        ("not-a-key.txt", "is not an RSA private key PEM"),
    ],
)
def test_token_with_a_key_that_cannot_sign(keys: Path, key: str, says: str) -> None:
    (keys / "not-a-key.txt").write_text("hello\n")
    claims = ("--tenant", "acme", "--user", "u", "--roles", "viewer")
    refused("token", *claims, "--key", str(keys / key), says=says)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (("--ttl", "999999999999"), "--ttl must be at least 1 second"),
        (("--ttl", "0"), "--ttl must be at least 1 second"),
        (("--tenant", ""), "--tenant must be"),
        (("--roles", " , "), "--roles needs at least one role"),
        (("--meetings", "a b"), "is not a meeting id"),
        # An unset shell variable: refused, not made a tenant-wide token (nor one for none).
        (("--meetings", ""), "--meetings names no meeting"),
        (("--meetings", " , "), "--meetings names no meeting"),
    ],
)
def test_token_claims_the_gateway_would_refuse(
    keys: Path, change: tuple[str, str], says: str
) -> None:
    claims = {"--tenant": "acme", "--user": "u", "--roles": "viewer"}
    claims[change[0]] = change[1]
    args = [part for pair in claims.items() for part in pair]
    refused("token", *args, "--key", str(keys / "jwt.key"), says=says)


def test_dev_banner_refuses_a_meeting_id_its_commands_could_not_carry(keys: Path) -> None:
    refused(
        "dev-banner",
        "--meeting",
        "bad id",
        "--key",
        str(keys / "jwt.key"),
        says="--meeting must be",
    )


def test_recordings_commands_without_a_key_or_a_gateway(tmp_path: Path) -> None:
    refused("recordings", "status", "job_x", code=1, says="jwt.key not found", cwd=tmp_path)
    down = ("--token", "t", "--url", "http://127.0.0.1:1")
    refused("recordings", "status", "job_x", *down, code=1, says="cannot reach http://127.0.0.1:1")
    refused("recordings", "cancel", "job_x", *down, code=1, says="cannot reach")
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    refused(
        "recordings", "upload", str(audio), "--meeting", "m", *down, code=1, says="cannot reach"
    )
    no_scheme = ("--token", "t", "--url", "localhost:18200")
    refused("recordings", "status", "job_x", *no_scheme, code=1, says="localhost:18200")
    refused("recordings", "upload", str(audio), "--meeting", "a/b", *down, says="--meeting must be")


def test_following_a_job_backs_off_then_gives_up_when_the_gateway_is_gone() -> None:
    """A gateway that hangs up on every request: a handful of attempts, then one line to say
    the job goes on (not a loop hammering the address for ever)."""
    server = socket.create_server(("127.0.0.1", 0))
    attempts = 0

    def hang_up() -> None:
        nonlocal attempts
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            attempts += 1
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    base = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        with pytest.raises(SystemExit) as gave_up:
            follow(base, "t", "job_x", io.StringIO(), give_up_s=2.0)
    finally:
        server.close()
    assert "the job goes on: `recordings status job_x`" in str(gave_up.value)
    assert 1 <= attempts <= 10, attempts  # backed off, not a loop (a slow connect may be one)


def test_a_database_url_no_driver_serves_is_named() -> None:
    says = "'mysql' databases are not supported; use sqlite+aiosqlite:///"
    refused("db", "upgrade", says=f"DATABASE_URL: {says}", DATABASE_URL="mysql://u@db/m")
    refused("db", "upgrade", "--database-url", "mysql://u@db/m", says=f"--database-url: {says}")
    refused(
        "serve", "--port", "0", says="sslmode must be one of", DATABASE_URL="postgres://d?sslmode=x"
    )


def test_db_upgrade_refuses_an_in_memory_database_and_fails_in_one_line(pg_url: str) -> None:
    """An in-memory database would be migrated and gone: refused as `serve` refuses it. A
    database that does not exist: one line, not SQLAlchemy's second (a link to its docs)."""
    for url in ("sqlite:///:memory:", "sqlite+aiosqlite://"):
        refused("db", "upgrade", "--database-url", url, says="--database-url: names no SQLite file")
    missing = pg_url.rsplit("/", 1)[0] + "/no_such_database_here"
    result = cli("db", "upgrade", "--database-url", missing)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("meeting-gateway: migration failed (")
    assert 'database "no_such_database_here" does not exist' in line


def test_db_wait_waits_for_the_upgrade_and_gives_up_in_one_line(
    pg_url: str, tmp_path: Path
) -> None:
    """The Deployment's init container: a pod applied with the db-upgrade Job waits for it
    instead of crash-looping on "the database schema is not up to date"."""
    import subprocess
    import sys

    from store.migrate import upgrade

    result = cli("db", "wait", "--database-url", pg_url, "--timeout", "0.5")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "gave up after 0.5 s: the database schema is empty" in result.stderr.splitlines()[-1]
    waiting = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "db", "wait", "--timeout", "120"],
        env={**os.environ, "DATABASE_URL": pg_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stderr is not None
        assert "waiting for `db upgrade`" in waiting.stderr.readline()  # it is waiting
        asyncio.run(upgrade(pg_url))
        out, _ = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0 and "serves this release" in out
    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"  # `serve` migrates it itself
    result = cli("db", "wait", "--database-url", sqlite, "--timeout", "0")
    assert result.returncode == 0 and "is SQLite" in result.stdout, result


def test_a_key_path_holding_no_key_is_named_as_such(keys: Path, tmp_path: Path) -> None:
    """An empty key directory, or a file that is not a key, said "no JWT public key at" as if
    nothing were there."""
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(
        "serve",
        "--port",
        "0",
        says=f"JWT_PUBLIC_KEY_PATH: {empty} holds no readable <kid>.pem or <kid>.pub file",
        JWT_PUBLIC_KEY_PATH=str(empty),
    )
    refused(
        "serve",
        "--port",
        "0",
        says=f"JWT_PUBLIC_KEY_PATH: {keys / 'jwt.key'} is not an RSA public key PEM",
        JWT_PUBLIC_KEY_PATH=str(keys / "jwt.key"),
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "was not found"), ("{}", "does not have a valid type"), ("dir", "Is a directory")],
)
def test_a_google_credentials_file_that_cannot_serve_is_refused_at_start(
    keys: Path, tmp_path: Path, content: str | None, says: str
) -> None:
    """It started, readiness said an engine could take a stream, and every stream was 4503
    (the deepgram engine without its key was already refused at start)."""
    path = tmp_path / "sa.json"
    if content == "dir":  # a Secret's mount directory, not its file
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    refused(
        "serve",
        "--port",
        "0",
        says=f"GOOGLE_APPLICATION_CREDENTIALS: the google engine cannot use it: File {path} "
        if content is None
        else "GOOGLE_APPLICATION_CREDENTIALS: the google engine cannot",
        ASR_ENGINE="local,google",
        GOOGLE_APPLICATION_CREDENTIALS=str(path),
        JWT_PUBLIC_KEY_PATH=str(keys / "jwt.pub"),
    )
    refused(
        "serve",
        "--port",
        "0",
        says=says,
        ASR_ENGINE="google",
        GOOGLE_APPLICATION_CREDENTIALS=str(path),
        JWT_PUBLIC_KEY_PATH=str(keys / "jwt.pub"),
    )


def test_db_upgrade_on_a_schema_a_newer_release_migrated_has_nothing_to_do(
    tmp_path: Path, pg_url: str
) -> None:
    """A rollback re-runs the previous release's `db upgrade` Job: it failed, exit 1, with
    Alembic's "Can't locate revision", where `serve` runs on the newer schema as it is."""
    import sqlite3

    import asyncpg

    sqlite = tmp_path / "g.db"
    for url in (f"sqlite:///{sqlite}", pg_url):
        assert cli("db", "upgrade", env={"DATABASE_URL": url}).returncode == 0
        if url == pg_url:

            async def stamp() -> None:
                conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
                await conn.execute("UPDATE alembic_version SET version_num = '9999'")
                await conn.close()

            asyncio.run(stamp())
        else:
            with sqlite3.connect(sqlite) as conn:
                conn.execute("UPDATE alembic_version SET version_num = '9999'")
        again = cli("db", "upgrade", env={"DATABASE_URL": url})
        assert again.returncode == 0, again.stderr
        assert "database schema 9999 is newer than this release's: nothing to do" in again.stdout


@pytest.mark.parametrize("timeout", ["nan", "-5", "inf"])
def test_db_wait_refuses_a_timeout_that_is_no_time(timeout: str) -> None:
    # nan never gave up, looping without a pause; -5 "gave up after -5 s".
    refused("db", "wait", "--timeout", timeout, says="must be a finite number of seconds")


def test_an_unresolvable_metrics_host_is_named_as_such(keys: Path) -> None:
    refused(
        "serve",
        "--port",
        "0",
        says="METRICS_PORT: the host 'no-such-host.invalid' cannot be listened on",
        METRICS_HOST="no-such-host.invalid",
        METRICS_PORT="19999",
        JWT_PUBLIC_KEY_PATH=str(keys / "jwt.pub"),
    )


def test_postgres_urls_as_operators_write_them_work(pg_url: str) -> None:
    # postgres:// (no driver) with libpq's sslmode: the store runs it on asyncpg.
    plain = pg_url.replace("postgresql+asyncpg://", "postgres://") + "?sslmode=disable"
    result = cli("db", "upgrade", env={"DATABASE_URL": plain})
    assert result.returncode == 0, result.stderr
    assert "database at head revision" in result.stdout
    again = cli("db", "upgrade", "--database-url", plain.replace("postgres://", "postgresql://"))
    assert again.returncode == 0, again.stderr


def test_a_redis_url_without_its_scheme_is_one_line_not_a_traceback(keys: Path) -> None:
    refused(
        "serve",
        "--port",
        "0",
        says="REDIS_URL: Redis URL must specify one of the following schemes",
        REDIS_URL="127.0.0.1:6379",
        JWT_PUBLIC_KEY_PATH=str(keys / "jwt.pub"),
    )


@pytest.mark.parametrize("setting", ["OUTBOX_DIR", "RECORDINGS_DIR", "DATABASE_URL"])
def test_a_directory_that_cannot_be_made_is_named_by_its_setting(
    keys: Path, tmp_path: Path, setting: str
) -> None:
    # (Tests run as root, which writes anywhere: a path under a file stands for a read-only
    # volume here.)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    directory = blocker / "sub"
    value = f"sqlite+aiosqlite:///{directory}/g.db" if setting == "DATABASE_URL" else str(directory)
    refused(
        "serve",
        "--port",
        "0",
        says=f"{setting}: cannot create the directory {directory} (Not a directory)",
        **{setting: value, "JWT_PUBLIC_KEY_PATH": str(keys / "jwt.pub")},
    )


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("LOCAL_FINALS_MODEL", "/nonexistent/model", "no directory at /nonexistent/model"),
        ("LOCAL_RECORDINGS_MODEL", "./no-such-dir", "no directory at ./no-such-dir"),
        ("LOCAL_FINALS_MODEL", "tiny.eng", "no model named 'tiny.eng': one of tiny.en, tiny"),
        ("LOCAL_RECORDINGS_MODEL", "bsae", "no model named 'bsae'"),
        # A directory, but no model (a 37-line traceback when the engine started).
        ("LOCAL_FINALS_MODEL", "/", "no model.bin in the directory at /"),
    ],
)
def test_a_model_that_cannot_be_is_one_line(
    keys: Path, setting: str, value: str, says: str
) -> None:
    # It failed when the engine started: a traceback and "Application startup failed".
    refused(
        "serve",
        "--port",
        "0",
        says=f"{setting}: {says}",
        **{setting: value, "JWT_PUBLIC_KEY_PATH": str(keys / "jwt.pub")},
    )


def test_a_second_gateway_on_one_sqlite_file_is_refused(keys: Path, tmp_path: Path) -> None:
    # It started, and numbered the same meetings apart from the first: finals renumbered.
    from tests.e2e.harness import Gateway, gateway_env

    database = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    first = Gateway(gateway_env(keys, database), tmp_path / "first.log").start()
    try:
        refused(
            "serve",
            "--port",
            "0",
            says=f"DATABASE_URL: another gateway serves {tmp_path / 'gw.db'}",
            DATABASE_URL=database,
            JWT_PUBLIC_KEY_PATH=str(keys / "jwt.pub"),
        )
    finally:
        first.stop()
    # Its end gives the file back.
    again = Gateway(gateway_env(keys, database), tmp_path / "again.log").start()
    again.stop()


def test_streaming_to_a_gateway_that_is_not_there_says_so(tmp_path: Path) -> None:
    import subprocess
    import sys

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [
            *(sys.executable, "scripts/dev_send_pcm.py", "--url", f"http://127.0.0.1:{port}"),
            *("--meeting", "m1", "--wav", "tests/fixtures/two_sentences_16k_mono.wav"),
            *("--token", "x"),
        ],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "cannot reach the gateway" in result.stderr and "--url" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_webhooks_ca_file_that_holds_no_certificate_is_one_line(
    keys: Path, tmp_path: Path
) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    refused(
        "serve",
        "--port",
        "0",
        says=f"WEBHOOKS_CA_FILE: cannot load {junk} as PEM certificates",
        WEBHOOKS_CA_FILE=str(junk),
        JWT_PUBLIC_KEY_PATH=str(keys / "jwt.pub"),
    )


def test_a_sqlite_file_the_gateway_cannot_write_is_refused_at_start(
    keys: Path, tmp_path: Path
) -> None:
    """A database file made read-only (or owned by root after `sudo ... db upgrade`) in a
    writable directory: the gateway answered ready while every write failed as an outage.
    (Tests run as root, which writes any file: a read-only bind mount of the file stands for
    one the gateway's user cannot write.)"""
    database = tmp_path / "g.db"
    assert cli("db", "upgrade", env={"DATABASE_URL": f"sqlite:///{database}"}).returncode == 0
    command = [sys.executable, "-m", "gateway.cli", "serve", "--port", "0"]
    script = (
        f'mount --bind "{database}" "{database}" && '
        f'mount -o remount,bind,ro "{database}" && exec "$@"'
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *command],
        cwd=REPO,
        env={
            **os.environ,
            "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "JWT_PUBLIC_KEY_PATH": str(keys / "jwt.pub"),
            "OUTBOX_DIR": str(tmp_path / "outbox"),
            "RECORDINGS_DIR": str(tmp_path / "recordings"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"DATABASE_URL: cannot write {database}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_prometheus_multiproc_dir_that_cannot_be_used_is_one_line(
    keys: Path, tmp_path: Path, workers: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    refused(
        "serve",
        "--port",
        "0",
        "--workers",
        workers,
        says="PROMETHEUS_MULTIPROC_DIR: cannot use",
        PROMETHEUS_MULTIPROC_DIR=str(a_file / "metrics"),
        REDIS_URL="redis://127.0.0.1:6379/0",
        JWT_PUBLIC_KEY_PATH=str(keys / "jwt.pub"),
    )


def test_a_prometheus_multiproc_dir_loses_only_prometheus_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set to the directory of the SQLite database, it deleted the database at start (every
    `*.db` file went as a stale metric)."""
    from gateway.cli import _prepare_multiprocess_metrics

    kept = ["gateway.db", "gateway.db-wal", "notes.db", "counter_x.db"]
    stale = ["counter_12.db", "gauge_livemax_12.db", "histogram_7.db", "summary_3.db"]
    for name in kept + stale:
        (tmp_path / name).write_text("x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert _prepare_multiprocess_metrics(1) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_an_empty_prometheus_multiproc_dir_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """prometheus-client took an empty value as the working directory, writing its files there."""
    from gateway.cli import _prepare_multiprocess_metrics

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    assert _prepare_multiprocess_metrics(1) is None
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
