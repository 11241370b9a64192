#!/usr/bin/env python3
"""Ingest benchmark: the gateway relaying live audio to a Deepgram-protocol server, against a bare
`websockets` relay doing the same job, in one run.

N clients (in this process) each stream 48 kHz mono s16le in 20 ms frames, paced in real time,
to the server under test, which forwards the audio to a vendor sink speaking Deepgram Live's
`/v1/listen` protocol (a separate process that reads the audio, answers `CloseStream` with
`Metadata` and checks nothing is lost or reordered: a CRC of each connection's byte stream).
Servers run one at a time with the same clients. For each it prints the server process's CPU per
second of audio per stream (from /proc/PID/stat, over the steady streaming window), the ratio
gateway/relay, the clients' send lag p99 (how late a paced send went out), and whether every
stream arrived at the vendor byte for byte.

    .venv/bin/python bench/ingest.py --quick          # 20 streams for 15 s
    .venv/bin/python bench/ingest.py                  # 50 and 200 streams, 30 s, 3 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path


def _fanout_bench():  # type: ignore[no-untyped-def]
    """bench/fanout.py's helpers (loaded by path: its name is also the `fanout` package's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_fanout", Path(__file__).with_name("fanout.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fanout"] = module
    spec.loader.exec_module(module)
    return module


_helpers = _fanout_bench()
Keys, Server = _helpers.Keys, _helpers.Server
cpu_seconds, free_port, wait_port = _helpers.cpu_seconds, _helpers.free_port, _helpers.wait_port

REPO = Path(__file__).resolve().parents[1]
RATE = 48_000
FRAME_MS = 20
FRAME_BYTES = RATE * FRAME_MS // 1000 * 2
API_KEY = "bench-deepgram-key"


# The vendor sink: Deepgram Live's protocol, minus recognition --------------------------------


async def vendor_sink(port: int, report: Path) -> None:
    """Accept `/v1/listen` streams, read their audio, end them as Deepgram does; on SIGINT write
    one line per finished connection: {"bytes": n, "crc": c}."""
    import signal

    from websockets.asyncio.server import ServerConnection, serve

    finished: list[dict[str, int]] = []

    async def handler(ws: ServerConnection) -> None:
        received, crc = 0, 0
        async for message in ws:
            if isinstance(message, bytes):
                if not message:
                    break
                received += len(message)
                crc = zlib.crc32(message, crc)
            elif json.loads(message).get("type") == "CloseStream":
                break
        metadata = {"type": "Metadata", "request_id": str(uuid.uuid4()), "duration": 0.0}
        await ws.send(json.dumps(metadata))
        await ws.close(1000)
        finished.append({"bytes": received, "crc": crc})

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, max_size=None, compression=None):
        await stop
    report.write_text("\n".join(json.dumps(f) for f in finished))  # noqa: ASYNC240 (exiting)


