"""Run real gateway processes and talk to them over real sockets."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

REPO = Path(__file__).resolve().parents[2]
AUDIENCE, ISSUER = "meetings", "our-app"


@functools.cache
def client_ssl_context(cafile: str | None = None) -> ssl.SSLContext:
    """One client SSL context per CA, shared. httpx builds a new one (loading the CA bundle, about
    25 ms of CPU) for every call not given one, even to an http:// URL, and the suite polls its
    gateways thousands of times: pass `verify=client_ssl_context()` (or `gateway.verify`)."""
    return ssl.create_default_context(cafile=cafile)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class KeyPair:
    private_pem: bytes
    public_pem: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )

    def token(
        self,
        tenant: str = "acme",
        roles: Iterable[str] = ("viewer",),
        meetings: Iterable[str] | None = None,
        *,
        sub: str = "user-1",
        ttl: int = 600,
        kid: str | None = None,
        **overrides: Any,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": sub,
            "tenant_id": tenant,
            "roles": list(roles),
            "aud": AUDIENCE,
            "iss": ISSUER,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
        }
        if meetings is not None:
            claims["meetings"] = list(meetings)
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        headers = {"kid": kid} if kid else None
        return jwt.encode(claims, self.private_pem, algorithm="RS256", headers=headers)


class PortTaken(RuntimeError):
    """The gateway could not bind its port: another process took it first."""


@dataclass
class Gateway:
    """A `meeting-gateway serve` subprocess on a free port."""

    env: dict[str, str]
    log_path: Path
    port: int = 0  # 0: a free port, picked at the first start
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    ready_path: str = "/readyz"  # `start` returns once this answers 200 ("/healthz": up at all)
    # Served over TLS (`--ssl-keyfile`/`--ssl-certfile` in `args`): the certificate to trust.
    tls_ca: str | None = None
    # A command the gateway's is run under (`unshare -m ...`), with `exec "$@"` at its end.
    launcher: tuple[str, ...] = ()
    # A port picked here may be taken by another test process between the pick and the bind:
    # the first start then picks again. A given port, or a restart, keeps its port.
    picked_port: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not self.port:
            self.port, self.picked_port = free_port(), True

    @property
    def http(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"{'wss' if self.tls_ca else 'ws'}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext:
        """What httpx should verify the server with."""
        return client_ssl_context(self.tls_ca)

    def ingest_url(self, meeting: str, token: str | None = None) -> str:
        query = f"?token={token}" if token else ""
        return f"{self.ws}/api/v1/ws/ingest/meetings/{meeting}{query}"

    def subscribe_url(
        self, meeting: str, token: str | None = None, since: int | None = None
    ) -> str:
        params = [f"token={token}"] if token else []
        if since is not None:
            params.append(f"since={since}")
        query = "?" + "&".join(params) if params else ""
        return f"{self.ws}/api/v1/ws/meetings/{meeting}{query}"

    def start(self, timeout: float = 120.0) -> Gateway:
        for _ in range(3 if self.picked_port and self.process is None else 1):
            try:
                return self._start(timeout)
            except PortTaken:
                self.port = free_port()
        return self._start(timeout)

    def _start(self, timeout: float) -> Gateway:
        env = {**os.environ, **self.env}
        self._log = self.log_path.open("ab")
        since = self._log.tell()  # this start's lines (a restart appends to the same log)
        self.process = subprocess.Popen(
            [
                *self.launcher,
                *(sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port)),
                *self.args,
            ],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                logs = self.logs()
                if b"address already in use" in self.log_path.read_bytes()[since:].lower():
                    raise PortTaken(logs)
                raise RuntimeError(f"gateway exited {self.process.returncode}: {logs}")
            if b"Uvicorn running on" not in self.log_path.read_bytes()[since:]:
                # Not bound yet: whatever answers on the port now is another test's process.
                time.sleep(0.05)
                continue
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(
                    f"{self.http}{self.ready_path}", timeout=1, verify=self.verify
                ).status_code == 200 and self._workers_ready(since):
                    return self
            time.sleep(0.05)
        self.process.kill()  # not left serving after the test (nothing else would stop it)
        self.process.wait()
        raise TimeoutError(f"gateway not ready: {self.logs()}")

    def _workers_ready(self, since: int) -> bool:
        """With `--workers N`, whether all N are ready, not only the one that answered (a test
        that stops the database next would fail a worker still starting)."""
        if self.ready_path != "/readyz" or "--workers" not in self.args:
            return True
        workers = int(self.args[self.args.index("--workers") + 1])
        return self.log_path.read_bytes()[since:].count(b'"gateway ready"') >= workers

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # (httpx drops a query already in `path` when given params, even none.)
        return httpx.get(
            f"{self.http}{path}",
            headers=headers,
            params=params or None,
            timeout=10,
            verify=self.verify,
        )

    def post(self, path: str, token: str | None = None, **body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(
            f"{self.http}{path}", headers=headers, json=body, timeout=30, verify=self.verify
        )

    def patch(self, path: str, token: str | None = None, **body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.patch(
            f"{self.http}{path}", headers=headers, json=body, timeout=30, verify=self.verify
        )


def gateway_env(keys_dir: Path, database_url: str, **extra: str) -> dict[str, str]:
    return {
        "JWT_PUBLIC_KEY_PATH": str(keys_dir / "jwt.pub"),
        "DATABASE_URL": database_url,
        "REDIS_URL": "",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        # Sized for a loaded machine, where a replacement engine worker can take many seconds
        # to start (production's 1.5 s / 5 s / 30 s would fail a failover that is only slow).
        "ENGINE_OPEN_TIMEOUT_S": "30",
        "ENGINE_FAILOVER_OPEN_TIMEOUT_S": "30",
        "LOCAL_ENGINE_STALL_TIMEOUT_S": "90",
        # Hundreds of clients connecting at once from a busy test process send their heads late.
        "HTTP_HEAD_TIMEOUT_S": "30",
        # One local engine worker, not one per core: each loads its models at start (about 1.2 s
        # of CPU), and the suite starts hundreds of gateways on a machine its 4 test workers
        # already keep busy. Tests of the worker pool ask for more.
        "LOCAL_ENGINE_WORKERS": "1",
        **extra,
    }


async def expect_close(ws: ClientConnection, timeout: float = 30.0) -> tuple[int, list[dict]]:
    """Read until the server closes; the close code and the JSON messages received."""
    messages: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("server did not close the connection")
            raw = await _recv(ws, remaining)
            messages.append(json.loads(raw))
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "connection dropped without a close frame"
        return exc.rcvd.code, messages


async def next_of(ws: ClientConnection, kind: str, timeout: float = 60.0) -> dict:
    """The next JSON message of type `kind`; others (status messages, history) are skipped."""
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(await _recv(ws, deadline - time.monotonic()))
        if message["type"] == kind:
            return message


async def _recv(ws: ClientConnection, timeout: float) -> str | bytes:
    import asyncio

    return await asyncio.wait_for(ws.recv(), timeout)


async def close_code_of(url: str, *sends: str | bytes, headers: Any = None) -> int:
    async with connect(url, additional_headers=headers or {}) as ws:
        for item in sends:
            try:
                await ws.send(item)
            except ConnectionClosed:
                break  # the server refused before reading this; its close code follows
        code, _ = await expect_close(ws)
        return code


def handshake(source: str = "mic", sample_rate: int = 16000, channels: int = 1, **kw: Any) -> str:
    return json.dumps(
        {
            "type": "handshake",
            "source": source,
            "sample_rate": sample_rate,
            "channels": channels,
            "language": "en",
            "ai_mode": "standard",
            "device_id": "test",
            **kw,
        }
    )


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = reference.lower().split(), hypothesis.lower().split()
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / max(len(ref), 1)
