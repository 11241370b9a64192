#!/usr/bin/env python3
"""Fan-out benchmark: the gateway against a minimal `websockets` broadcast server, in one run.

Both servers get the same clients (raw asyncio WebSocket clients in this process, cheap enough
not to dominate the machine) and the same messages, published through Redis as another replica's
ingest would publish them. For each scenario and server it prints the server process's CPU per
delivered message (from /proc/PID/stat; `kernel` the part of it in the kernel), the ratio
gateway/raw, p50/p99 publish-to-receive latency, deliveries lost, and the idle memory per viewer
connection (RSS growth / viewers, after one viewer warmed the server up; also on a cold server)
with and without permessage-deflate offered by the client.

    .venv/bin/python bench/fanout.py --quick            # a short run on a shared machine
    .venv/bin/python bench/fanout.py                     # 1x500, 1x2000, 50x20, 500x4: 3 rounds
    .venv/bin/python bench/fanout.py --quick --workers-only   # `serve --workers 1` against 2
    .venv/bin/python bench/fanout.py --storm-only --storm-viewers 5000   # a connect storm
    .venv/bin/python bench/fanout.py --scenarios 50x20 --profile /tmp/p  # py-spy stacks of each

Servers run one at a time (same clients, same message schedule), so they never compete for CPU.
Two more parts follow the idle-memory runs (issue 17). Workers: a gateway with `--workers 1`,
then one with `--workers 2`, each driven up a ladder of offered loads; it prints delivered
messages/s, p99 and the CPU of every worker process, and 2 workers' capacity at one p99 bound over
1 worker's ("lost" also counts partials a backed-up viewer skipped, as the gateway coalesces them),
then the most this machine allows when the clients share its cores.
Storm: N viewers open one meeting at the same moment on one gateway process; it prints how many
were accepted, how long until all were upgraded, how long the next partial took to reach the last
of them, and the client commands Redis saw on the bench's keys meanwhile (MONITOR).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from redis.asyncio import Redis

REPO = Path(__file__).resolve().parents[1]
TENANT = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAD = "word " * 40  # the message is about 300 bytes, like a real partial


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_times(pid: int) -> tuple[float, float]:
    """User and kernel CPU seconds of `pid` (utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def children(pid: int) -> list[int]:
    """Every live descendant of `pid` (the workers of `serve --workers N`)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def tree_cpu_times(pid: int) -> tuple[float, float]:
    """User and kernel CPU of `pid` and its live descendants: a supervisor's workers count too."""
    user = kernel = 0.0
    for each in [pid, *children(pid)]:
        with contextlib.suppress(OSError):  # a process that exited meanwhile
            times = cpu_times(each)
            user, kernel = user + times[0], kernel + times[1]
    return user, kernel


def tree_cpu_seconds(pid: int) -> float:
    return sum(tree_cpu_times(pid))


def machine_busy_seconds() -> float:
    """CPU time every process on the machine spent (all cores, /proc/stat)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def socket_count(pid: int) -> int:
    """Open sockets of `pid` (its viewers' share, measured as a difference)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by the servers it starts); the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


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

    def cpu(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def kernel_cpu(self) -> float:
        """The part of `cpu()` spent in the kernel: on loopback, mostly the TCP sends (which
        also run the receiving socket's processing)."""
        return tree_cpu_times(self.process.pid)[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


StartGateway = Callable[[int], Server]  # a gateway with this many workers


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
    keys: Keys, work: Path, log: Path, workers: int = 1, **settings: str
) -> tuple[subprocess.Popen[bytes], int]:
    """`meeting-gateway serve --workers N` on a free port with the bench's keys, a fresh SQLite
    store, no pings (the baselines do not ping either), quiet logs, and `settings`; (process,
    port)."""
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
    command = ["serve", "--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *command],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, process)
    return process, port


def start_gateway(
    redis_url: str, prefix: str, keys: Keys, work: Path, log: Path, workers: int = 1
) -> Server:
    process, port = launch_gateway(
        keys,
        work,
        log,
        workers,
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
    last_ns: int = 0  # wall clock of the latest message
    watch_from_ns: int = 0  # each viewer notes its first recorded message published since then


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
        self.upgraded_at = 0.0  # monotonic time of the 101
        self.got_ns = self.got_sent_ns = 0  # first message published since watch_from_ns

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
            self.upgraded_at = time.monotonic()
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
        received.last_ns = now
        if received.record:
            at = payload.find(b'"ts":"')
            if at >= 0:
                sent = int(payload[at + 6 : payload.index(b'"', at + 6)])
                received.latencies_us.append((now - sent) / 1000)
                if not self.got_ns and sent >= received.watch_from_ns:
                    self.got_ns, self.got_sent_ns = now, sent


def upgrade_request(server: Server, meeting: str, *, deflate: bool = False) -> bytes:
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {server.url_path(meeting)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{offer if deflate else ''}\r\n"
    ).encode()


async def open_viewer(
    server: Server, request: bytes, received: Received, timeout: float
) -> ViewerClient:
    """One viewer, upgraded; raises ConnectionError (refused, or its status line) or
    TimeoutError, with the socket closed."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: ViewerClient(request, received), "127.0.0.1", server.port
    )
    try:
        await asyncio.wait_for(client.upgraded, timeout)
    except (ConnectionError, TimeoutError):
        if client.transport:
            client.transport.close()
        raise
    return client


async def connect_viewers(
    server: Server, meetings: list[str], per_meeting: int, received: Received, *, deflate: bool
) -> list[ViewerClient]:
    gate = asyncio.Semaphore(8)  # a steady join rate, not a storm (that is `storm` below)

    async def one(meeting: str) -> ViewerClient:
        request = upgrade_request(server, meeting, deflate=deflate)
        for attempt in range(5):
            async with gate:
                try:
                    return await open_viewer(server, request, received, 30)
                except (ConnectionError, TimeoutError):
                    pass
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
    per_s: float = 0.0  # deliveries / (first publish to last receipt)
    ticks: int = 0  # messages published to each meeting
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0  # this process: clients and publisher
    machine_cpu_s: float = 0.0  # every process on the machine (Redis, other users' work too)
    wall_s: float = 0.0  # from the first publish until the last receipt was awaited
    seconds: float = 0.0
    kernel_us: float = 0.0  # the part of cpu_us spent in the kernel


async def settle(server: Server, seconds: float = 1.0) -> None:
    """Wait until the server's CPU is quiet (joins processed) before measuring."""
    deadline = time.monotonic() + 20
    last = server.cpu()
    while time.monotonic() < deadline:
        await asyncio.sleep(seconds)
        now = server.cpu()
        if now - last < 0.05 * seconds:
            return
        last = now


def channel(prefix: str, meeting: str) -> str:
    return f"{prefix}meeting:{TENANT}:{meeting}:transcript"


async def warm_up(
    server: Server,
    publisher: Redis,
    prefix: str,
    meetings: list[str],
    received: Received,
    viewers: int,
) -> None:
    """One message per meeting, seen by all `viewers`, proves every subscription is live."""
    await settle(server)
    target = received.count + viewers
    for meeting in meetings:
        await publisher.publish(channel(prefix, meeting), message(meeting, 10_000))
    await wait_count(received, target, quiet_s=30, limit_s=30)
    await settle(server, 0.5)


async def wait_count(received: Received, target: int, quiet_s: float, limit_s: float) -> None:
    """Until `target` messages arrived, nothing arrived for `quiet_s`, or `limit_s` passed."""
    last, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + limit_s
    while received.count < target and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if received.count != last:
            last, quiet_since = received.count, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return


async def measure(
    server: Server,
    publisher: Redis,
    prefix: str,
    meetings: list[str],
    received: Received,
    viewers: int,
    rate: float,
    duration: float,
    first_tick: int = 0,
    profile: Path | None = None,
) -> Result:
    """Publish `rate` messages/s to every meeting for `duration` s; what `viewers` received.
    Messages are numbered from `first_tick`: a later run on the same rooms must not repeat a
    final's number (the rooms would drop it as already delivered). With `profile`, py-spy
    records the server's stacks meanwhile into that file (collapsed, `--profile`)."""
    if profile is not None:
        spy = ["py-spy", "record", "--format", "raw", "--nonblocking", "-r", "200", "-o"]
        window = ["--duration", str(max(1, int(duration))), "--pid", str(server.process.pid)]
        await asyncio.create_subprocess_exec(*spy, str(profile), *window, stdout=subprocess.DEVNULL)
    received.count, received.record, received.latencies_us = 0, True, []
    closed_before = received.closed
    cpu_before, client_before = server.cpu(), time.process_time()
    kernel_before = server.kernel_cpu()
    machine_before = machine_busy_seconds()
    channels = [channel(prefix, m) for m in meetings]
    ticks = max(1, int(duration * rate))
    start, start_ns = time.monotonic(), time.time_ns()
    for tick in range(ticks):
        await asyncio.sleep(max(0.0, start + tick / rate - time.monotonic()))
        async with publisher.pipeline(transaction=False) as pipe:
            for name, meeting in zip(channels, meetings, strict=True):
                pipe.publish(name, message(meeting, first_tick + tick))
            await pipe.execute()
    expected = ticks * viewers
    await wait_count(received, expected, quiet_s=3, limit_s=60)
    cpu = server.cpu() - cpu_before
    kernel = server.kernel_cpu() - kernel_before
    latencies = sorted(received.latencies_us)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    seconds = max((received.last_ns - start_ns) / 1e9, ticks / rate)
    return Result(
        cpu_us=cpu * 1e6 / max(received.count, 1),
        p50_ms=(statistics.median(latencies) if latencies else 0.0) / 1000,
        p99_ms=p99 / 1000,
        lost=expected - received.count,
        delivered=received.count,
        closed=received.closed - closed_before,
        per_s=received.count / seconds,
        ticks=ticks,
        server_cpu_s=cpu,
        client_cpu_s=time.process_time() - client_before,
        machine_cpu_s=machine_busy_seconds() - machine_before,
        wall_s=time.monotonic() - start,
        seconds=seconds,
        kernel_us=kernel * 1e6 / max(received.count, 1),
    )


async def load_run(
    server: Server,
    redis_url: str,
    prefix: str,
    meetings: list[str],
    viewers: int,
    rate: float,
    duration: float,
    profile: Path | None = None,
) -> Result:
    import redis.asyncio as aredis

    received = Received(record=False)
    clients = await connect_viewers(server, meetings, viewers, received, deflate=False)
    publisher = aredis.Redis.from_url(redis_url)
    try:
        await warm_up(server, publisher, prefix, meetings, received, len(clients))
        return await measure(
            server, publisher, prefix, meetings, received, len(clients), rate, duration,
            profile=profile,
        )  # fmt: skip
    finally:
        await publisher.aclose()
        close_all(clients)


async def idle_kib(
    server: Server, viewers: int, *, deflate: bool, warm_up: bool = True
) -> tuple[float, bool]:
    """RSS growth per idle viewer; and whether the server negotiated compression.

    With `warm_up`, one viewer connects (and stays) before the first reading: what a server
    does once, on its first connection (lazy imports, connection pools, caches), is then not
    divided among the viewers as if each cost it."""
    received = Received(record=False)
    first = []
    if warm_up:
        first = await connect_viewers(server, ["idle"], 1, received, deflate=deflate)
    await settle(server, 0.5)
    before = rss_kib(server.process.pid)
    clients = await connect_viewers(server, ["idle"], viewers, received, deflate=deflate)
    await settle(server, 0.5)
    after = rss_kib(server.process.pid)
    negotiated = any(client.negotiated_deflate for client in clients)
    close_all(clients + first)
    return (after - before) / viewers, negotiated


# Workers: `serve --workers 1` against `--workers 2` ------------------------------------------


def worker_pids(server: Server, workers: int) -> list[int]:
    """The processes serving viewers: the server itself, or the supervisor's spawned workers."""
    if workers == 1:
        return [server.process.pid]
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
            if ppid == server.process.pid and b"spawn_main" in cmdline:
                found.append(int(stat.parent.name))
    return found


async def ready_workers(server: Server, workers: int) -> list[int]:
    """Wait until every worker runs and the server's CPU is quiet (the supervisor binds the
    port before its workers start, so an open port proves nothing)."""
    deadline = time.monotonic() + 60
    while len(pids := worker_pids(server, workers)) < workers:
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise RuntimeError(f"{workers} workers did not start")
        await asyncio.sleep(0.2)
    await settle(server)
    return pids


@dataclass
class Ladder:
    """One gateway's runs up the ladder of offered loads (deliveries/s)."""

    workers: int
    spread: list[int]  # viewers' sockets per worker process
    steps: list[tuple[float, Result]] = field(default_factory=list)

    @staticmethod
    def within(result: Result, p99_ms: float) -> bool:
        return result.p99_ms <= p99_ms and result.lost == 0 and result.closed == 0

    def capacity(self, p99_ms: float) -> Result | None:
        """The most deliveries/s of a step within the p99 bound with nothing lost."""
        fits = [result for _, result in self.steps if self.within(result, p99_ms)]
        return max(fits, key=lambda result: result.per_s, default=None)

    def saturated(self, p99_ms: float) -> bool:
        return any(not self.within(result, p99_ms) for _, result in self.steps)


WORKERS_HEADER = (
    f"{'workers':>7} {'offered/s':>9} {'delivered/s':>11} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'lost':>6} {'closed':>6} {'server CPU':>10} {'client CPU':>10} {'other CPU':>9}"
)


def workers_row(workers: int, offered: float, result: Result) -> str:
    # CPU as a share of one core over the step's seconds: the server's over all its worker
    # processes, the clients' over this process (clients and publisher), and what the rest of
    # the machine took meanwhile (Redis, and another user's work on a shared machine).
    server, client = result.server_cpu_s, result.client_cpu_s
    other_pct = 100 * max(0.0, result.machine_cpu_s - server - client) / result.wall_s
    server_pct, client_pct = (100 * cpu / result.seconds for cpu in (server, client))
    return (
        f"{workers:>7} {offered:>9.0f} {result.per_s:>11.0f} {result.p50_ms:>7.1f} "
        f"{result.p99_ms:>7.1f} {result.lost:>6} {result.closed:>6} {server_pct:>9.0f}% "
        f"{client_pct:>9.0f}% {other_pct:>8.0f}%"
    )


async def workers_ladder(
    args: argparse.Namespace, start: StartGateway, workers: int, loads: list[float]
) -> Ladder:
    """Viewers on a `--workers N` gateway, then each load in turn until one misses the p99
    bound or loses messages (past saturation the queues only grow: higher loads say nothing)."""
    import redis.asyncio as aredis

    meetings_n, viewers = args.workers_scenario
    meetings = [f"w{i}" for i in range(meetings_n)]
    with running(start(workers)) as server:
        pids = await ready_workers(server, workers)
        before = [socket_count(pid) for pid in pids]
        received = Received(record=False)
        clients = await connect_viewers(server, meetings, viewers, received, deflate=False)
        ladder = Ladder(
            workers, [socket_count(pid) - n for pid, n in zip(pids, before, strict=True)]
        )
        publisher = aredis.Redis.from_url(args.redis_url)
        try:
            await warm_up(server, publisher, args.key_prefix, meetings, received, len(clients))
            for offered in loads:
                rate = offered / len(clients)
                result = await measure(
                    server,
                    publisher,
                    args.key_prefix,
                    meetings,
                    received,
                    len(clients),
                    rate,
                    args.workers_duration,
                    first_tick=sum(step.ticks for _, step in ladder.steps),
                )
                ladder.steps.append((offered, result))
                print(workers_row(workers, offered, result), flush=True)
                if not Ladder.within(result, args.p99_ms):
                    break
                await settle(server, 0.5)
        finally:
            await publisher.aclose()
            close_all(clients)
    return ladder


async def workers_part(args: argparse.Namespace, start: StartGateway) -> None:
    meetings_n, viewers = args.workers_scenario
    loads = args.workers_loads
    print(
        f"workers: {meetings_n} meetings x {viewers} viewers, `serve --workers 1` then 2, "
        f"{args.workers_duration:g} s per load; clients share the machine's {os.cpu_count()} "
        "CPUs with the workers"
    )
    print(WORKERS_HEADER)
    print("-" * len(WORKERS_HEADER))
    ladders = [await workers_ladder(args, start, n, loads) for n in (1, 2)]
    print()
    bound = args.p99_ms
    for ladder in ladders:
        spread = ", ".join(str(n) for n in ladder.spread)
        print(f"  {ladder.workers} worker(s): viewers' sockets per worker process: {spread}")
    capacities = [ladder.capacity(bound) for ladder in ladders]
    for ladder, capacity in zip(ladders, capacities, strict=True):
        if capacity is None:
            print(f"  {ladder.workers} worker(s): no load within p99 <= {bound:g} ms")
            continue
        note = (
            "" if ladder.saturated(bound) else " (never saturated: offer more with --workers-loads)"
        )
        print(
            f"  {ladder.workers} worker(s): capacity {capacity.per_s:.0f} deliveries/s at p99 "
            f"{capacity.p99_ms:.1f} ms (bound {bound:g} ms, nothing lost){note}"
        )
        failed = [result for _, result in ladder.steps if not Ladder.within(result, bound)]
        if failed and failed[0].client_cpu_s >= 0.9 * failed[0].seconds:
            print(
                f"    the step past it kept the client process at "
                f"{100 * failed[0].client_cpu_s / failed[0].seconds:.0f}% of a core: the load "
                "generator, not the server, ran out"
            )
    one, two = capacities
    if one is not None and two is not None:
        caveat = "" if ladders[0].saturated(bound) else "; 1 worker was never saturated"
        print(
            f"  ratio 2 workers / 1 worker at p99 <= {bound:g} ms: {two.per_s / one.per_s:.2f} "
            f"(issue 17 target: >= 1.7{caveat})"
        )
    machine_bound(ladders[0])


def machine_bound(ladder: Ladder) -> None:
    """What this machine allows whatever the workers do: each delivery costs the server s and
    the clients c CPU-seconds, the clients run in one process (one core at most) and everything
    shares the machine's cores, so N workers deliver at most min(N/s, 1/c, cores/(s+c))."""
    top = max((result for _, result in ladder.steps), key=lambda r: r.per_s, default=None)
    if top is None or not top.delivered:
        return
    cores = os.cpu_count() or 1
    server, client = top.server_cpu_s / top.delivered, top.client_cpu_s / top.delivered
    bounds = [min(n / server, 1 / client, cores / (server + client)) for n in (1, 2)]
    print(
        f"  per delivery (1 worker, {top.per_s:.0f}/s): server {server * 1e6:.1f} us, clients "
        f"{client * 1e6:.1f} us of CPU; on {cores} cores with one client process: at most "
        f"{bounds[0]:.0f}/s with 1 worker, {bounds[1]:.0f}/s with 2, a ratio of at most "
        f"{bounds[1] / bounds[0]:.2f}"
    )


# Connect storm: N viewers opening one meeting at the same moment --------------------------------


class RedisMonitor:
    """Counts, by name, the commands Redis clients send on keys or channels holding `prefix`
    (MONITOR; commands run by scripts are left out): how many round trips a storm cost."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = urlsplit(url), prefix.encode()
        self.counts: Counter[str] = Counter()
        self.first_at: dict[str, float] = {}  # monotonic time each command name was first seen
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection(
            self.url.hostname or "127.0.0.1",
            self.url.port or 6379,
            limit=1 << 24,  # a batched join's line holds hundreds of arguments
        )
        if self.url.password:
            user = f"{self.url.username} " if self.url.username else ""
            self._writer.write(f"AUTH {user}{self.url.password}\r\n".encode())
            await reader.readline()
        self._writer.write(b"MONITOR\r\n")
        if not (await reader.readline()).startswith(b"+OK"):
            raise RuntimeError("MONITOR refused")
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            if self.prefix in line and b" lua]" not in line:
                name = line.split(b'] "', 1)[-1].split(b'"', 1)[0].decode(errors="replace")
                self.counts[name.upper()] += 1
                self.first_at.setdefault(name.upper(), time.monotonic())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()


def listen_overflows() -> int:
    """The kernel's count of connections dropped for a full accept queue (all sockets)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def spread_s(times: list[float]) -> str:
    times = sorted(times)
    if not times:
        return "none"
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return f"p50 {statistics.median(times):.2f} s, p99 {p99:.2f} s, max {times[-1]:.2f} s"


def commands(counts: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.most_common()) or "none"


STORM_DEADLINE_S = 10.0  # issue 17: every viewer receives the next partial within 10 s
SPEAKER_PERIOD_S = 0.25  # a speaker's partials after the storm, as an engine sends them


async def storm_viewers(server: Server, meeting: str, n: int, received: Received) -> StormJoin:
    """Open `n` viewers of `meeting` all at once: no gate, no retry (a refusal counts)."""
    began = time.monotonic()
    outcomes = await asyncio.gather(
        *(open_viewer(server, upgrade_request(server, meeting), received, 60) for _ in range(n)),
        return_exceptions=True,
    )
    clients = [o for o in outcomes if isinstance(o, ViewerClient)]
    refused = Counter(
        f"{type(o).__name__}: {o}"[:90] for o in outcomes if not isinstance(o, ViewerClient)
    )
    return StormJoin(clients, refused, [client.upgraded_at - began for client in clients], began)


@dataclass
class StormJoin:
    clients: list[ViewerClient]
    refused: Counter[str]
    upgraded_s: list[float]  # each viewer's 101, from the storm's start
    began: float  # monotonic


async def speak(publisher: Redis, name: str, meeting: str, published: list[int]) -> None:
    """Partials of one sentence every SPEAKER_PERIOD_S; notes each one's publish time."""
    for n in range(10**6):
        data = message(meeting, 5 * (n // 40))  # a partial (n % 5 != 4), one segment a 10 s
        published.append(int(json.loads(data)["ts"]))
        await publisher.publish(name, data)
        await asyncio.sleep(SPEAKER_PERIOD_S)


async def next_partial(
    publisher: Redis, name: str, meeting: str, clients: list[ViewerClient], received: Received
) -> tuple[int, float]:
    """From the moment every viewer is upgraded a speaker publishes partials; wait until every
    viewer has one of them or the deadline passed. The first one's publish time (ns), and how
    long we waited (s)."""
    published: list[int] = []
    received.watch_from_ns, received.record = time.time_ns(), True
    speaker = asyncio.create_task(speak(publisher, name, meeting, published))
    began = time.monotonic()
    try:
        while time.monotonic() - began < STORM_DEADLINE_S + 1:
            await asyncio.sleep(0.05)
            if all(client.got_ns for client in clients):
                break
    finally:
        speaker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await speaker
    return published[0], time.monotonic() - began


async def storm_part(args: argparse.Namespace, start: StartGateway) -> None:
    """N viewers of one meeting connect at once on one gateway process, then a speaker talks."""
    import redis.asyncio as aredis

    n, meeting = args.storm_viewers, "storm"
    print(f"connect storm: {n} viewers open one meeting at once, one gateway process (Redis)")
    publisher = aredis.Redis.from_url(args.redis_url)
    monitor = RedisMonitor(args.redis_url, args.key_prefix)
    with running(start(1)) as server:
        await settle(server)
        received = Received(record=False)
        await monitor.start()
        rss_before, overflows_before = rss_kib(server.process.pid), listen_overflows()
        join = await storm_viewers(server, meeting, n, received)
        overflows = listen_overflows() - overflows_before
        name = channel(args.key_prefix, meeting)
        try:
            first_ns, waited = await next_partial(publisher, name, meeting, join.clients, received)
            await settle(server, 0.5)
            joins, rss_after = Counter(monitor.counts), rss_kib(server.process.pid)
        finally:
            await publisher.aclose()
            close_all(join.clients)
        await settle(server, 0.5)
        await monitor.stop()
    accepted = len(join.clients)
    refused = f"; refused: {dict(join.refused)}" if join.refused else ""
    print(f"  accepted: {accepted} of {n}{refused}")
    print(
        f"  all upgraded {max(join.upgraded_s, default=0):.2f} s after the storm began "
        f"({spread_s(join.upgraded_s)})"
    )
    print(f"  listen-queue overflows meanwhile (kernel, all sockets): {overflows}")
    report_next_partial(join.clients, first_ns, waited, received.closed)
    print(f"  Redis commands on the bench's keys, storm and speaker: {commands(joins)}")
    # A viewer is upgraded before it joins the room: this says when joining began.
    firsts = [
        f"{name} at {monitor.first_at[name] - join.began:.2f} s"
        for name in ("EVALSHA", "SUBSCRIBE")
        if name in monitor.first_at
    ]
    print(f"  first seen by Redis, from the storm's start: {', '.join(firsts) or 'nothing'}")
    print(f"  Redis commands on them, all leaving: {commands(monitor.counts - joins)}")
    print(f"  server RSS growth: {(rss_after - rss_before) / max(accepted, 1):.1f} KiB/viewer")


def report_next_partial(
    clients: list[ViewerClient], first_ns: int, waited: float, closed: int
) -> None:
    """The first partial published after the storm: who had it, and who had a later one."""
    delays = [(client.got_ns - first_ns) / 1e9 for client in clients if client.got_ns]
    exact = sum(client.got_sent_ns == first_ns for client in clients)
    missed = len(clients) - sum(delay <= STORM_DEADLINE_S for delay in delays)
    print(
        f"  next partial (published once all were upgraded, then one every "
        f"{SPEAKER_PERIOD_S:g} s): {exact} viewers got that very one; the last viewer had it or "
        f"a later one {max(delays, default=0):.2f} s after it was published ({spread_s(delays)})"
    )
    print(
        f"  missed within {STORM_DEADLINE_S:g} s: {missed} (waited {waited:.1f} s); "
        f"closed by the server: {closed}"
    )


# Driver ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


async def scenarios_part(args: argparse.Namespace, start: Callable[[str], Server]) -> None:
    rounds = 1 if args.quick else args.rounds
    print(f"fan-out: {args.rate:g} msg/s per meeting, {args.duration:g} s per run")
    print(f"{rounds} round(s) per scenario, baseline and gateway alternating; ratio per round")
    header = (
        f"{'scenario':<10} {'round':>5} {'server':<8} {'us CPU/deliv':>12} {'kernel':>6} "
        f"{'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'lost':>5} {'delivered':>9} {'closed':>6}"
    )
    print(header)
    print("-" * len(header))
    for meetings_n, viewers in args.scenarios:
        meetings = [f"m{i}" for i in range(meetings_n)]
        scenario = f"{meetings_n}x{viewers}"
        cpu_ratios: list[float] = []
        p99_ratios: list[float] = []
        for round_no in range(1, rounds + 1):
            # Alternate which server goes first: a machine getting busier or quieter over the
            # run then biases neither.
            order = ("raw", "gateway") if round_no % 2 else ("gateway", "raw")
            results: dict[str, Result] = {}
            for name in order:
                profile = args.profile and args.profile / f"{name}-{scenario}-{round_no}.txt"
                with running(start(name)) as server:
                    results[name] = await load_run(
                        server,
                        args.redis_url,
                        args.key_prefix,
                        meetings,
                        viewers,
                        args.rate,
                        args.duration,
                        profile,
                    )
            raw = results["raw"]
            for name in ("raw", "gateway"):  # closed: viewers the server closed mid-run
                result = results[name]
                ratio = result.cpu_us / raw.cpu_us if raw.cpu_us else 0
                print(
                    f"{scenario:<10} {round_no:>5} {name:<8} {result.cpu_us:>12.1f} "
                    f"{result.kernel_us:>6.1f} {ratio:>6.2f} {result.p50_ms:>7.1f} "
                    f"{result.p99_ms:>7.1f} "
                    f"{result.lost:>5} {result.delivered:>9} {result.closed:>6}",
                    flush=True,
                )
            gateway = results["gateway"]
            cpu_ratios.append(gateway.cpu_us / raw.cpu_us if raw.cpu_us else float("nan"))
            p99_ratios.append(gateway.p99_ms / raw.p99_ms if raw.p99_ms else float("nan"))
        if rounds > 1:
            print(
                f"{scenario:<10} median CPU ratio {statistics.median(cpu_ratios):.2f} "
                f"({', '.join(f'{r:.2f}' for r in cpu_ratios)}), "
                f"median p99 ratio {statistics.median(p99_ratios):.2f} "
                f"({', '.join(f'{r:.2f}' for r in p99_ratios)})",
                flush=True,
            )


async def idle_part(args: argparse.Namespace, start: Callable[[str], Server]) -> None:
    idle_viewers = args.idle_viewers
    print(
        f"idle memory, {idle_viewers} viewers (RSS growth / viewers, after one viewer warmed the "
        "server up; 'cold' counts the server's first-connection costs too)"
    )
    idle: dict[tuple[str, bool], float] = {}
    for name in ("raw", "gateway"):
        for deflate in (False, True):
            with running(start(name)) as server:
                kib, negotiated = await idle_kib(server, idle_viewers, deflate=deflate)
            idle[name, deflate] = kib
            offered = "offered" if deflate else "not offered"
            got = "negotiated" if negotiated else "not negotiated"
            print(f"  {name:<8} compression {offered:<11} ({got:<14}): {kib:6.1f} KiB/viewer")
        with running(start(name)) as server:
            cold, _ = await idle_kib(server, idle_viewers, deflate=False, warm_up=False)
        print(f"  {name:<8} compression not offered, cold server       : {cold:6.1f} KiB/viewer")
    for deflate in (False, True):
        if idle["raw", deflate] > 0:
            ratio = idle["gateway", deflate] / idle["raw", deflate]
            offered = "offered" if deflate else "not offered"
            print(f"  ratio gateway/raw, compression {offered}: {ratio:.2f}")


def apply_defaults(args: argparse.Namespace) -> None:
    """Fill what --quick (a short run on a shared machine) or a full run leaves to us."""
    quick = args.quick
    if args.scenarios is None:
        args.scenarios = (
            [(1, 200), (1, 500), (10, 20), (100, 4)]
            if quick
            else [(1, 500), (1, 2000), (50, 20), (500, 4)]
        )
    defaults = {
        "duration": 4.0 if quick else 10.0,
        "idle_viewers": 500 if quick else 5000,  # the 5,000 concurrent idle viewers
        "storm_viewers": 1000 if quick else 5000,  # issue 17's storm
        "workers_scenario": (100, 20) if quick else (200, 10),
        "workers_loads": [15e3, 30e3, 45e3, 60e3, 75e3]
        if quick
        else [10e3 * k for k in range(1, 11)],
        "workers_duration": 3.0 if quick else 6.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


async def main(args: argparse.Namespace) -> None:
    chosen = args.scenarios is not None  # before the defaults fill them in
    apply_defaults(args)
    args.key_prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    work = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    keys = Keys(work)
    log = work / "servers.log"
    # A storm holds a socket per viewer here and one in the server, which inherits the limit.
    nofile = raise_nofile(args.storm_viewers + 2048)

    def start(name: str) -> Server:
        if name == "raw":
            return start_raw(args.redis_url, args.key_prefix, log)
        return start_gateway(args.redis_url, args.key_prefix, keys, work, log)

    def start_workers(workers: int) -> Server:
        return start_gateway(args.redis_url, args.key_prefix, keys, work, log, workers)

    only = chosen or args.idle_only or args.workers_only or args.storm_only
    print(f"fan-out bench: {os.cpu_count()} CPUs, open-file limit {nofile}")
    print(f"servers' output: {log}")
    print()
    try:
        if chosen or not only:
            await scenarios_part(args, start)
            print()
        if args.idle_only or not only:
            await idle_part(args, start)
            print()
        if args.workers_only or not only:
            await workers_part(args, start_workers)
            print()
        if args.storm_only or not only:
            await storm_part(args, start_workers)
    finally:
        await delete_keys(args.redis_url, args.key_prefix)


async def delete_keys(redis_url: str, prefix: str) -> None:
    """What the servers left in Redis under the bench's prefix (the numbering epoch lives for
    days)."""
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for at in range(0, len(keys), 500):
            await client.unlink(*keys[at : at + 500])
    finally:
        await client.aclose()


def scenario(text: str) -> tuple[int, int]:
    meetings, _, viewers = text.partition("x")
    return int(meetings), int(viewers)


def loads(text: str) -> list[float]:
    return [float(load) for load in text.split(",")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    raw = sub.add_parser("raw-server", help="(internal) run the baseline server")
    raw.add_argument("--port", type=int, required=True)
    raw.add_argument("--redis-url", required=True)
    raw.add_argument("--prefix", default="")
    parser.add_argument("--quick", action="store_true", help="smaller scenarios, shorter runs")
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s per meeting")
    parser.add_argument("--duration", type=float, help="seconds of publishing per run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating runs per scenario (median ratio)"
    )
    parser.add_argument("--idle-viewers", type=int, help="viewers for the idle-memory runs")
    parser.add_argument("--idle-only", action="store_true", help="only the idle-memory runs")
    parser.add_argument(
        "--scenarios",
        type=lambda text: [scenario(part) for part in text.split(",")],
        help="meetings x viewers to measure, e.g. 50x20,1x2000 (then only those: no idle, "
        "workers or storm part)",
    )
    parser.add_argument(
        "--profile", type=Path, help="write py-spy collapsed stacks of each scenario run here"
    )
    parser.add_argument("--workers-only", action="store_true", help="only 1 against 2 workers")
    parser.add_argument(
        "--workers-scenario", type=scenario, help="MEETINGSxVIEWERS for the workers runs"
    )
    parser.add_argument(
        "--workers-loads", type=loads, help="offered deliveries/s, comma-separated, ascending"
    )
    parser.add_argument("--workers-duration", type=float, help="seconds per workers load")
    parser.add_argument(
        "--p99-ms", type=float, default=100.0, help="the p99 bound workers' capacity is read at"
    )
    parser.add_argument("--storm-only", action="store_true", help="only the connect storm")
    parser.add_argument("--storm-viewers", type=int, help="viewers opening one meeting at once")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.profile is not None:
        arguments.profile.mkdir(parents=True, exist_ok=True)
    if arguments.command == "raw-server":
        asyncio.run(raw_server(arguments.port, arguments.redis_url, arguments.prefix))
    else:
        asyncio.run(main(arguments))
