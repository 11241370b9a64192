from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Gateway, KeyPair, gateway_env
from tests.e2e.webhook_receiver import Receiver


@pytest.fixture(scope="session")
def keypair() -> KeyPair:
    return KeyPair.generate()


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory, keypair: KeyPair) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    (directory / "jwt.pub").write_bytes(keypair.public_pem)
    return directory


# Lines of each gateway's log printed when a test that started it fails (a failure on a loaded
# CI machine must be diagnosable from its output alone).
FAILED_LOG_LINES = 200


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if report.when == "call":
        item.stash[_call_failed] = report.failed
    return report


_call_failed = pytest.StashKey[bool]()


def _print_logs_if_failed(request: pytest.FixtureRequest, gateways: list[Gateway]) -> None:
    if not request.node.stash.get(_call_failed, False):
        return
    for gateway in gateways:
        lines = gateway.logs().splitlines()[-FAILED_LOG_LINES:]
        print(f"--- last {len(lines)} lines of {gateway.log_path} ---")
        print("\n".join(lines))


@pytest.fixture
def start_gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys_dir: Path
) -> Iterator[Callable[..., Gateway]]:
    """Start gateways with extra environment; all are stopped at the end of the test."""
    started: list[Gateway] = []

    def start(
        database_url: str | None = None,
        *args: str,
        launcher: tuple[str, ...] = (),
        **env: str,
    ) -> Gateway:
        work = tmp_path_factory.mktemp("gw")
        url = database_url or f"sqlite+aiosqlite:///{work / 'gateway.db'}"
        env = {"OUTBOX_DIR": str(work / "outbox"), **env}  # a test's own, unless it names one
        gateway = Gateway(
            gateway_env(keys_dir, url, **env), work / "gateway.log", args=args, launcher=launcher
        )
        gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()
    _print_logs_if_failed(request, started)


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


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind (tests over both stores)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on a free loopback port, answering 204."""
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def meeting() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"
