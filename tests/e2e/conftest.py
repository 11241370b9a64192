from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Gateway, KeyPair, gateway_env


@pytest.fixture(scope="session")
def keypair() -> KeyPair:
    return KeyPair.generate()


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory, keypair: KeyPair) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    (directory / "jwt.pub").write_bytes(keypair.public_pem)
    return directory


@pytest.fixture
def start_gateway(
    tmp_path_factory: pytest.TempPathFactory, keys_dir: Path
) -> Iterator[Callable[..., Gateway]]:
    """Start gateways with extra environment; all are stopped at the end of the test."""
    started: list[Gateway] = []

    def start(database_url: str | None = None, *args: str, **env: str) -> Gateway:
        work = tmp_path_factory.mktemp("gw")
        url = database_url or f"sqlite+aiosqlite:///{work / 'gateway.db'}"
        env = {"OUTBOX_DIR": str(work / "outbox"), **env}  # a test's own, unless it names one
        gateway = Gateway(gateway_env(keys_dir, url, **env), work / "gateway.log", args=args)
        gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, keys_dir: Path) -> Iterator[Gateway]:
    """One embedded-defaults gateway shared by a test module (tests use their own meeting ids)."""
    work = tmp_path_factory.mktemp("gw")
    env = gateway_env(
        keys_dir, f"sqlite+aiosqlite:///{work / 'gateway.db'}", OUTBOX_DIR=str(work / "outbox")
    )
    gateway = Gateway(env, work / "gateway.log").start()
    yield gateway
    gateway.stop()


@pytest.fixture
def meeting() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"
