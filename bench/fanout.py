#!/usr/bin/env python3
"""Fan-out benchmark: the gateway against a minimal `websockets` broadcast server, in one run.

Both servers get the same clients (raw asyncio WebSocket clients in this process, cheap enough
not to dominate the machine) and the same messages, published through Redis as another replica's
ingest would publish them. For each scenario and server it prints the server process's CPU per
delivered message (from /proc/PID/stat), the ratio gateway/raw, p50/p99 publish-to-receive
latency, deliveries lost, and the idle memory per viewer connection (RSS growth / viewers) with and
without permessage-deflate offered by the client.

    .venv/bin/python bench/fanout.py --quick            # a short run on a shared machine
    .venv/bin/python bench/fanout.py                     # 1x500, 1x2000, 50x20 at 20 msg/s

Servers run one at a time (same clients, same message schedule), so they never compete for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TENANT = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAD = "word " * 40  # the message is about 300 bytes, like a real partial


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# The raw baseline: a minimal websockets server calling broadcast() -----------------------------


async def raw_server(port: int, redis_url: str, prefix: str) -> None:
    import redis.asyncio as aredis
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    rooms: dict[str, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        meeting = ws.request.path.rsplit("/", 1)[-1] if ws.request else ""
        room = rooms.setdefault(meeting, set())
        room.add(ws)
        try:
            await ws.wait_closed()
        finally:
            room.discard(ws)

    client = aredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.psubscribe(f"{prefix}meeting:*")
    async with serve(handler, "127.0.0.1", port, ping_interval=None):
        print("ready", flush=True)
        async for message in pubsub.listen():
            if message["type"] != "pmessage":
                continue
            meeting = message["channel"].decode().split(":")[-2]
            room = rooms.get(meeting)
            if room:
                broadcast(room, message["data"].decode())


# Servers under test ------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    path: str  # format with meeting=...
    query: str = ""

    def url_path(self, meeting: str) -> str:
        return self.path.format(meeting=meeting) + self.query

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError("server did not start")


def start_raw(redis_url: str, prefix: str, log: Path) -> Server:
    port = free_port()
    args = ["raw-server", "--port", str(port), "--redis-url", redis_url, "--prefix", prefix]
    process = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    wait_port(port, process)
    return Server("raw", process, port, "/m/{meeting}")


class Keys:
    def __init__(self, directory: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.public_path = directory / "jwt.pub"
        self.public_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def viewer_token(self) -> str:
        return self.token(["viewer"])

    def token(self, roles: list[str]) -> str:
        import jwt

        now = int(time.time())
        claims = {
            "sub": "bench",
            "tenant_id": TENANT,
            "roles": roles,
            "aud": "meetings",
            "iss": "our-app",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        }
        return jwt.encode(claims, self.private_pem, algorithm="RS256")


def launch_gateway(
    keys: Keys, work: Path, log: Path, **settings: str
) -> tuple[subprocess.Popen[bytes], int]:
    """`meeting-gateway serve` on a free port with the bench's keys, a fresh SQLite store, no
    pings (the baselines do not ping either), quiet logs, and `settings`; (process, port)."""
    port = free_port()
    env = {
        **os.environ,
        "JWT_PUBLIC_KEY_PATH": str(keys.public_path),
        "DATABASE_URL": f"sqlite+aiosqlite:///{work / f'gw-{port}.db'}",
        "OUTBOX_DIR": str(work / f"outbox-{port}"),
        "WS_PING_INTERVAL_S": "3600",
        "WS_PING_TIMEOUT_S": "3600",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        **settings,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, process)
    return process, port


def start_gateway(redis_url: str, prefix: str, keys: Keys, work: Path, log: Path) -> Server:
    process, port = launch_gateway(
        keys,
        work,
        log,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=prefix,
        MAX_WS_CLIENTS_PER_MEETING="100000",
        SUBSCRIBER_MSGS_PER_S="100",
        LOCAL_ENGINE_WORKERS="1",
    )
    query = f"?token={keys.viewer_token()}"
    return Server("gateway", process, port, "/api/v1/ws/meetings/{meeting}", query)


# Clients: raw asyncio WebSocket clients ---------------------------------------------------------


@dataclass
class Received:
    count: int = 0
    latencies_us: list[float] = field(default_factory=list)
    record: bool = True
    closed: int = 0  # viewers the server closed after accepting them


class ViewerClient(asyncio.Protocol):
    """Handshakes, then parses unmasked server text frames; reads the publish time from `ts`."""

    def __init__(self, request: bytes, received: Received) -> None:
        self.request = request
        self.received = received
        self.buffer = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.negotiated_deflate = False
        self.closing = False  # set when the bench closes it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during the handshake"))
        elif not self.closing:
            self.received.closed += 1

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            del buffer[: end + 4]
            if not head.startswith(b"http/1.1 101"):
                self.upgraded.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                return
            self.negotiated_deflate = b"permessage-deflate" in head
            self.upgraded.set_result(None)
        now = time.time_ns()
        while len(buffer) >= 2:
            length, start = buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + length:
                return
            opcode = buffer[0] & 0x0F
            if opcode == 1:
                self._message(bytes(buffer[start : start + length]), now)
            del buffer[: start + length]

    def _message(self, payload: bytes, now: int) -> None:
        received = self.received
        received.count += 1
        if received.record:
            at = payload.find(b'"ts":"')
            if at >= 0:
                sent = int(payload[at + 6 : payload.index(b'"', at + 6)])
                received.latencies_us.append((now - sent) / 1000)


async def connect_viewers(
    server: Server, meetings: list[str], per_meeting: int, received: Received, *, deflate: bool
) -> list[ViewerClient]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(8)  # a steady join rate, not a storm (that is issue 7's bench)
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    extension = offer if deflate else ""

    async def one(meeting: str) -> ViewerClient:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {server.url_path(meeting)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extension}\r\n"
        ).encode()
        for attempt in range(5):
            async with gate:
                _, client = await loop.create_connection(
                    lambda: ViewerClient(request, received), "127.0.0.1", server.port
                )
                try:
                    await asyncio.wait_for(client.upgraded, 30)
                    return client
                except (ConnectionError, TimeoutError):
                    if client.transport:
                        client.transport.close()
                    await asyncio.sleep(0.1 * (attempt + 1))
        raise ConnectionError(f"{server.name}: could not connect a viewer")

    return await asyncio.gather(*(one(m) for m in meetings for _ in range(per_meeting)))


def close_all(clients: list[ViewerClient]) -> None:
    for client in clients:
        client.closing = True
        if client.transport is not None:
            client.transport.abort()


# Measurements ------------------------------------------------------------------------------------


def message(meeting: str, n: int) -> bytes:
    kind = "transcript.final" if n % 5 == 4 else "transcript.partial"
    return json.dumps(
        {
            "type": kind,
            "meeting_id": meeting,
            "segment_no": n // 5 + 1,
            "text": PAD,
            "start_ms": 0,
            "end_ms": 1000,
            "speaker": None,
            "confidence": None,
            "source": "mic",
            "ts": str(time.time_ns()),
        },
        separators=(",", ":"),
    ).encode()


@dataclass
class Result:
    cpu_us: float
    p50_ms: float
    p99_ms: float
    lost: int
    delivered: int
    closed: int


async def settle(server: Server, seconds: float = 1.0) -> None:
    """Wait until the server's CPU is quiet (joins processed) before measuring."""
    deadline = time.monotonic() + 20
    last = cpu_seconds(server.process.pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(seconds)
        now = cpu_seconds(server.process.pid)
        if now - last < 0.05 * seconds:
            return
        last = now


async def load_run(
    server: Server,
    redis_url: str,
    prefix: str,
    meetings: list[str],
    viewers: int,
    rate: float,
    duration: float,
) -> Result:
    import redis.asyncio as aredis

    received = Received(record=False)
    clients = await connect_viewers(server, meetings, viewers, received, deflate=False)
    publisher = aredis.Redis.from_url(redis_url)
    try:
        channels = [f"{prefix}meeting:{TENANT}:{m}:transcript" for m in meetings]
        # Warm-up: one message per meeting proves every subscription is live.
        await settle(server)
        for channel, meeting in zip(channels, meetings, strict=True):
            await publisher.publish(channel, message(meeting, 10_000))
        deadline = time.monotonic() + 30
        while received.count < len(clients) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await settle(server, 0.5)
        received.count, received.record = 0, True
        cpu_before = cpu_seconds(server.process.pid)
        ticks = int(duration * rate)
        start = time.monotonic()
        for tick in range(ticks):
            await asyncio.sleep(max(0.0, start + tick / rate - time.monotonic()))
            async with publisher.pipeline(transaction=False) as pipe:
                for channel, meeting in zip(channels, meetings, strict=True):
                    pipe.publish(channel, message(meeting, tick))
                await pipe.execute()
        expected = ticks * len(clients)
        last, quiet_since = -1, time.monotonic()
        while received.count < expected and time.monotonic() - quiet_since < 3:
            await asyncio.sleep(0.05)
            if received.count != last:
                last, quiet_since = received.count, time.monotonic()
        cpu = cpu_seconds(server.process.pid) - cpu_before
    finally:
        await publisher.aclose()
        close_all(clients)
    latencies = sorted(received.latencies_us)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return Result(
        cpu_us=cpu * 1e6 / max(received.count, 1),
        p50_ms=(statistics.median(latencies) if latencies else 0.0) / 1000,
        p99_ms=p99 / 1000,
        lost=expected - received.count,
        delivered=received.count,
        closed=received.closed,
    )


async def idle_kib(server: Server, viewers: int, *, deflate: bool) -> tuple[float, bool]:
    """RSS growth per idle viewer; and whether the server negotiated compression."""
    await settle(server, 0.5)
    before = rss_kib(server.process.pid)
    received = Received(record=False)
    clients = await connect_viewers(server, ["idle"], viewers, received, deflate=deflate)
    await settle(server, 0.5)
    after = rss_kib(server.process.pid)
    negotiated = any(client.negotiated_deflate for client in clients)
    close_all(clients)
    return (after - before) / viewers, negotiated


# Driver ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


async def main(args: argparse.Namespace) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    work = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    keys = Keys(work)
    log = work / "servers.log"

    def start(name: str) -> Server:
        if name == "raw":
            return start_raw(args.redis_url, prefix, log)
        return start_gateway(args.redis_url, prefix, keys, work, log)

    if args.quick:
        scenarios = [(1, 200), (1, 500), (10, 20)]
        duration, idle_viewers = 4.0, 500
    else:
        scenarios = [(1, 500), (1, 2000), (50, 20)]
        duration, idle_viewers = 10.0, 5000  # the 5,000 concurrent idle viewers
    if args.duration is not None:
        duration = args.duration
    if args.idle_viewers is not None:
        idle_viewers = args.idle_viewers
    rate = args.rate
    print(f"fan-out bench: {os.cpu_count()} CPUs, {rate:g} msg/s per meeting, {duration:g} s")
    print(f"servers' output: {log}")
    print()
    header = (
        f"{'scenario':<10} {'server':<8} {'us CPU/deliv':>12} {'ratio':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'lost':>5} {'delivered':>9} {'closed':>6}"
    )
    print(header)
    print("-" * len(header))
    for meetings_n, viewers in [] if args.idle_only else scenarios:
        meetings = [f"m{i}" for i in range(meetings_n)]
        results: dict[str, Result] = {}
        for name in ("raw", "gateway"):
            with running(start(name)) as server:
                results[name] = await load_run(
                    server, args.redis_url, prefix, meetings, viewers, rate, duration
                )
        for name, result in results.items():  # closed: viewers the server closed mid-run
            ratio = result.cpu_us / results["raw"].cpu_us if results["raw"].cpu_us else 0
            print(
                f"{meetings_n}x{viewers:<8} {name:<8} {result.cpu_us:>12.1f} {ratio:>6.2f} "
                f"{result.p50_ms:>7.1f} {result.p99_ms:>7.1f} {result.lost:>5} "
                f"{result.delivered:>9} {result.closed:>6}",
                flush=True,
            )
    print()
    print(f"idle memory, {idle_viewers} viewers (RSS growth / viewers)")
    idle: dict[tuple[str, bool], float] = {}
    for name in ("raw", "gateway"):
        for deflate in (False, True):
            with running(start(name)) as server:
                kib, negotiated = await idle_kib(server, idle_viewers, deflate=deflate)
            idle[name, deflate] = kib
            offered = "offered" if deflate else "not offered"
            got = "negotiated" if negotiated else "not negotiated"
            print(f"  {name:<8} compression {offered:<11} ({got:<14}): {kib:6.1f} KiB/viewer")
    for deflate in (False, True):
        if idle["raw", deflate] > 0:
            ratio = idle["gateway", deflate] / idle["raw", deflate]
            offered = "offered" if deflate else "not offered"
            print(f"  ratio gateway/raw, compression {offered}: {ratio:.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    raw = sub.add_parser("raw-server", help="(internal) run the baseline server")
    raw.add_argument("--port", type=int, required=True)
    raw.add_argument("--redis-url", required=True)
    raw.add_argument("--prefix", default="")
    parser.add_argument("--quick", action="store_true", help="smaller scenarios, 4 s each")
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s per meeting")
    parser.add_argument("--duration", type=float, help="seconds of publishing per run")
    parser.add_argument("--idle-viewers", type=int, help="viewers for the idle-memory runs")
    parser.add_argument("--idle-only", action="store_true", help="only the idle-memory runs")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.command == "raw-server":
        asyncio.run(raw_server(arguments.port, arguments.redis_url, arguments.prefix))
    else:
        asyncio.run(main(arguments))
