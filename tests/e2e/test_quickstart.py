"""The README's path for a new user: keys, dev banner, the two pasted commands, the CLI."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
import pytest

from tests.e2e.harness import REPO, Gateway, free_port, gateway_env
from tests.util import wait_until


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO):
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_keys_generate_and_token(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    created = cli("keys", "generate", "--dir", str(keys))
    assert created.returncode == 0, created.stderr
    assert stat.S_IMODE((keys / "jwt.key").stat().st_mode) == 0o600
    again = cli("keys", "generate", "--dir", str(keys))
    assert again.returncode != 0 and "--force" in again.stderr  # never clobbers a key silently
    minted = cli(
        "token",
        "--tenant",
        "acme",
        "--user",
        "u1",
        "--roles",
        "ingest,viewer",
        "--meetings",
        "m1,m2",
        "--ttl",
        "120",
        "--key",
        str(keys / "jwt.key"),
    )
    assert minted.returncode == 0, minted.stderr
    claims = jwt.decode(
        minted.stdout.strip(),
        (keys / "jwt.pub").read_bytes(),
        algorithms=["RS256"],
        audience="meetings",
        issuer="our-app",
    )
    assert claims["tenant_id"] == "acme" and claims["sub"] == "u1"
    assert claims["roles"] == ["ingest", "viewer"] and claims["meetings"] == ["m1", "m2"]
    assert 110 <= claims["exp"] - time.time() <= 121
    bad_role = cli(
        "token", "--tenant", "a", "--user", "u", "--roles", "owner", "--key", str(keys / "jwt.key")
    )
    assert bad_role.returncode != 0 and "Traceback" not in bad_role.stderr


def test_serve_refuses_without_public_key(tmp_path: Path) -> None:
    result = cli("serve", env={"JWT_PUBLIC_KEY_PATH": str(tmp_path / "missing.pub")})
    assert result.returncode == 2
    assert "no JWT public key" in result.stderr and "keys generate" in result.stderr


def test_serve_refuses_a_broken_webhooks_file_naming_the_field(tmp_path: Path) -> None:
    hooks = tmp_path / "webhooks.json"
    hooks.write_text('[{"tenant": "acme", "url": "ftp://x", "secret": "whsec_AAAA"}]')
    assert cli("keys", "generate", "--dir", str(tmp_path / "keys")).returncode == 0
    env = {"WEBHOOKS_FILE": str(hooks), "JWT_PUBLIC_KEY_PATH": str(tmp_path / "keys" / "jwt.pub")}
    result = cli("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "endpoint 0: `url` must be an http:// or https:// URL" in result.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL: must be one of DEBUG, INFO, WARNING (or WARN)"),
        ({"DB_POOL_SIZE": "abc"}, "DB_POOL_SIZE: Input should be a valid integer"),
        (
            {"INSIGHTS_BACKEND": "llm", "INSIGHTS_LLM_API_KEY": "sk-NEVER-SHOWN-1234"},
            "INSIGHTS_BACKEND=llm needs INSIGHTS_LLM_URL",
        ),
        (
            {"WEBHOOKS_RETRY_BASE_S": "100", "WEBHOOKS_RETRY_MAX_S": "10"},
            "WEBHOOKS_RETRY_BASE_S must not exceed WEBHOOKS_RETRY_MAX_S",
        ),
    ],
)
def test_serve_refuses_bad_settings_naming_them_without_values(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    for command in (
        ("serve", "--port", str(free_port())),
        ("token", "--tenant", "t", "--user", "u", "--roles", "viewer"),
    ):
        result = cli(*command, env=env)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert named in result.stderr
        # An API key is never printed, nor any other value.
        assert "sk-NEVER-SHOWN" not in result.stderr + result.stdout
        assert "input_value" not in result.stderr


def test_serve_refuses_no_workers() -> None:
    result = cli("serve", "--workers", "0")
    assert result.returncode == 2 and "--workers: must be a whole number of at least 1" in (
        result.stderr
    )


def test_dev_banner_commands_stream_and_watch(tmp_path: Path) -> None:
    """Paste the two printed commands, as a new user does after `make run`, in new terminals
    (which open elsewhere than the checkout)."""
    keys = tmp_path / "keys"
    assert cli("keys", "generate", "--dir", str(keys)).returncode == 0
    env = gateway_env(keys, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}")
    gateway = Gateway(env, tmp_path / "gateway.log").start()
    try:
        banner = cli(
            "dev-banner",
            "--port",
            str(gateway.port),
            "--key",
            str(keys / "jwt.key"),
            "--meeting",
            "quickstart",
        )
        assert banner.returncode == 0, banner.stderr
        lines = [line.strip() for line in banner.stdout.splitlines()]
        watch_cmd = shlex.split(next(line for line in lines if "dev_subscribe_ws.py" in line))
        send_cmd = shlex.split(next(line for line in lines if "dev_send_pcm.py" in line))
        watcher = subprocess.Popen(
            watch_cmd,
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines_seen: list[str] = []
        reader = threading.Thread(target=lambda: lines_seen.extend(watcher.stdout), daemon=True)
        reader.start()
        try:
            _wait_for_subscriber(gateway, keys)
            sent = subprocess.run(
                [*send_cmd, "--speed", "4"],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert "ready" in sent.stdout
            wait_until(
                lambda: len([line for line in list(lines_seen) if line.startswith("#")]) >= 2,
                "two finals shown by the pasted watcher",
            )
        finally:
            watcher.terminate()
            watcher.wait(timeout=30)
        finals = [line for line in lines_seen if line.startswith("#")]
        assert [line.split()[0] for line in finals] == ["#1", "#2"], lines_seen
        assert "thank you everyone" in finals[0].lower() and "afternoon" in finals[1]
    finally:
        gateway.stop()


def _ops_token(keys: Path) -> str:
    return cli(
        "token",
        "--tenant",
        "dev",
        "--user",
        "ops",
        "--roles",
        "ops",
        "--key",
        str(keys / "jwt.key"),
    ).stdout.strip()


def _wait_for_subscriber(gateway: Gateway, keys: Path) -> None:
    token = _ops_token(keys)
    wait_until(
        lambda: gateway.get("/api/v1/ws/meetings/quickstart/stats", token).json()["subscribers"],
        "the pasted watcher subscribed",
    )


def test_make_run_checks_the_port_before_printing_tokens(tmp_path: Path) -> None:
    """`make run` with port 8000 taken (another gateway running) says so before it prints
    tokens that lead nowhere. Runs this checkout's Makefile in a scratch copy of the project
    whose virtualenv is this one (already installed: nothing is reinstalled)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    os.utime(tmp_path / "pyproject.toml", (0, 0))  # older than the venv's install stamp
    (tmp_path / ".venv").symlink_to((REPO / ".venv").resolve())
    assert cli("keys", "generate", "--dir", str(tmp_path / "keys")).returncode == 0
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            ["make", "--no-print-directory", "run", f"PORT={port}"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout's code
            capture_output=True,
            text=True,
            timeout=120,
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"port 127.0.0.1:{port} is not available" in result.stderr
    assert "is a gateway already running?" in result.stderr
    assert f"make run PORT={port + 1}" in result.stderr
    assert "eyJ" not in output and "dev_send_pcm" not in output  # no token, no banner
    assert "Uvicorn running" not in output and "Traceback" not in output


def test_serve_refuses_a_taken_port_with_what_to_do() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        taken = cli("serve", "--port", str(port))
        metrics_taken = cli("serve", "--port", str(free_port()), env={"METRICS_PORT": str(port)})
    assert taken.returncode == 2
    assert f"port 127.0.0.1:{port} is not available" in taken.stderr
    assert "--port" in taken.stderr and "Traceback" not in taken.stderr
    assert metrics_taken.returncode == 2
    assert f"METRICS_PORT 127.0.0.1:{port} is not available" in metrics_taken.stderr
    same = cli("serve", "--port", "8123", "--workers", "2", env={"METRICS_PORT": "8123"})
    assert same.returncode == 2 and "METRICS_PORT must differ from --port" in same.stderr


def test_workers_refuse_a_taken_metrics_port_even_one_shared_with_so_reuseport() -> None:
    """Workers bind METRICS_PORT with SO_REUSEPORT: a taken one failed in every worker with a
    traceback, and another gateway's workers holding it answered half the scrapes."""
    for shared in (False, True):
        with socket.socket() as holder:
            if shared:  # as another `serve --workers` binds it
                holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            env = {"METRICS_PORT": str(port), "REDIS_URL": "redis://127.0.0.1:6379/0"}
            taken = cli("serve", "--port", str(free_port()), "--workers", "2", env=env)
        assert taken.returncode == 2, taken.stderr
        assert f"METRICS_PORT 127.0.0.1:{port} is not available" in taken.stderr
        assert "Traceback" not in taken.stderr