def start_vendor(work: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    report = work / f"vendor-{port}.jsonl"
    process = subprocess.Popen(
        [sys.executable, __file__, "vendor", "--port", str(port), "--report", str(report)],
        stdout=(work / "vendor.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, process)
    return process, port, report


def vendor_streams(process: subprocess.Popen[bytes], report: Path) -> list[tuple[int, int]]:
    import signal

    process.send_signal(signal.SIGINT)
    process.wait(30)
    lines = report.read_text().splitlines() if report.exists() else []
    return sorted((d["bytes"], d["crc"]) for d in map(json.loads, lines))


# The baseline: a bare relay ---------------------------------------------------------------------


async def relay_server(port: int, vendor: str) -> None:
    """Read each client's handshake, open the vendor stream, forward every frame; on the client's
    close, end the vendor stream and wait for its close. Nothing else."""
    import signal

    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve

    async def handler(ws: ServerConnection) -> None:
        hs = json.loads(await ws.recv())
        url = f"{vendor}/v1/listen?encoding=linear16&sample_rate={hs['sample_rate']}&channels=1"
        headers = {"Authorization": f"Token {API_KEY}"}
        async with connect(url, additional_headers=headers, compression=None) as up:
            await ws.send(json.dumps({"type": "ready"}))
            async for message in ws:
                if isinstance(message, bytes):
                    await up.send(message)
                elif json.loads(message).get("type") == "close":
                    break
            await up.send(json.dumps({"type": "CloseStream"}))
            async for _ in up:
                pass
        await ws.close(1000)

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, compression=None):
        await stop


def start_relay(vendor_port: int, work: Path) -> Server:
    port = free_port()
    vendor = f"ws://127.0.0.1:{vendor_port}"
    process = subprocess.Popen(
        [sys.executable, __file__, "relay", "--port", str(port), "--vendor", vendor],
        stdout=(work / "relay.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, process)
    return Server("relay", process, port, "/ingest/{meeting}")


def start_gateway(vendor_port: int, keys: Keys, work: Path) -> Server:
    process, port = _helpers.launch_gateway(
        keys,
        work,
        work / "gateway.log",
        ASR_ENGINE="deepgram",
        DEEPGRAM_URL=f"ws://127.0.0.1:{vendor_port}",
        DEEPGRAM_API_KEY=API_KEY,
        # The clients share one process: on a loaded machine they fall behind and catch up in
        # bursts that the per-stream rate limit would refuse. The relay has none either.
        INGEST_FRAMES_PER_S="1000",
    )
    query = f"?token={keys.token(['ingest'])}"
    return Server("gateway", process, port, "/api/v1/ws/ingest/meetings/{meeting}", query)


# Clients ----------------------------------------------------------------------------------------


@dataclass
class Stream:
    sent: int = 0
    crc: int = 0
    lags: list[float] = field(default_factory=list)
    error: str | None = None


def frames(index: int, count: int) -> list[bytes]:
    """Distinct audio per stream (a CRC that tells streams apart), cheap to make."""
    seed = index.to_bytes(4, "little")
    return [(seed + n.to_bytes(4, "little")) * (FRAME_BYTES // 8) for n in range(count)]


async def stream(server: Server, index: int, seconds: float, start_at: float) -> Stream:
    from websockets.asyncio.client import connect

    result = Stream()
    audio = frames(index, int(seconds * 1000 / FRAME_MS))
    url = f"ws://127.0.0.1:{server.port}{server.url_path(f'bench-{index}')}"
    hs = {"type": "handshake", "source": "mic", "sample_rate": RATE, "language": "en"}
    try:
        async with connect(url, compression=None, open_timeout=60) as ws:
            await ws.send(json.dumps(hs))
            ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
            assert ready["type"] == "ready", ready
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, start_at - loop.time()))
            began = loop.time()
            for n, frame in enumerate(audio):
                due = began + n * FRAME_MS / 1000
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                result.lags.append(max(0.0, loop.time() - due))
                await ws.send(frame)
                result.sent += len(frame)
                result.crc = zlib.crc32(frame, result.crc)
            await ws.send(json.dumps({"type": "close"}))
            async for _ in ws:  # "closed", then the close frame
                pass
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


@dataclass
class Result:
    server: str
    streams: int
    cpu_ms_per_audio_s: float
    lag_p99_ms: float
    intact: bool
    errors: int


async def run(
    server: Server, vendor_report: tuple, streams: int, seconds: float, profile: Path | None
) -> Result:
    process, _, report = vendor_report
    loop = asyncio.get_running_loop()
    # Everyone connects first; the streaming window starts together once all are ready.
    start_at = loop.time() + 5 + streams * 0.05
    tasks = [asyncio.create_task(stream(server, i, seconds, start_at)) for i in range(streams)]
    await asyncio.sleep(max(0.0, start_at - loop.time()) + 1.0)  # one second in: steady
    cpu_before, at_before = cpu_seconds(server.process.pid), loop.time()
    if profile is not None:  # py-spy's collapsed stacks of the steady window (--profile)
        out = profile / f"{server.name}-{streams}.txt"
        spy = ["py-spy", "record", "--format", "raw", "--nonblocking", "-r", "200"]
        duration = ["--duration", str(int(seconds - 3)), "--pid", str(server.process.pid)]
        quiet = subprocess.DEVNULL
        await asyncio.create_subprocess_exec(*spy, "-o", str(out), *duration, stdout=quiet)
    await asyncio.sleep(seconds - 2.0)  # stop a second before the end: no close work counted
    cpu_after, at_after = cpu_seconds(server.process.pid), loop.time()
    done = await asyncio.gather(*tasks)
    audio_s = streams * (at_after - at_before)
    lags = sorted(lag for s in done for lag in s.lags)
    p99 = lags[int(len(lags) * 0.99)] if lags else float("nan")
    errors = [s for s in done if s.error]
    for s in errors[:3]:
        print(f"  {server.name}: {s.error}", file=sys.stderr)
    arrived = vendor_streams(process, report)
    intact = not errors and arrived == sorted((s.sent, s.crc) for s in done)
    return Result(
        server.name, streams, (cpu_after - cpu_before) * 1000 / audio_s, p99 * 1000, intact,
        len(errors),
    )  # fmt: skip


async def measure_once(
    name: str, count: int, work: Path, keys: Keys, seconds: float, profile: Path | None
) -> Result:
    vendor = start_vendor(work)
    server = (start_relay if name == "relay" else start_gateway)(vendor[1], *(
        (work,) if name == "relay" else (keys, work)
    ))  # fmt: skip
    try:
        return await run(server, vendor, count, seconds, profile)
    finally:
        server.stop()


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    keys = Keys(work)
    counts = [20] if args.quick else args.streams
    seconds = 15.0 if args.quick else args.seconds
    rounds = 1 if args.quick else args.rounds
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; 48 kHz mono, 20 ms frames")
    print(f"{rounds} round(s) per count, relay and gateway alternating; ratio per round")
    print("streams | round | server  | CPU ms per audio s | ratio | send lag p99 | intact")
    for count in counts:
        ratios: list[float] = []
        for round_no in range(1, rounds + 1):
            # Alternate which server goes first: a machine getting busier or quieter over the
            # run then biases neither.
            order = ("relay", "gateway") if round_no % 2 else ("gateway", "relay")
            results = {
                name: await measure_once(name, count, work, keys, seconds, args.profile)
                for name in order
            }
            base = results["relay"].cpu_ms_per_audio_s
            for name in ("relay", "gateway"):
                r = results[name]
                ratio = r.cpu_ms_per_audio_s / base if base else float("nan")
                print(
                    f"{count:7d} | {round_no:5d} | {name:7s} | {r.cpu_ms_per_audio_s:18.2f} | "
                    f"{ratio:5.2f} | {r.lag_p99_ms:9.1f} ms | "
                    f"{'yes' if r.intact else f'NO ({r.errors} errors)'}",
                    flush=True,
                )
            ratios.append(results["gateway"].cpu_ms_per_audio_s / base if base else float("nan"))
        if rounds > 1:
            spread = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"{count:7d} streams: median ratio {statistics.median(ratios):.2f} ({spread})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    vendor = sub.add_parser("vendor")
    vendor.add_argument("--port", type=int, required=True)
    vendor.add_argument("--report", type=Path, required=True)
    relay = sub.add_parser("relay")
    relay.add_argument("--port", type=int, required=True)
    relay.add_argument("--vendor", required=True)
    parser.add_argument("--quick", action="store_true", help="20 streams for 15 s")
    parser.add_argument("--streams", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating runs per count (median ratio)"
    )
    parser.add_argument("--profile", type=Path, help="write py-spy collapsed stacks here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.profile is not None:
        arguments.profile.mkdir(parents=True, exist_ok=True)
    if arguments.role == "vendor":
        asyncio.run(vendor_sink(arguments.port, arguments.report))
    elif arguments.role == "relay":
        asyncio.run(relay_server(arguments.port, arguments.vendor))
    else:
        asyncio.run(main(arguments))
